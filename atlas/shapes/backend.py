"""The `shapes` backend: the shapes world's classical annotator behind the common interface.

Besides one object per coloured shape ("red circle"), it emits the background as an object
("striped background", mask = every pixel no shape covers) so that style concepts can be linked too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from atlas.annotate.base import ObjectAnnotation, box_of, check_batch
from atlas.shapes.annotator import AnnotatorConfig, annotate


class ShapesAnnotator:
    """Needs no weights; the prompts are not read (the image alone decides)."""

    name = "shapes"

    def __init__(self, config: AnnotatorConfig | None = None) -> None:
        self.config = config or AnnotatorConfig()

    def annotate(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[list[ObjectAnnotation]]:
        check_batch(images, prompts)
        return [self._one(image) for image in images]

    def _one(self, image: np.ndarray) -> list[ObjectAnnotation]:
        found = annotate(image, self.config)
        out = [ObjectAnnotation(o.label, float(o.score), box_of(o.mask), o.mask) for o in found.objects]
        covered = np.zeros(image.shape[:2], dtype=bool)
        for o in found.objects:
            covered |= o.mask
        out.append(ObjectAnnotation(f"{found.style} background", 1.0, box_of(~covered), ~covered))
        return out
