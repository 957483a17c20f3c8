"""Interventions: write atlas concepts into a new image's residual updates, where and when asked.

    from atlas.edit import edit
    result = edit("demo/atlas", "a red circle", "red circle", "top-left", out="edit.png")

`core` holds the math (windows, regions, ConceptEdit on delta), `run` resolves concepts in an atlas and
makes the side-by-side picture; judging an outcome is the caller's (the shapes world's judge comes
through atlas.pipeline.presets), and the paper's protocol runs in atlas.pipeline.edits.
"""

from atlas.lazy import lazy_face

_NAMES = {
    "EditConfig": "atlas.edit.config", "EvalEditsConfig": "atlas.edit.config",
    **dict.fromkeys(("WINDOWS", "ConceptEdit", "Window", "edit_hooks", "parse_region", "parse_window"),
                    "atlas.edit.core"),
    **dict.fromkeys(("EditResult", "PlannedEdit", "edit"), "atlas.edit.run"),
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
