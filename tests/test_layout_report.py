"""Layout prediction and the atlas report: golden values on hand-made inputs, then the real shapes atlas."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from atlas.cli.main import main
from atlas.dictionary.run import DICTIONARY_SPLITS
from atlas.errors import BadInputError
from atlas.layout.config import METHODS, THRESHOLDS, LayoutConfig
from atlas.layout.score import (
    baseline_masks,
    codes_by_image,
    label_masks,
    layout_iou,
    top_codes,
)
from atlas.store import open_atlas


def test_top_codes_orders_each_position_by_value():
    codes = pa.table({"image_id": [7, 7, 7, 8], "row": [0, 0, 1, 0], "col": [1, 1, 0, 0],
                      "latent": [3, 5, 2, 9], "value": [0.5, 2.0, 1.0, 4.0]})
    by_image = codes_by_image(codes)
    assert sorted(by_image) == [7, 8] and by_image[7].num_rows == 3
    latents, values = top_codes(by_image[7], (2, 2), k=2)
    assert latents[0, 1].tolist() == [5, 3] and values[0, 1].tolist() == [2.0, 0.5]
    assert latents[1, 0].tolist() == [2, 0] and values[1, 0].tolist() == [1.0, 0.0]
    assert values[0, 0].tolist() == [0.0, 0.0]  # image 8's code stays out


def test_baseline_is_the_average_mask_at_its_best_threshold():
    a = np.array([[1, 1], [0, 0]], bool)
    b = np.array([[1, 0], [0, 0]], bool)
    masks = {(0, "x"): a, (1, "x"): a, (2, "x"): b}
    # mean = [[1, 2/3], [0, 0]]; level 1 -> IoU (0.5, 0.5, 1) = 0.667; level 2/3 -> (1, 1, 0.5) = 0.833
    assert baseline_masks(masks)["x"].tolist() == a.tolist()


def test_label_masks_union_objects_of_one_label_on_one_grid():
    cells = pa.table({"object_id": [1, 2, 3, 1], "image_id": [0, 0, 0, 0], "label": ["x", "x", "y", "x"],
                      "row": [0, 1, 1, 0], "col": [0, 1, 0, 0], "grid_h": [2, 2, 2, 4], "grid_w": [2, 2, 2, 4]})
    masks = label_masks(cells, (2, 2))
    assert masks[(0, "x")].tolist() == [[True, False], [False, True]]
    assert masks[(0, "y")].tolist() == [[False, False], [True, False]]


def test_layout_iou_on_the_shapes_atlas_beats_both_baselines_late(shapes_atlas):
    """At t = 0.0 the up block's codes hold the finished layout: the weighted predictor must beat the caption-aware
    baseline by a wide margin (demo atlas: 0.66 against 0.25). A predictor that predicts nothing, or the label's
    average mask, fails this."""
    with open_atlas(shapes_atlas) as atlas:
        scores = layout_iou(atlas, methods=METHODS)
    assert sorted({(s.method, s.block, s.t) for s in scores}) == sorted(
        (m, b, t) for m in METHODS for b in ("down", "mid", "up") for t in (1.0, 0.5, 0.0))
    late = {s.method: s for s in scores if (s.block, s.t) == ("up", 0.0)}
    assert late["weighted"].iou > late["weighted"].caption_baseline_iou + 0.15, late["weighted"]
    for s in scores:  # (whether reading the caption pays is a figure of the demo atlas: this one has 48 images)
        assert s.pairs > 0 and 0 <= s.unnamed_pairs < s.pairs and 0.0 <= s.iou <= 1.0


@pytest.mark.parametrize("method", ["weighted", "top-concept"])  # top-labelled's threshold: the same code path
def test_the_threshold_is_the_best_on_the_dictionary_images(shapes_atlas, method):
    """Chosen per SAE on the dictionary images, like the baseline's threshold; the test images only score it."""
    with open_atlas(shapes_atlas) as atlas:
        auto = {(s.block, s.t): s for s in layout_iou(atlas, LayoutConfig(method=method))}
        up = auto[("up", 0.0)]
        assert up.threshold in THRESHOLDS[method]
        on_dictionary = {}
        for threshold in THRESHOLDS[method]:
            fixed = {(s.block, s.t): s for s in layout_iou(atlas, LayoutConfig(method, threshold),
                                                           splits=DICTIONARY_SPLITS)}
            on_dictionary[threshold] = fixed[("up", 0.0)].iou
        assert on_dictionary[up.threshold] == max(on_dictionary.values())
        same = {(s.block, s.t): s for s in layout_iou(atlas, LayoutConfig(method, up.threshold))}
        assert same[("up", 0.0)].iou == up.iou


def test_an_unknown_layout_method_is_refused(shapes_atlas):
    with pytest.raises(BadInputError, match="unknown layout method 'best'; choose one of weighted, top-concept"):
        LayoutConfig(method="best")
    with open_atlas(shapes_atlas) as atlas, pytest.raises(BadInputError, match="unknown layout method 'best'"):
        layout_iou(atlas, methods=("weighted", "best"))


def test_report_writes_tables_and_plots(shapes_atlas):
    out = shapes_atlas / "report"  # written by the build's report stage
    figures = json.loads((out / "figures.json").read_text())
    assert {f["block"] for f in figures["explained_variance"]} == {"down", "mid", "up"}
    assert len(figures["layout"]) == 9 * len(METHODS) and len(figures["structure"]) == 9
    assert {f["method"] for f in figures["layout"]} == set(METHODS)
    for name in ("index.html", "report.md", "layout_iou.png", "cohesion.png"):
        assert (out / name).stat().st_size > 500
    html = (out / "index.html").read_text()
    assert "<table>" in html and "layout_iou.png" in html


def test_report_and_predict_layout_cli(shapes_atlas, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["report", "--atlas", str(shapes_atlas), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "layout IoU" in result.output and (tmp_path / "r" / "index.html").exists()
    png = tmp_path / "layout.png"
    result = runner.invoke(main, ["predict-layout", "a red circle on the left", "--label", "red circle",
                                  "--t", "0.0", "--block", "up", "--atlas", str(shapes_atlas), "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert "IoU" in result.output and png.stat().st_size > 200
    result = runner.invoke(main, ["predict-layout", "a red circle", "--label", "red circel",
                                  "--atlas", str(shapes_atlas)])
    assert result.exit_code != 0 and "did you mean 'red circle'" in result.output
    result = runner.invoke(main, ["predict-layout", "a red circle", "--label", "red circle", "--block", "middle",
                                  "--atlas", str(shapes_atlas)])
    assert result.exit_code != 0 and "no SAE of block 'middle' at t=1.0 on the cond branch" in result.output


def test_report_keeps_the_cond_and_uncond_saes_apart(two_branch_atlas, tmp_path):
    """Every per-SAE figure is keyed by (block, t, branch): the two branches' SAEs get their own rows, values and
    context-free tables, and nothing of one overwrites the other."""
    result = CliRunner().invoke(main, ["report", "--atlas", str(two_branch_atlas), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    header, _, *lines = result.output.split("\n\n")[0].splitlines()
    assert header.split() == ["method", "block", "t", "branch", "layout", "IoU", "baseline", "caption",
                               "baseline", "pairs", "threshold"]
    rows = [line.split() for line in lines]
    keys = [tuple(row[:4]) for row in rows]
    assert sorted(keys) == sorted((m, "mid", "1.0", b) for m in METHODS for b in ("cond", "uncond"))
    figures = json.loads((tmp_path / "r" / "figures.json").read_text())
    for table in ("explained_variance", "layout", "structure"):
        keys = [(f.get("method"), f["block"], f["t"], f["branch"]) for f in figures[table]]
        assert len(set(keys)) == len(keys) and {k[3] for k in keys} == {"cond", "uncond"}, table
    ev = {f["branch"]: f["explained_variance"] for f in figures["explained_variance"]}
    assert ev["cond"] != ev["uncond"]
    layout = {b: [(f["iou"], f["threshold"]) for f in figures["layout"] if f["branch"] == b]
              for b in ("cond", "uncond")}
    assert layout["cond"] != layout["uncond"]
    assert sorted(figures["context_free"]) == ["mid/1.0/cond", "mid/1.0/uncond"]
    assert all(r["concept_id"].startswith("mid/1.0/uncond/") for r in figures["context_free"]["mid/1.0/uncond"])
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "| weighted | mid | 1.000 | cond |" in markdown and "| weighted | mid | 1.000 | uncond |" in markdown


def test_predict_layout_reads_the_sae_of_the_branch_asked_for(two_branch_atlas, tmp_path):
    with open_atlas(two_branch_atlas) as atlas:
        label = atlas.labels()[0]
    args = ["predict-layout", "a red circle on the left", "--label", label, "--t", "1.0", "--atlas",
            str(two_branch_atlas), "--out", str(tmp_path / "layout.png")]
    result = CliRunner().invoke(main, [*args, "--block", "mid", "--branch", "uncond"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*args, "--block", "up", "--branch", "uncond"])
    assert result.exit_code == 1
    assert "no SAE of block 'up' at t=1.0 on the uncond branch; this atlas has mid/1.0/cond, mid/1.0/uncond" in \
        result.output
