"""The report: the paper's tables and plots from an atlas, and the demo's answers to its first queries."""

from atlas.lazy import lazy_face

_NAMES = {"build_report": "atlas.report.report", "answer_queries": "atlas.report.demo",
          "top_images_grid": "atlas.report.demo"}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
