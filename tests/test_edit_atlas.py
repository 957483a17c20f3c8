"""`atlas edit` and `atlas eval-edits` on a real shapes atlas: resolution, the picture, the log, auto, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from atlas.cli.main import main
from atlas.edit import EditConfig
from atlas.edit.config import EvalEditsConfig
from atlas.edit.curves import model_curves
from atlas.edit.plan import auto_choice
from atlas.errors import NotFoundError
from atlas.models import load_model
from atlas.pipeline.edits import edit, eval_edits
from atlas.store import open_atlas


@pytest.fixture(scope="module")
def atlas_copy(shapes_atlas, tmp_path_factory):
    """A writable copy: edits log interventions and eval-edits stores curves."""
    path = tmp_path_factory.mktemp("edit-atlas") / "atlas"
    shutil.copytree(shapes_atlas, path)
    return path


@pytest.fixture(scope="module")
def model():
    return load_model("shapes")


def linked(atlas_dir, block: str, t: float) -> str:
    """A label with concepts at (block, t) in this atlas."""
    with open_atlas(atlas_dir) as atlas:
        rows = atlas.sql(f"SELECT label FROM concept_labels WHERE block = '{block}' AND t = {t} "
                         "AND label NOT LIKE '%background' GROUP BY label ORDER BY count(*) DESC LIMIT 1").rows
    assert rows, f"no object label at {block}/{t}"
    return rows[0][0]


def linked_at_first_step(atlas_dir) -> tuple[str, str]:
    """(label, block) of an object label with concepts at t = 1.0, on mid (the paper's block) when it has one:
    which blocks link objects at the first step depends on the shipped weights."""
    with open_atlas(atlas_dir) as atlas:
        rows = atlas.sql("SELECT label, block FROM concept_labels WHERE t = 1.0 AND label NOT LIKE '%background' "
                         "GROUP BY label, block ORDER BY block = 'mid' DESC, count(*) DESC, label, block LIMIT 1").rows
    assert rows, "no object label at t = 1.0"
    return rows[0][0], rows[0][1]


def interventions(atlas_dir) -> int:
    with open_atlas(atlas_dir) as atlas:
        return atlas.sql("SELECT count(*) FROM interventions").rows[0][0]


def test_edit_resolves_a_label_draws_the_picture_and_logs(atlas_copy, model, tmp_path):
    label, block = linked_at_first_step(atlas_copy)
    before = interventions(atlas_copy)
    result = edit(atlas_copy, f"a {label}", label, "top-left",
                  EditConfig(when="early", strength=4.0, max_concepts=3, block=block), out=tmp_path / "edit.png",
                  model=model)
    plan = result.plans[0]
    assert plan.kind == "spatial" and plan.sae.block == block and plan.sae.t == 1.0 and plan.strength == 4.0
    assert 1 <= len(plan.concepts) <= 3 and str(plan.window) == "early"
    assert result.original.shape == result.edited.shape == (32, 32, 3)
    # the concept's map on the unedited image (it may not fire there: a spatial edit writes it into the region)
    assert result.maps[0].shape == (plan.sae.grid_h, plan.sae.grid_w)
    assert result.maps[0].min() >= 0 and bool(np.isfinite(result.maps[0]).all())
    assert set(result.outcome) == {"pixel_change", "success", "verdicts"}
    assert isinstance(result.outcome["success"][0], bool) and result.outcome["verdicts"][0]["change_in"] is not None
    assert any("early" in line for line in result.said)
    from PIL import Image

    assert Image.open(result.path).size[0] == 3 * 192  # unedited | edited | map
    assert len(result.intervention_ids) == len(plan.concepts) == interventions(atlas_copy) - before
    with open_atlas(atlas_copy) as atlas:
        row = atlas.sql(f"SELECT concept_id, kind, strength, params, output_path FROM interventions "
                        f"WHERE id = {result.intervention_ids[0]}").rows[0]
    params = json.loads(row[3]) if isinstance(row[3], str) else row[3]
    assert row[0] == plan.concepts[0].concept_id and row[1] == "spatial" and row[2] == 4.0
    assert params["prompt"] == f"a {label}" and params["edits"][0]["region"] == "top-left"
    assert "pixel_change" in params["outcome"] and row[4] == str(result.path)


def test_concept_ids_and_sql_compose_and_strength_zero_global_is_identity(atlas_copy, model):
    with open_atlas(atlas_copy) as atlas:
        concept = atlas.sql("SELECT concept_id FROM concept_labels WHERE block = 'up' AND t = 0.5 "
                            "ORDER BY mean_iou DESC LIMIT 1").rows[0][0]
    sql = "SELECT concept_id FROM concepts WHERE block = 'mid' AND t = 0.0 ORDER BY frequency DESC LIMIT 2"
    result = edit(atlas_copy, "a red circle", [concept, sql], ["bottom-right", "global"],
                  EditConfig(strength=2.0, log=False), model=model)
    first, second = result.plans
    assert first.sae.block == "up" and str(first.window) == "middle" and first.region == "bottom-right"
    assert second.kind == "global" and str(second.window) == "final" and len(second.concepts) == 2
    assert result.intervention_ids == [] and len(result.maps) == 2
    same = edit(atlas_copy, "a red circle", sql, "", EditConfig(strength=0.0, log=False), model=model)
    assert (same.original == same.edited).all() and same.outcome["pixel_change"] == 0.0


def test_cli_edit_and_one_line_errors_that_touch_nothing(atlas_copy, tmp_path):
    runner = CliRunner()
    label = linked(atlas_copy, "mid", 0.5)
    out = tmp_path / "cli.png"
    ok = runner.invoke(main, ["edit", f"a {label}", "--concept", label, "--when", "middle", "--strength", "3",
                              "--block", "mid", "--out", str(out), "--atlas", str(atlas_copy)])
    assert ok.exit_code == 0, ok.output
    assert out.exists() and "global edit" in ok.output and "logged as interventions" in ok.output
    before = interventions(atlas_copy)
    bad = {"unknown label": (["--concept", label[:-1] + "x"], "did you mean"),
           "bad region": (["--concept", label, "--region", "middle-left"], "bad region"),
           "tiny region": (["--concept", label, "--region", "0,0,0.1,0.1", "--block", "mid", "--method",
                            "coefficients"], "covers no cell"),  # the donor method would grow the region
           "bad window": (["--concept", label, "--when", "late"], "bad window"),
           "bad id": (["--concept", "mid/1.0/999999"], "does not exist"),
           "sql without ids": (["--concept", "SELECT 1 AS x"], "concept_id column"),
           "regions vs concepts": (["--concept", label, "--region", "top", "--region", "left"], "regions for"),
           "bad branch": (["--concept", label, "--branch", "uncond"], "branch")}
    for name, (args, message) in bad.items():
        when = [] if "--when" in args else ["--when", "middle"]  # where `label` has concepts
        result = runner.invoke(main, ["edit", "a red circle", *args, *when, "--out", str(tmp_path / "bad.png"),
                                      "--atlas", str(atlas_copy)])
        assert result.exit_code in (1, 2), (name, result.output)  # 2: Click's usage error, caught while parsing
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("Error: ") and message in last, (name, result.output)
        assert result.exit_code == 2 or len(result.output.strip().splitlines()) == 1, (name, result.output)
    assert not (tmp_path / "bad.png").exists() and interventions(atlas_copy) == before


@pytest.mark.slow
def test_eval_edits_writes_tables_and_curves_that_auto_uses(atlas_copy, model, tmp_path):
    config = EvalEditsConfig(kind="spatial", n=1, windows="middle,final", strengths="16", block="up")
    with open_atlas(atlas_copy) as atlas:
        result = eval_edits(atlas, config, tmp_path / "eval", model=model, progress=False, say=lambda line: None)
    assert [p.window for p in result.points] == ["middle", "final"] and result.n_cases == 4
    stored = json.loads((tmp_path / "eval" / "eval-spatial.json").read_text())
    for point in result.points:  # each success rate is the share of its 4 edits whose verdict says success
        verdicts = [e["verdict"] for e in stored["edits"] if e["window"] == point.window]
        assert len(verdicts) == 4 and point.pixel_change >= 0
        assert point.success == sum(bool(v and v["success"]) for v in verdicts) / 4
    assert "| middle | 16 |" in result.table() and "0.35" in result.table()  # beside the paper's figure
    for name in ("eval-spatial.md", "eval-spatial.json", "eval-spatial-middle.png", "eval-spatial-final.png"):
        assert (tmp_path / "eval" / name).exists()
    curves = json.loads((atlas_copy / "edits" / "curves.json").read_text())
    assert curves["spatial"]["up"]["windows"]["middle"]["strength"] == [16.0]
    best = max(result.points, key=lambda p: (p.success, p.resolved, -p.pixel_change))
    label = linked(atlas_copy, "up", {"middle": 0.5, "final": 0.0}[best.window])
    auto = edit(atlas_copy, f"a {label}", label, "top-right", EditConfig(log=False), model=model)
    plan = auto.plans[0]
    assert plan.sae.block == "up" and str(plan.window) == best.window and plan.strength == 16.0
    assert "auto: spatial edits on up succeeded most" in auto.said[0]
    label = linked(atlas_copy, "up", 1.0)  # global edits have no curves in this atlas: those the model ships
    plain = edit(atlas_copy, "a red circle", label, "", EditConfig(log=False), model=model)
    shipped = model_curves("shapes")["global"]
    block, window, strength, _, _ = auto_choice(shipped, "global", None)
    assert (plain.plans[0].sae.block, str(plain.plans[0].window), plain.plans[0].strength) == (block, window, strength)
    assert "on the curves shipped with the model" in plain.said[0]


@pytest.mark.slow
def test_cli_eval_edits_writes_into_the_atlas_by_default(atlas_copy):
    result = CliRunner().invoke(main, ["eval-edits", "--n", "1", "--windows", "final", "--strengths", "16",
                                       "--atlas", str(atlas_copy)])
    assert result.exit_code == 0, result.output
    assert "| final | 16 |" in result.output and f"wrote {atlas_copy / 'edits'}/eval-spatial.md" in result.output
    assert (atlas_copy / "edits" / "eval-spatial-final.png").stat().st_size > 500


def test_runs_saving_curves_at_once_keep_every_curve(tmp_path):
    """eval-edits runs on different blocks merge into one curves.json: none may overwrite another's curve."""
    import threading

    from atlas.edit.curves import load_curves
    from atlas.pipeline.edits import EvalResult, Point, save_curves

    results = [EvalResult("spatial", f"block{i}", [Point("early", 4.0, i / 10, 0.1, 8, 8, 0.5)], 0.25, 8,
                          "2026-12-01") for i in range(8)]
    start = threading.Barrier(len(results))

    def save(result: EvalResult) -> None:
        start.wait()
        save_curves(tmp_path, "spatial", result, EvalEditsConfig())

    threads = [threading.Thread(target=save, args=(r,)) for r in results]
    [t.start() for t in threads]
    [t.join() for t in threads]
    curves = load_curves(tmp_path)["spatial"]
    assert sorted(curves) == [f"block{i}" for i in range(8)]
    assert [curves[f"block{i}"]["windows"]["early"]["success"] for i in range(8)] == [[i / 10] for i in range(8)]


@pytest.mark.slow
def test_concepts_of_one_sae_edit_every_window_and_auto_reuses_them(shapes_atlas, model, tmp_path):
    """--concepts-t 1.0 edits the middle window with the first step's concepts (the shapes model's stripe concepts
    are strong there); the curve is kept apart from the paper-rule ones and auto, finding it best, edits the same
    way: the t = 1.0 SAE in the middle window."""
    copy = tmp_path / "atlas"
    shutil.copytree(shapes_atlas, copy)
    config = EvalEditsConfig(kind="style", n=2, windows="middle", strengths="512", block="up", concepts_t="1.0")
    with open_atlas(copy) as atlas:
        result = eval_edits(atlas, config, tmp_path / "eval", model=model, progress=False, say=lambda line: None)
        striped = atlas.concepts(label="striped background", t=1.0, block="up", limit=1)
    assert result.concepts_t == 1.0 and "the concepts of the t = 1 SAE in every window" in result.table()
    assert result.points[0].resolved == (2 if striped else 0)
    curves = json.loads((copy / "edits" / "curves.json").read_text())["global"]
    assert list(curves) == ["up, concepts t=1"] and curves["up, concepts t=1"]["concepts_t"] == 1.0
    assert " --concepts-t 1 " in curves["up, concepts t=1"]["command"] + " "
    label = "striped background" if striped else linked(copy, "up", 1.0)
    auto = edit(copy, "a red circle", label, "", EditConfig(log=False), model=model)
    plan = auto.plans[0]
    assert plan.sae.block == "up" and plan.sae.t == 1.0 and str(plan.window) == "middle" and plan.strength == 512
    assert "succeeded most in the middle window with the concepts of t = 1" in auto.said[0]
    with open_atlas(copy) as atlas, pytest.raises(NotFoundError, match="no cond SAE of up at t=0.3 for --concepts-t"):
        eval_edits(atlas, EvalEditsConfig(kind="style", n=1, windows="middle", concepts_t="0.3"),
                   tmp_path / "eval", model=model, progress=False, say=lambda line: None)
    with pytest.raises(NotFoundError, match="no cond SAE of up at t=0.3 for --concepts-t"):
        edit(copy, "a red circle", label, "", EditConfig(concepts_t="0.3", block="up", log=False), model=model)
