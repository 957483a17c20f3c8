"""`atlas check` on a real atlas: clean, then with a missing image, a damaged code file and a broken SAE; `--repair`
removes exactly the orphans an interrupted write leaves."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from click.testing import CliRunner

from atlas.cli.main import main
from atlas.store import open_atlas, snapshot
from atlas.store.catalog import WRITERS_LOCK, Catalog


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


def _contents(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def test_repair_removes_exactly_the_orphans_and_nothing_referenced(shapes_atlas, tmp_path):
    runner = CliRunner()
    copy = tmp_path / "atlas"
    shutil.copytree(shapes_atlas, copy)
    before = _contents(copy)
    with open_atlas(copy) as atlas:
        answer = atlas.sql("SELECT sae_id, count(*), sum(value) FROM codes GROUP BY ALL ORDER BY ALL").rows
    code_file = sorted((copy / "codes" / "by_latent").rglob("*.parquet"))[0]
    index_file = sorted((copy / "index").glob("sae-*.faiss"))[0]
    newer = f"g{snapshot.meta(snapshot.current(copy))['generation'] + 1:06d}"
    token = "01700000000000000000-1"
    files = {  # what an interrupted write leaves: temporary files, and finished files it never listed
        "activations/images/000001.png.tmp": b"half a png",
        "annotations/shapes/batch-000000.parquet.tmp": b"half a parquet",
        "saes/mid/t0.5/cond/sae.safetensors.tmp": b"half a checkpoint",
        f"codes/by_latent/sae_id=0/bucket=0/{token}.parquet": code_file.read_bytes(),
        f"codes/by_image/bucket=0/{token}.parquet.tmp": b"half a parquet",
        f"codes/parts/sae_id=99/part-{token}.parquet": code_file.read_bytes(),
        # older than sae 0's codes files: merged by a finalize that was killed before deleting it
        f"codes/parts/sae_id=0/part-{token}.parquet": code_file.read_bytes(),
        "codes/.tmp/duckdb_temp_storage-0.tmp": b"spilled",
        f"index/sae-0-{token}.faiss": index_file.read_bytes(),
        "masks/3/99999.png": b"a mask of no object",
        f"tables/.{newer}.tmp/meta.json": b"{}",
        f"tables/{newer}/meta.json": b"{}",
    }
    pending = f"codes/parts/sae_id=0/part-{time.time_ns():020d}-1.parquet"  # staged after the last finalize: the
    # next finalize's input
    for rel, data in {**files, pending: code_file.read_bytes()}.items():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes(data)
    orphans = {rel if not rel.startswith(("codes/.tmp/", "tables/")) else "/".join(rel.split("/")[:2]) for rel in files}

    result = runner.invoke(main, ["check", "--atlas", str(copy)])
    assert result.exit_code == 0, result.output
    assert f"{len(orphans)} files the catalog does not list" in result.output and "--repair" in result.output

    with Catalog(copy).hold():  # another process writing: refused, nothing removed
        result = runner.invoke(main, ["check", "--atlas", str(copy), "--repair"])
    assert result.exit_code == 1 and "another process is writing" in result.output
    assert len(result.output.strip().splitlines()) == 1 and all((copy / rel).exists() for rel in files)

    result = runner.invoke(main, ["check", "--atlas", str(copy), "--repair"])
    assert result.exit_code == 0, result.output
    removed = {line.removeprefix("removed ") for line in result.output.splitlines() if line.startswith("removed ")}
    assert removed == orphans
    assert "no problems" in result.output and "does not list" not in result.output
    after = _contents(copy)
    assert {rel: after[rel] for rel in before} == before
    assert set(after) == set(before) | {pending, WRITERS_LOCK}  # the lock file: made by the first write
    with open_atlas(copy) as atlas:
        assert atlas.sql("SELECT sae_id, count(*), sum(value) FROM codes GROUP BY ALL ORDER BY ALL").rows == answer
        assert atlas.top_images(atlas.concepts(t=1.0, block="mid")[0].concept_id, n=3)

    result = runner.invoke(main, ["check", "--atlas", str(copy), "--repair"])
    assert result.exit_code == 0 and "removed" not in result.output and _contents(copy) == after
