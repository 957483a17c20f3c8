"""Layout prediction: where a label's object will be, read from the codes of an early denoising step.

`predict` holds the per-image predictors (the paper's top-concept vote, a weighted one), `score` scores
them on an atlas's test images against an average-mask baseline (the paper's Table 3).
"""

from atlas.lazy import lazy_face

_NAMES = {
    "predict_layout": "atlas.layout.predict", "weighted_layout": "atlas.layout.predict",
    "LayoutConfig": "atlas.layout.config", "METHODS": "atlas.layout.config",
    **dict.fromkeys(("LayoutScore", "layout_iou"), "atlas.layout.score"),
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
