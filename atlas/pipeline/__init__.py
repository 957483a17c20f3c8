"""The pipeline: `build` and the per-stage loops over an atlas, executors (local, Ray) and presets.

It is the one floor that composes stages: the shapes world's captions, annotator and edit judge reach the
rest through its presets.
"""

from atlas.lazy import lazy_face

_NAMES = {"build_atlas": "atlas.pipeline.build", "check_build": "atlas.pipeline.build",
          "BuildConfig": "atlas.pipeline.config", "open_executor": "atlas.pipeline.executor",
          "get_annotator": "atlas.pipeline.presets"}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
