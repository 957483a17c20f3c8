"""Annotation: the objects (label, score, box, mask) in generated images, and storing them in an atlas.

Backends (grounded-sam here; the shapes world's own annotator) are chosen by name in atlas.pipeline.presets.
"""

from atlas.lazy import lazy_face

_NAMES = {
    **dict.fromkeys(("Annotator", "AnnotatorNotAvailable", "ObjectAnnotation", "box_of", "check_batch"),
                    "atlas.annotate.base"),
    "annotate_atlas": "atlas.annotate.run",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
