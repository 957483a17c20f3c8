"""The pipeline stages on the real shapes model: build, resume, and the CLI commands over them."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from atlas.capture import ActivationSet
from atlas.capture.config import CaptureConfig
from atlas.cli.main import main
from atlas.dictionary.names import atlas_concept_names
from atlas.errors import BadInputError
from atlas.pipeline.build import STAGES, build_atlas, capture_config, resolve, sae_job
from atlas.pipeline.config import BuildConfig, SaeJobConfig
from atlas.pipeline.encode import register_capture
from atlas.pipeline.train import ev_table, parse_latents, train_one
from atlas.report.demo import answer_queries, top_images_grid
from atlas.store import Atlas, open_atlas, open_writer


def test_build_fills_every_part_of_the_atlas(shapes_atlas):
    with open_atlas(shapes_atlas) as atlas:
        saes = atlas.saes()
        assert sorted((s.block, s.t) for s in saes) == sorted(
            (b, t) for b in ("down", "mid", "up") for t in (1.0, 0.5, 0.0))
        images = atlas.images()
        assert images.num_rows == 48 and set(images["split"].to_pylist()) <= {"train", "dictionary", "test"}
        for sae in saes:
            assert sae.k == 10 and sae.n_latents == 4 * sae.d_in
            # every position of every image keeps at most k codes
            counts = atlas.sql(f"SELECT count(*) AS n, count(DISTINCT image_id) AS images FROM codes "
                               f"WHERE sae_id = {sae.id}").rows[0]
            assert counts[1] == 48 and 0 < counts[0] <= 48 * sae.grid_h * sae.grid_w * sae.k
        objects = atlas.sql("SELECT label, count(*) FROM objects GROUP BY label").rows
        assert any(label.endswith("background") for label, _ in objects)
        assert any(label.split()[-1] in ("circle", "square", "triangle") for label, _ in objects)
        labelled = atlas.sql("SELECT count(*) FROM concept_labels").rows[0][0]
        assert labelled > 0
        assert atlas.sql("SELECT count(*) FROM concepts WHERE best_label IS NOT NULL").rows[0][0] > 0
        for stage in ("link", "build"):
            assert atlas.stage_done(stage)


def test_the_dictionary_never_reads_a_test_image(shapes_atlas, tmp_path):
    """A label planted on every test image (covering the whole image) earns no concept, while the same label
    planted on as many dictionary images does, under a rule that links any overlap (IoU > 0, one hit).

    Checked to fail when broken: linking with DICTIONARY_SPLITS + ("test",) links the test-only label.
    """
    import numpy as np

    from atlas.annotate.run import atlas_grids, object_cells
    from atlas.dictionary.link import LinkConfig
    from atlas.dictionary.run import link_atlas

    copy = shutil.copytree(shapes_atlas, tmp_path / "atlas")
    with open_atlas(copy) as atlas:
        images = atlas.images().to_pylist()
        grids = atlas_grids(atlas)
    test = [r["id"] for r in images if r["split"] == "test"]
    kept = [r["id"] for r in images if r["split"] != "test"][:len(test)]
    assert test and len(kept) == len(test)
    probes = [(i, "probe on a test image") for i in test] + [(i, "probe on a dictionary image") for i in kept]
    cells = object_cells([10**6 + n for n in range(len(probes))], [i for i, _ in probes],
                         [label for _, label in probes], [np.ones((32, 32), bool)] * len(probes), grids)
    pq.write_table(cells, copy / "annotations" / "shapes" / "batch-999999.parquet")
    with open_writer(copy) as writer:
        link_atlas(writer, LinkConfig(iou=0.0, min_hits=1), progress=False)
    with open_atlas(copy) as atlas:
        linked = {label for (label,) in atlas.sql("SELECT DISTINCT label FROM concept_labels").rows}
    assert "probe on a dictionary image" in linked
    assert "probe on a test image" not in linked


def test_stored_explained_variance_is_what_the_sae_explains_of_held_out_activations(shapes_atlas):
    """Each SAE's stored EV equals a dense recomputation (top-k of ReLU pre-activations, z @ W_dec + b_dec) on the
    activations of the split it was scored on, and beats the same architecture freshly initialised by 0.2.

    Checked to fail when broken: scoring on images other than the split recorded in scored_on, or saving the SAE
    before training (the initialisation's EV), fails it."""
    import torch

    from atlas.sae import Sae

    acts = ActivationSet(shapes_atlas / "activations")
    with open_atlas(shapes_atlas) as atlas:
        saes = atlas.saes()
    for info in saes:
        sae = Sae.from_pretrained(shapes_atlas / info.path)
        x = acts.load(info.block, info.t, info.branch, info.metrics["scored_on"])["x"].double()
        assert info.metrics["explained_variance"] == pytest.approx(_explained(sae, x), abs=1e-4), info.name
        fresh = Sae(sae.cfg, generator=torch.Generator().manual_seed(0))
        assert _explained(sae, x) > _explained(fresh, x) + 0.2, info.name


def _explained(sae, x):
    """1 - SSE / total variance of a dense top-k reconstruction of x, in float64."""
    import torch

    w_enc, b_enc, w_dec, b_dec = (p.detach().double() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    pre = torch.relu((x - b_dec) @ w_enc.T + b_enc)
    top = pre.topk(sae.cfg.k, dim=1)
    z = torch.zeros_like(pre).scatter(1, top.indices, top.values)
    return 1 - float(((x - (z @ w_dec + b_dec)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_concept_labels_point_at_objects_the_concept_overlaps(shapes_atlas):
    """A linked concept's map on an image that holds its label overlaps that object's mask there."""
    with open_atlas(shapes_atlas) as atlas:
        row = atlas.sql("SELECT concept_id, label, sae_id FROM concept_labels ORDER BY mean_iou DESC LIMIT 1").rows[0]
        concept, label, _ = row
        hits = atlas.sql(f"SELECT DISTINCT o.image_id FROM objects o JOIN images i ON i.id = o.image_id "
                         f"WHERE o.label = '{label}' AND i.split <> 'test'").rows
        overlaps = 0
        for (image_id,) in hits:
            heat = atlas.activation_map(image_id, concept)
            overlaps += heat.max() > 0
        assert overlaps >= 2


def test_rebuild_skips_finished_stages_and_changes_nothing(shapes_atlas, tmp_path):
    copy = tmp_path / "atlas"
    shutil.copytree(shapes_atlas, copy)
    with open_atlas(copy) as atlas:
        before = atlas.sql("SELECT (SELECT count(*) FROM codes), (SELECT count(*) FROM objects), "
                           "(SELECT count(*) FROM concept_labels), (SELECT count(*) FROM images)").rows
    files = sorted(p for p in copy.rglob("*") if p.is_file() and p.parts[-3:-1] != ("tables",))
    kept = [p for p in files if "activations" in p.parts or "saes" in p.parts or "codes" in p.parts]
    mtimes = {p: p.stat().st_mtime_ns for p in kept}
    lines: list[str] = []
    build_atlas(BuildConfig(atlas=str(copy), n_images=48, sae_tokens=100_000), progress=False, say=lines.append)
    assert [line.split()[1] for line in lines if line.startswith("[")] == list(STAGES)
    assert {p: p.stat().st_mtime_ns for p in kept} == mtimes  # no shard, SAE or code file was rewritten
    with open_atlas(copy) as atlas:
        after = atlas.sql("SELECT (SELECT count(*) FROM codes), (SELECT count(*) FROM objects), "
                          "(SELECT count(*) FROM concept_labels), (SELECT count(*) FROM images)").rows
    assert after == before


def test_interrupted_annotation_resumes_without_duplicates(shapes_atlas, tmp_path):
    copy = tmp_path / "atlas"
    shutil.copytree(shapes_atlas, copy)
    with open_atlas(copy) as atlas:
        n_objects = atlas.sql("SELECT count(*) FROM objects").rows[0][0]
    batch = sorted((copy / "annotations" / "shapes").glob("batch-*.parquet"))[0]
    batch.unlink()  # as if the run stopped after storing the objects but before the cells file
    result = CliRunner().invoke(main, ["annotate", "--atlas", str(copy)])
    assert result.exit_code == 0, result.output
    assert batch.exists()
    with open_atlas(copy) as atlas:
        assert atlas.sql("SELECT count(*) FROM objects").rows[0][0] == n_objects


def test_demo_queries_answer_on_a_built_atlas(shapes_atlas, tmp_path):
    with open_atlas(shapes_atlas) as atlas:
        answers = answer_queries(atlas)
        assert [len(a.result.columns) for a in answers[1:]] == [5, 4]
        assert answers[2].result.rows, "mid-block circle concepts exist"
        headline = answers[0].result.to_dicts()
        named = [r["concept_id"] for r in headline if "concept_id" in r]
        assert all(r["name"] == "red circle" for r in headline if "name" in r)
        assert set(atlas_concept_names(atlas, named).values()) <= {"red circle"}
        if not named:  # none at the headline's block and t: where the dictionary's red-circle concepts are instead
            assert answers[0].title.startswith("No concept") and all(r["best_concept"] for r in headline)
        concept = atlas.sql("SELECT concept_id FROM concept_labels ORDER BY mean_iou DESC LIMIT 1").rows[0][0]
        path = top_images_grid(atlas, concept, tmp_path / "grid.png")
    assert path.stat().st_size > 1000


def test_train_cli_one_sae_and_all(shapes_atlas, tmp_path):
    acts = shapes_atlas / "activations"
    runner = CliRunner()
    out = tmp_path / "saes"
    result = runner.invoke(main, ["train", "--activations", str(acts), "--block", "mid", "--t", "1.0",
                                  "--min-tokens", "20000", "--epochs", "2", "--latents", "2x", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "explained variance" in result.output
    config = json.loads((out / "mid" / "t1.0" / "cond" / "cfg.json").read_text())
    assert config["n_latents"] == 2 * 128 and config["k"] == 10
    metrics = json.loads((out / "mid" / "t1.0" / "cond" / "metrics.json").read_text())
    assert metrics["scored_on"] in ("test", "dictionary")
    result = runner.invoke(main, ["train", "--activations", str(acts), "--all", "--min-tokens", "20000",
                                  "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table] == ["block", "down", "mid", "up"]


@pytest.mark.parametrize("args, message", [
    (["--block", "middle", "--t", "1.0"], "block 'middle' was not captured"),
    (["--block", "mid", "--t", "0.3"], "t=0.3 was not captured"),
    (["--block", "mid"], "give --block and --t"),
])
def test_train_cli_bad_input_is_one_line(shapes_atlas, tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", "--activations", str(shapes_atlas / "activations"),
                                       "--out", str(tmp_path), *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_train_one_keeps_a_finished_sae_and_table_lists_it(shapes_atlas, tmp_path):
    acts = ActivationSet(shapes_atlas / "activations")
    config = SaeJobConfig(min_tokens=10_000, epochs=2)
    [first] = train_one(acts, "up", 0.0, "cond", tmp_path, config, progress=False)
    mtime = (first.path / "sae.safetensors").stat().st_mtime_ns
    [again] = train_one(acts, "up", 0.0, "cond", tmp_path, config, progress=False)
    assert (again.path / "sae.safetensors").stat().st_mtime_ns == mtime
    assert again.metrics["explained_variance"] == first.metrics["explained_variance"]
    assert "| up | " in ev_table([first])


def test_parse_latents():
    assert parse_latents("4x", 64) == 256
    assert parse_latents("300", 64) == 300
    with pytest.raises(BadInputError, match="--latents"):
        parse_latents("lots", 64)


def test_encode_and_link_cli_on_a_fresh_atlas(shapes_atlas, tmp_path):
    runner = CliRunner()
    fresh = tmp_path / "fresh"
    result = runner.invoke(main, ["encode", "--activations", str(shapes_atlas / "activations"),
                                  "--saes", str(shapes_atlas / "saes"), "--atlas", str(fresh)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["link", "--atlas", str(fresh)])
    assert result.exit_code != 0 and "run `atlas annotate` first" in result.output
    assert runner.invoke(main, ["annotate", "--atlas", str(fresh)]).exit_code == 0
    result = runner.invoke(main, ["link", "--atlas", str(fresh)])
    assert result.exit_code == 0, result.output
    with open_atlas(fresh) as a, open_atlas(shapes_atlas) as b:
        query = "SELECT concept_id, label, round(mean_iou, 9) FROM concept_labels ORDER BY ALL"
        assert a.sql(query, max_rows=100_000).rows == b.sql(query, max_rows=100_000).rows


def test_encode_re_sorts_the_image_buckets_once_per_run(shapes_atlas, tmp_path, monkeypatch):
    """Each SAE's codes commit as it is encoded, but the by-image arrangement is rebuilt once, after the last SAE,
    reading each SAE's codes once (it used to be rebuilt after every SAE from all SAEs so far: 45 SAE-passes for
    9 SAEs); a second run finds nothing to do."""
    from atlas.pipeline.encode import encode_atlas
    from atlas.store import Atlas, codes

    passes = []
    rebuild = codes.rebuild_by_image

    def counted(con, root, by_latent, buckets):
        passes.append(sum(1 for paths in by_latent.values() if paths))
        return rebuild(con, root, by_latent, buckets)

    monkeypatch.setattr(codes, "rebuild_by_image", counted)
    acts, saes = ActivationSet(shapes_atlas / "activations"), shapes_atlas / "saes"
    with Atlas.create(tmp_path / "atlas") as atlas, atlas.writer() as writer:
        assert len(encode_atlas(writer, acts, saes, progress=False)) == 9
        assert passes == [9]
        assert encode_atlas(writer, acts, saes, progress=False) == {} and passes == [9]
        query = "SELECT image_id, sae_id, row, col, latent, value FROM {} ORDER BY ALL"
        by_latent, by_image = (atlas.query(query.format(view)) for view in ("codes", "codes_by_image"))
        assert by_image.num_rows == by_latent.num_rows > 0 and by_image.cast(by_latent.schema).equals(by_latent)
    assert not (tmp_path / "atlas" / "codes" / codes.STALE_IMAGE_BUCKETS).exists()


def test_default_atlas_in_a_source_checkout_is_not_the_library(tmp_path, monkeypatch):
    from atlas.store import Atlas, InvalidInputError, default_path

    monkeypatch.delenv("ATLAS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert str(default_path()) == "atlas-data"
    (tmp_path / "atlas").mkdir()
    (tmp_path / "atlas" / "__init__.py").write_text("")
    assert str(default_path()) == "demo/atlas"
    with pytest.raises(InvalidInputError, match="is a Python package"):
        Atlas.create(tmp_path / "atlas")
    assert sorted(p.name for p in (tmp_path / "atlas").iterdir()) == ["__init__.py"]


def test_search_by_meaning_and_before_labels_exist(shapes_atlas, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["search", "red disc", "--atlas", str(shapes_atlas), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "closest in meaning: label 'red circle'" in result.output
    rows = json.loads(result.stdout)
    assert rows and {r["label"] for r in rows} == {"red circle"}
    far = runner.invoke(main, ["search", "purple hexagon", "--atlas", str(shapes_atlas)])
    assert far.exit_code == 1 and "nothing in this atlas is close to 'purple hexagon'" in far.output
    assert "did you mean" not in far.output and "similarity" in far.output
    cid = rows[0]["concept_id"]
    by_id = runner.invoke(main, ["search", cid, "--atlas", str(shapes_atlas), "--format", "json"])
    assert by_id.exit_code == 0 and json.loads(by_id.stdout)[0]["concept_id"] == cid, by_id.output
    result = runner.invoke(main, ["search", "dog", "--atlas", str(shapes_atlas)])
    assert result.exit_code != 0 and "nothing in this atlas is close to 'dog'" in result.output

    bare = tmp_path / "bare"  # codes and FAISS but no annotations yet
    assert runner.invoke(main, ["encode", "--activations", str(shapes_atlas / "activations"),
                                "--saes", str(shapes_atlas / "saes"), "--atlas", str(bare)]).exit_code == 0
    result = runner.invoke(main, ["search", "a red circle", "--atlas", str(bare), "--block", "mid", "--t", "1.0",
                                  "--k", "5", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "no labels yet" in result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 5 and all(r["concept_id"].startswith("mid/1.0/") for r in rows)
    assert rows[0]["score"] >= rows[-1]["score"]


def test_the_default_atlas_directory_does_not_shadow_the_package(tmp_path, monkeypatch):
    """An atlas made at the default place beside a user's script leaves `import atlas` the library (an atlas in
    ./atlas was imported as a namespace package in its place, without atlas.open)."""
    import subprocess
    import sys

    from atlas.store import Atlas, default_path

    monkeypatch.delenv("ATLAS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    Atlas.create(default_path()).close()
    assert (tmp_path / "atlas-data" / "catalog.duckdb").exists()
    out = subprocess.run([sys.executable, "-c", "import atlas; print(callable(atlas.open))"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_a_users_value_wins_over_the_presets_which_wins_over_the_stages_default(tmp_path):
    config, _ = resolve(BuildConfig(preset="sd14", prompts="prompts.txt", k=20, branches=["cond"]))
    assert sae_job(config) == SaeJobConfig(k=20, latents="4x", lr=1e-4, batch_size=4096, epochs=1.0, min_tokens=0)
    assert capture_config(config) == CaptureConfig(blocks=["down", "mid", "up"], t=[1.0, 0.5, 0.0],
                                                   branches=["cond"])  # steps and guidance: the model's own
    assert (config.model, config.annotator) == ("sd14", "grounded-sam")
    config, _ = resolve(BuildConfig(lr=3e-4, steps=5))
    assert sae_job(config) == SaeJobConfig(lr=3e-4)  # the rest: `atlas train`'s defaults
    assert capture_config(config) == CaptureConfig(branches=["cond"], steps=5)  # guidance: the model's own
    assert resolve(config)[0] == config


def test_the_sd14_recipe_captures_on_a_tiny_sd_model(tiny_sd_dir, tmp_path):
    """The preset's capture on SD v1.4's architecture (random weights): every block, t and branch of the paper."""
    from atlas.capture import capture
    from atlas.models import load_model

    config, _ = resolve(BuildConfig(preset="sd14", model=str(tiny_sd_dir), prompts="prompts.txt", steps=4))
    model = load_model(config.model, device="cpu")
    acts = ActivationSet(capture(model, ["a dog", "a cat"], tmp_path / "acts", capture_config(config), progress=False))
    assert sorted(acts.keys()) == sorted((b, t, br) for b in ("down", "mid", "up") for t in (1.0, 0.5, 0.0)
                                         for br in ("cond", "uncond"))
    assert acts.load("mid", 0.5, "uncond")["x"].shape[1] == 32  # the tiny UNet's width, 1280 in SD v1.4
    # the capture names the directory it loaded, so edits and layout prediction can load it again from the atlas
    assert acts.manifest["source"] == str(tiny_sd_dir.resolve())
    Atlas.create(tmp_path / "atlas").close()
    with open_writer(tmp_path / "atlas") as writer:
        register_capture(writer, acts)
    with open_atlas(tmp_path / "atlas") as atlas:
        assert atlas.model()["source"] == str(tiny_sd_dir.resolve())


@pytest.mark.parametrize("args, message", [
    (["--preset", "sd14"], "--preset sd14 needs --prompts FILE (one prompt per line)"),
    (["--model", "{sd}"], "--model {sd} is not a shapes model, so the shapes world's captions do not fit it: "
                          "give --prompts FILE"),
    (["--model", "{sd}", "--prompts", "{prompts}"], "the shapes annotator reads only shapes-world images"),
    (["--preset", "sd14", "--model", "{sd}", "--prompts", "{prompts}", "--grounding-dino", "{tmp}/no-dino"],
     "Grounding DINO weights {tmp}/no-dino are not on this machine"),
    (["--preset", "sd14", "--model", "{tmp}/no-sd", "--prompts", "{prompts}"], "no model '{tmp}/no-sd'"),
])
def test_build_checks_prompts_and_checkpoints_before_the_first_stage(tiny_sd_dir, tmp_path, args, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog on a bench\n")
    values = {"sd": str(tiny_sd_dir), "prompts": str(prompts), "tmp": str(tmp_path)}
    result = CliRunner().invoke(main, ["build", *(a.format(**values) for a in args),
                                       "--atlas", str(tmp_path / "atlas")])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: " + message.format(**values)), result.output
    assert not (tmp_path / "atlas").exists()


def test_a_build_too_small_for_a_stage_says_so_before_the_first_stage(tmp_path):
    """One image holds no test-split image: the report's layout prediction is named as skipped before anything runs,
    with the smallest size that scores it; prompts with no train or dictionary image are refused outright."""
    from atlas.capture.splits import split_of
    from atlas.pipeline.build import size_notes

    notes = size_notes(BuildConfig(n_images=1))
    assert len(notes) == 1 and "no image of the test split" in notes[0] and "layout prediction" in notes[0]
    wanted = int(notes[0].split("--n-images ")[-1].split()[0])
    assert size_notes(BuildConfig(n_images=wanted)) == [] and wanted > 1
    only_test = [p for p in (f"a dog number {i}" for i in range(200)) if split_of(p) == "test"][:3]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(only_test) + "\n")
    result = CliRunner().invoke(main, ["build", "--prompts", str(prompts), "--atlas", str(tmp_path / "atlas")])
    assert result.exit_code == 1 and "no image of the train or dictionary split" in result.output, result.output
    assert not (tmp_path / "atlas").exists()
