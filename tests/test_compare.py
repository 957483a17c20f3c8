"""The U-Net vs DiT comparison on hand-made report figures and dictionaries."""

from __future__ import annotations

import json
import shutil

import pytest

from atlas.report.compare import comparison, edit_comparison, needed_strength


def _figures(ev: dict, iou: dict) -> dict:
    layout = [{"method": m, "block": b, "t": t, "branch": "cond", "variant": "", "iou": v, "caption_baseline_iou": 0.25,
               "unnamed_iou": v / 2, "unnamed_baseline_iou": 0.1} for (m, b, t), v in iou.items()]
    layout.append({**layout[0], "variant": "k20", "iou": 0.99})  # a variant: never the compared figure
    return {"explained_variance": [{"block": b, "t": t, "branch": "cond", "variant": "", "explained_variance": v}
                                   for (b, t), v in ev.items()], "layout": layout}


def test_comparison_lines_up_blocks_and_times_and_counts_emergence():
    a = _figures({("up", 1.0): 0.9, ("up", 0.0): 0.8}, {("weighted", "up", 1.0): 0.34, ("weighted", "up", 0.0): 0.6})
    b = _figures({("up", 1.0): 0.7}, {("weighted", "up", 1.0): 0.2, ("top-concept", "up", 1.0): 0.1})
    emerged_a = [{"block": "up", "label": "red circle", "first_t": 1.0}, {"block": "up", "label": "sq", "first_t": 0.0}]
    emerged_b = [{"block": "up", "label": "red circle", "first_t": 0.0}]
    lines, values = comparison(("unet", "dit"), (a, b), (emerged_a, emerged_b))
    assert "| up | 1.000 | 0.900 | 0.700 |" in lines and "| up | 0.000 | 0.800 | - |" in lines
    assert "| weighted | up | 1.000 | 0.340 | 0.250 | 0.170 | 0.100 | 0.200 | 0.250 | 0.100 | 0.100 |" in lines
    assert values == {"unet_up_t1_weighted": 0.34, "unet_up_t0_weighted": 0.6, "dit_up_t1_weighted": 0.2,
                      "dit_up_t1_top_concept": 0.1, "unet_up_labels_linked_t1": 1.0, "unet_any_labels_linked_t1": 1.0,
                      "dit_up_labels_linked_t1": 0.0, "dit_any_labels_linked_t1": 0.0}
    assert "| unet | up | 1 | 2 | 2 |" in lines and "| dit | up | 0 | 1 | 1 |" in lines


def _run(points: list[tuple[str, float, float]], held_out: list[tuple[str, float, float]]) -> dict:
    def point(window: str, strength: float, success: float) -> dict:
        return {"window": window, "strength": strength, "success": success, "pixel_change": strength / 100,
                "resolved": 4, "n": 4, "change_in": 0.2, "change_out": strength / 1000, "others_stay": 0.75}
    return {"points": [point(*p) for p in points], "held_out": [point(*p) for p in held_out], "baseline": 0.25}


def test_edit_comparison_reports_held_out_success_and_the_smallest_strength_that_worked():
    unet = {"spatial": _run([("early", 1, 0.25), ("early", 4, 0.5), ("early", 16, 0.75)], [("early", 16, 0.6)]),
            "style": _run([("early", 64, 0.0)], [])}
    dit = {"spatial": _run([("early", 1, 0.75), ("early", 4, 1.0), ("early", 16, 0.25)], [("early", 4, 0.9)])}
    lines, values = edit_comparison(("unet", "dit"), (unet, dit))
    assert "| spatial | early | unet | 1: 0.25, 4: 0.50, 16: 0.75 | 4 | 16 | 0.600 | 0.200 / 0.016 | 0.750 |" in lines
    assert "| spatial | early | dit | 1: 0.75, 4: 1.00, 16: 0.25 | 1 | 4 | 0.900 | 0.200 / 0.004 | 0.750 |" in lines
    assert not any("| style |" in line for line in lines)  # only one atlas has style runs: not compared
    assert lines[-1].startswith("Reading it: spatial: held-out edits per cell unet 4, dit 4 (one edit = 0.25, "
                                "unedited baseline 0.25). Strengths multiply")
    assert values == {"unet_spatial_early_success": 0.6, "unet_spatial_early_strength": 16.0,
                      "unet_spatial_early_change_out": 0.016, "dit_spatial_early_success": 0.9,
                      "dit_spatial_early_strength": 4.0, "dit_spatial_early_change_out": 0.004}
    assert needed_strength(unet["style"]["points"], "early") is None
    assert edit_comparison(("unet", "dit"), ({}, dit)) == ([], {})


@pytest.mark.slow
def test_report_compare_adds_the_side_by_side_section_and_refuses_an_unreported_atlas(two_k_atlas, tmp_path):
    from click.testing import CliRunner

    from atlas.cli.main import main

    a, b = tmp_path / "unet", tmp_path / "dit"
    shutil.copytree(two_k_atlas, a)
    shutil.copytree(two_k_atlas, b)
    for reported in (a, b):
        shutil.rmtree(reported / "report", ignore_errors=True)  # `atlas build` reports
    refused = CliRunner().invoke(main, ["report", "--atlas", str(b), "--compare", str(a)])
    assert refused.exit_code != 0 and "has no report yet" in refused.output and not (b / "report").exists()
    assert CliRunner().invoke(main, ["report", "--atlas", str(a)]).exit_code == 0
    (b / "edits").mkdir()
    (b / "edits" / "eval-spatial.json").write_text(json.dumps(_run([("early", 2, 0.5)], [("early", 2, 0.4)])))
    result = CliRunner().invoke(main, ["report", "--atlas", str(b), "--compare", str(a)])
    assert result.exit_code == 0, result.output
    report = (b / "report" / "report.md").read_text()
    assert "## Side by side: dit vs unet" in report and "Edits: not compared" in report
    figures = json.loads((b / "report" / "figures.json").read_text())
    ev = {(r["block"], r["t"]): r["explained_variance"] for r in figures["explained_variance"] if not r["variant"]}
    assert figures["comparison"]["names"] == ["dit", "unet"] and "dit_mid_t1_weighted" in figures["comparison"][
        "values"]
    assert f"| mid | 1.000 | {ev[('mid', 1.0)]:.3f} | {ev[('mid', 1.0)]:.3f} |" in report  # the same SAEs, twice
