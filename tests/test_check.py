"""`atlas check` on a real atlas: clean, then with a missing image, a damaged code file and a broken SAE."""

from __future__ import annotations

import shutil

from click.testing import CliRunner

from cli.main import main


def test_check_finds_nothing_on_a_built_atlas_and_each_planted_fault(shapes_atlas, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["check", "--atlas", str(shapes_atlas)])
    assert result.exit_code == 0, result.output
    assert "48 images" in result.output and "9 SAEs" in result.output and "no problems" in result.output

    copy = tmp_path / "atlas"
    shutil.copytree(shapes_atlas, copy)
    (copy / "activations" / "images" / "000003.png").unlink()
    damaged = sorted((copy / "codes" / "by_image").rglob("*.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    (copy / "saes" / "mid" / "t0.5" / "cond" / "sae.safetensors").write_bytes(b"not a checkpoint")
    result = runner.invoke(main, ["check", "--atlas", str(copy)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(line.startswith("image 3: missing file") for line in lines)
    assert any(line.startswith("unreadable codes_by_image file") and damaged.name in line for line in lines)
    assert any(line.startswith("SAE mid/0.5/cond: checkpoint") for line in lines)
    assert "Traceback" not in result.output
