"""The `shapes` backend: the shapes world's classical annotator behind the common interface.

Besides one object per coloured shape ("red circle"), it emits the background as an object
("striped background", mask = every pixel no shape covers) so that style concepts can be linked too.
Each object carries its attributes (atlas.annotate.attributes): colour, shape and quadrant ('top left') for a
shape, and for every object of the image, the background included, the image's style (so a style's mask is the
whole image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from atlas.annotate.base import ObjectAnnotation, box_of, check_batch
from atlas.shapes.annotator import AnnotatorConfig, FoundObject, annotate

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
"""The position attribute of an object: the quadrant its centre of mass lies in (atlas.shapes.world.POSITIONS)."""


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
        style = {"style": found.style}
        out = [ObjectAnnotation(o.label, float(o.score), box_of(o.mask), o.mask,
                                {"colour": o.color, "shape": o.shape, **_quadrant(o, image.shape[1]), **style})
               for o in found.objects]
        covered = np.zeros(image.shape[:2], dtype=bool)
        for o in found.objects:
            covered |= o.mask
        out.append(ObjectAnnotation(f"{found.style} background", 1.0, box_of(~covered), ~covered, style))
        return out


def _quadrant(found: FoundObject, size: int) -> dict[str, str]:
    quadrant = next((q for q in QUADRANTS if found.in_position(q, size)), None)
    return {"position": quadrant} if quadrant else {}
