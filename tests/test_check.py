"""`atlas check` on a real atlas: clean, then with a missing image, a damaged code file and a broken SAE; `--repair`
removes exactly the orphans an interrupted write leaves; each corruption of issue 20 (catalog, codes, FAISS,
CURRENT, the capture's manifest) is one problem, and `check --repair` restores the atlas readers had."""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas.cli.main import main
from atlas.store import open_atlas, open_writer, snapshot
from atlas.store.catalog import WRITERS_LOCK, Catalog
from atlas.store.check import check_atlas
from atlas.store.errors import CorruptFileError


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
    assert any(line.startswith("codes_by_image file") and damaged.name in line and "bytes" in line for line in lines)
    assert any(line.startswith("SAE mid/0.5/cond: checkpoint") for line in lines)
    assert "checked" in lines[-1] and "3 problems" in lines[-1]  # one per cause: no SAE count for the damaged file
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


# -- damage found once per cause, and repaired by the command the message names ----------------------------------

def _answers(root: Path) -> tuple:
    """What readers get: the codes of every SAE, the labels, a neighbour search, a concept's top images."""
    with open_atlas(root) as atlas:
        concept = atlas.concepts(t=1.0, block="mid")[0].concept_id
        return (atlas.sql("SELECT sae_id, count(*), sum(value) FROM codes GROUP BY ALL ORDER BY ALL").rows,
                atlas.sql("SELECT image_id, count(*) FROM codes_by_image GROUP BY ALL ORDER BY ALL").rows,
                atlas.sql("SELECT count(*) FROM concept_labels").rows,
                [(n.concept_id, round(n.score, 5)) for n in atlas.nearest(concept, k=3)],
                [h.image_id for h in atlas.top_images(concept, n=3)])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _overwrite_head(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(b"\x00" * 4096 + data[4096:])


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.glob(pattern))[0]


SCENARIOS = {
    "catalog head overwritten": (lambda root: _overwrite_head(root / "catalog.duckdb"),
                                 "catalog catalog.duckdb is damaged"),
    "byte flip in a by_latent codes file": (lambda root: _flip_byte(_first(root, "codes/by_latent/*/*/*.parquet")),
                                            "codes_by_latent file .* is damaged \\(its checksum differs"),
    "truncated by_latent codes file": (
        lambda root: (lambda p: p.write_bytes(p.read_bytes()[:200]))(_first(root, "codes/by_latent/*/*/*.parquet")),
        "codes_by_latent file .* is 200 bytes, the catalog says"),
    "byte flip in a by_image codes file": (lambda root: _flip_byte(_first(root, "codes/by_image/*/*.parquet")),
                                           "codes_by_image file .* is damaged"),
    "missing FAISS index": (lambda root: _first(root, "index/sae-*.faiss").unlink(), "missing faiss_sae file"),
    "missing block FAISS index": (lambda root: _first(root, "index/block-*.faiss").unlink(),
                                  "missing faiss_block file"),
    "deleted tables/CURRENT": (lambda root: (root / "tables" / "CURRENT").unlink(), "tables/CURRENT is missing"),
    "byte flip in a mask": (lambda root: _flip_byte(_first(root, "masks/*/*.png")),
                            r"mask \d+: file masks/.* is damaged \(its checksum differs.*annotates its image again"),
    "missing mask": (lambda root: _first(root, "masks/*/*.png").unlink(), r"mask \d+: missing file masks/"),
    "byte flip in an image": (lambda root: _flip_byte(root / "activations/images/000005.png"),
                              "image 5: file .*000005.png is damaged .*generates it again from its seed"),
}
SLOW_SCENARIOS = {"byte flip in an image"}
"""Their repair runs the model over a capture batch (32 images of 20 steps)."""


@pytest.mark.parametrize("scenario", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW_SCENARIOS else s
                                      for s in SCENARIOS])
def test_each_damage_is_one_problem_and_check_repair_restores_the_atlas(two_branch_atlas, tmp_path, scenario):
    damage, expected = SCENARIOS[scenario]
    root = tmp_path / "atlas"
    shutil.copytree(two_branch_atlas, root, ignore=shutil.ignore_patterns("report"))
    before, originals = _answers(root), _contents(root)
    damage(root)
    runner = CliRunner()
    result = runner.invoke(main, ["check", "--atlas", str(root)])
    problems = [line for line in result.output.splitlines()[:-1] if not line.startswith(("checked", "..."))]
    assert result.exit_code == 1 and len(problems) == 1, result.output
    assert re.search(expected, problems[0]) and "`atlas check --repair`" in problems[0], problems
    assert result.output.splitlines()[-1].endswith(": 1 problem") and "Traceback" not in result.output
    if scenario != "deleted tables/CURRENT":
        quick = runner.invoke(main, ["check", "--atlas", str(root), "--quick"])
        assert quick.exit_code == (0 if "flip" in scenario else 1), quick.output  # a flip keeps the size

    result = runner.invoke(main, ["check", "--atlas", str(root), "--repair"])
    assert result.exit_code == 0, result.output
    assert "no problems" in result.output.splitlines()[-1]
    assert _answers(root) == before
    if scenario in ("byte flip in a mask", "missing mask", "byte flip in an image"):
        after = _contents(root)  # the same bytes again, checked against the catalog's checksum
        assert {rel: after.get(rel) for rel in originals} == originals
    with open_writer(root) as writer:  # writers work again (a damaged catalog made every one fail)
        writer.catalog.rename_concept(writer.atlas.concepts(t=1.0, block="mid")[0].concept_id, "repaired")
    assert runner.invoke(main, ["check", "--atlas", str(root)]).exit_code == 0


def test_a_damaged_sae_checkpoint_is_one_problem_that_repair_names_and_leaves(two_branch_atlas, tmp_path):
    """A byte flip inside the weights still loads (the shape is right): only the checksum finds it. Nothing derives
    a checkpoint, so --repair says so in one line and changes nothing."""
    root = tmp_path / "atlas"
    shutil.copytree(two_branch_atlas, root, ignore=shutil.ignore_patterns("report"))
    weights = _first(root, "saes/mid/*/uncond/sae.safetensors")
    _flip_byte(weights)
    before = _contents(root)
    runner = CliRunner()
    result = runner.invoke(main, ["check", "--atlas", str(root)])
    problems = [line for line in result.output.splitlines() if not line.startswith("checked")]
    assert result.exit_code == 1 and len(problems) == 1, result.output
    assert problems[0].startswith("SAE mid/1.0/uncond: checkpoint file saes/mid/t1.0/uncond/sae.safetensors is "
                                  "damaged (its checksum differs") and "`atlas train`" in problems[0]
    assert runner.invoke(main, ["check", "--atlas", str(root), "--quick"]).exit_code == 0  # same size
    result = runner.invoke(main, ["check", "--atlas", str(root), "--repair"])
    said = [line for line in result.output.splitlines() if line.startswith("cannot")]
    assert result.exit_code == 1 and said == ["cannot rebuild the checkpoint of SAE mid/1.0/uncond: nothing derives "
                                              "it: restore it from a copy, or train the SAE again (`atlas train`) "
                                              "and encode with it (`atlas encode`)"], result.output
    after = _contents(root)
    assert {rel: after.get(rel) for rel in before} == before and "Traceback" not in result.output


def test_a_damaged_catalog_stops_writers_with_one_line_naming_the_repair(two_branch_atlas, tmp_path):
    root = tmp_path / "atlas"
    shutil.copytree(two_branch_atlas, root, ignore=shutil.ignore_patterns("report", "activations", "saes"))
    _overwrite_head(root / "catalog.duckdb")
    with pytest.raises(CorruptFileError, match="catalog.duckdb is missing or corrupt .*`atlas check --repair`"):
        open_writer(root)
    with open_atlas(root) as atlas:  # readers read the snapshot, not the catalog
        assert atlas.saes()


@pytest.mark.parametrize("edit", ["edited", "not JSON"])
def test_a_changed_activations_manifest_is_found(two_branch_atlas, tmp_path, edit):
    root = tmp_path / "atlas"
    shutil.copytree(two_branch_atlas, root, ignore=shutil.ignore_patterns("report", "saes", "codes", "index"),
                    ignore_dangling_symlinks=True)
    manifest = root / "activations" / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"steps": ', '"steps": 1') if edit == "edited" else "{not json")
    assert manifest.read_text() != text
    report = check_atlas(root)
    found = [p for p in report.problems if "activations file" in p]
    assert len(found) == 1 and "manifest.json" in found[0], report.problems


def test_failed_commands_leave_no_atlas_and_build_refuses_a_foreign_directory(tmp_path, two_branch_atlas):
    runner = CliRunner()
    result = runner.invoke(main, ["encode", "--activations", str(tmp_path), "--saes", str(tmp_path),
                                  "--atlas", str(tmp_path / "new")])
    assert result.exit_code != 0 and "is not an activation directory" in result.output
    result = runner.invoke(main, ["encode", "--activations", str(two_branch_atlas / "activations"), "--saes",
                                  str(tmp_path), "--atlas", str(tmp_path / "new")])
    assert result.exit_code != 0 and "no trained SAEs" in result.output
    assert not (tmp_path / "new").exists()

    checkout = tmp_path / "checkout"
    (checkout / "src").mkdir(parents=True)
    (checkout / "README.md").write_text("a project")
    result = runner.invoke(main, ["build", "--atlas", str(checkout), "--n-images", "2"])
    assert result.exit_code != 0 and "entries no atlas has" in result.output and "--any-directory" in result.output
    assert sorted(p.name for p in checkout.iterdir()) == ["README.md", "src"]
    from atlas.pipeline.build import check_build
    from atlas.pipeline.config import BuildConfig

    check_build(BuildConfig(atlas=str(checkout), n_images=2, any_directory=True))  # told: accepted
    check_build(BuildConfig(atlas=str(two_branch_atlas), n_images=2))  # an atlas: resumed
