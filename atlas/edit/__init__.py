"""Interventions: write atlas concepts into a new image's residual updates, where and when asked.

    from atlas.edit import edit
    result = edit("atlas", "a red circle", "red circle", "top-left", out="edit.png")

`core` holds the math (windows, regions, ConceptEdit on delta), `run` resolves concepts in an atlas and
makes the side-by-side picture, `judge` scores shapes-world outcomes, `evaluate` runs the paper's protocol.
"""

from atlas.edit.config import EditConfig, EvalEditsConfig
from atlas.edit.core import WINDOWS, ConceptEdit, Window, edit_hooks, parse_region, parse_window
from atlas.edit.run import EditResult, PlannedEdit, edit

__all__ = ["WINDOWS", "ConceptEdit", "EditConfig", "EditResult", "EvalEditsConfig", "PlannedEdit", "Window",
           "edit", "edit_hooks", "parse_region", "parse_window"]
