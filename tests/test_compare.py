"""The U-Net vs DiT comparison on hand-made report figures and dictionaries."""

from __future__ import annotations

from atlas.report.compare import comparison


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
