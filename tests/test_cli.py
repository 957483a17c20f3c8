"""The `atlas` command: help, generate, errors (one line, non-zero exit, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from atlas.cli.main import main


@pytest.fixture()
def runner(tiny_shapes_dir, monkeypatch):
    monkeypatch.setenv("ATLAS_SHAPES_MODEL", str(tiny_shapes_dir))
    return CliRunner()


def test_help_lists_the_command_groups():
    result = subprocess.run([sys.executable, "-m", "atlas.cli.main", "--help"], capture_output=True, text=True,
                            check=True)
    for command in ("generate", "demo", "shapes"):
        assert command in result.stdout
    shapes = CliRunner().invoke(main, ["shapes", "train", "--help"])
    assert "Wall-clock budget" in shapes.output and "--caption-dropout" in shapes.output


def test_generate_writes_pngs_jsonl_and_grid(runner, tmp_path):
    out = tmp_path / "out"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\na green square\n\n")
    result = runner.invoke(main, ["generate", "a red circle", "--prompts", str(prompts), "--n-per-prompt", "2",
                                  "--steps", "2", "--seed", "7", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert [r["prompt"] for r in records] == ["a red circle"] * 2 + ["a green square"] * 2
    assert [r["seed"] for r in records] == [7, 8, 7, 8]
    assert Image.open(out / "0003.png").size == (32, 32)
    assert Image.open(out / "grid.png").size[0] >= 2 * 128


def test_bad_input_gives_one_line_errors(runner, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    cases = [
        (["generate", "--prompts", str(empty), "--out", str(tmp_path / "a")], "holds no prompts"),
        (["generate", "x", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "b")], "no model"),
        (["generate", "x", "--n-per-prompt", "0", "--out", str(tmp_path / "c")],
         "'--n-per-prompt': 0 is not in the range x>=1"),
        (["generate", "x", "--device", "cuda:7", "--out", str(tmp_path / "d")], "no CUDA GPU"),
        (["generate", "--out", str(tmp_path / "e")], "give prompts"),
    ]
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not any((tmp_path / d).exists() for d in "abcde")


def test_shapes_export_without_a_run_explains_what_to_do(runner, tmp_path):
    result = runner.invoke(main, ["shapes", "export", "--run-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "atlas shapes train --run-dir" in result.output


@pytest.mark.slow
def test_shapes_eval_scores_other_held_out_captions_with_another_seed(runner, tmp_path):
    grids = {}
    for seed in ("0", "1"):
        out = tmp_path / seed
        result = runner.invoke(main, ["shapes", "eval", "--n", "3", "--steps", "2", "--seed", seed, "--out", str(out),
                                      "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert "no_extra_objects" in result.output and json.loads((out / "eval.json").read_text())["n_images"] == 3
        grids[seed] = Image.open(out / "eval_grid.png").tobytes()
    assert grids["0"] != grids["1"]  # other captions, other noise
