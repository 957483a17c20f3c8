"""Interventions: write atlas concepts into a new image's residual updates, where and when asked.

    from atlas.edit import edit
    result = edit("demo/atlas", "a red circle", "red circle", "top-left", out="edit.png")

One module per job: `core` the math (windows, regions, ConceptEdit on delta), `plan` resolving a query into
concepts, a window and a strength, `curves` the measured-curves file (its one owner), `render` the
side-by-side picture, `log` the interventions log, `run` the edit itself, `judge` the judge protocol and the
judge of any atlas, `scores` CLIP and LPIPS. Which judge decides an atlas's edits is the pipeline's choice
(atlas.pipeline.judges); the paper's protocol runs in atlas.pipeline.edits.
"""

from atlas.lazy import lazy_face

_NAMES = {
    "EditConfig": "atlas.edit.config", "EvalEditsConfig": "atlas.edit.config",
    **dict.fromkeys(("WINDOWS", "ConceptEdit", "Window", "edit_hooks", "parse_region", "parse_window"),
                    "atlas.edit.core"),
    **dict.fromkeys(("EditResult", "edit"), "atlas.edit.run"),
    **dict.fromkeys(("AtlasJudge", "Judge", "Verdict"), "atlas.edit.judge"),
    "PlannedEdit": "atlas.edit.plan",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
