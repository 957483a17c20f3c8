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


def test_layout_iou_on_the_shapes_atlas_beats_nothing_and_is_bounded(shapes_atlas):
    with open_atlas(shapes_atlas) as atlas:
        for method in METHODS:
            scores = layout_iou(atlas, LayoutConfig(method=method))
            assert sorted((s.block, s.t) for s in scores) == sorted((b, t) for b in ("down", "mid", "up")
                                                                    for t in (1.0, 0.5, 0.0))
            for s in scores:
                assert s.method == method and s.pairs > 0
                assert 0.0 <= s.iou <= 1.0 and 0.0 <= s.baseline_iou <= 1.0


@pytest.mark.parametrize("method", METHODS)
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
    assert result.exit_code != 0 and "no cond SAE for block 'middle'" in result.output
