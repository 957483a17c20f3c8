"""Annotation: the objects (label, score, box, mask) in generated images, by a backend chosen by name."""

from atlas.annotate.base import (
    ANNOTATOR_NAMES,
    Annotator,
    AnnotatorNotAvailable,
    ObjectAnnotation,
    get_annotator,
    grid_coverage,
    mask_to_grid,
)

__all__ = ["ANNOTATOR_NAMES", "Annotator", "AnnotatorNotAvailable", "ObjectAnnotation", "get_annotator",
           "grid_coverage", "mask_to_grid"]
