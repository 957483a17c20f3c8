"""Did an edit of a shapes-world image do what it asked? The classical annotator decides (no learned judge).

    spatial  the object's centre of mass (its largest component with that label, else of its colour) lies in
             the target region, and the annotator finds no objects beyond the unedited image's
    style    the annotator reads the target background style, and every object of the unedited image is
             still there: same label, centre within STAY_PX pixels

The pipeline (atlas.pipeline.judges.ShapesJudge) puts these rules behind the edit stage's judge protocol.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from atlas.shapes.annotator import Annotation, FoundObject

STAY_PX = 3.0
"""How far (pixels of the 32 px image) an object's centre may drift for a style edit to count."""


def main_object(annotation: Annotation, label: str) -> FoundObject | None:
    """The largest object with `label`, else the largest of its colour (an edit may blur a square's corners
    so that the annotator names another shape; where it went is still what counts), else None."""
    colour = label.split()[0]
    for same in (lambda o: o.label == label, lambda o: o.color == colour):
        found = [o for o in annotation.objects if same(o)]
        if found:
            return max(found, key=lambda o: int(o.mask.sum()))
    return None


def centre_in(annotation: Annotation, label: str, region: np.ndarray) -> bool:
    """Whether the centre of mass of `label`'s main object lies inside the (H, W) bool region (False without one)."""
    obj = main_object(annotation, label)
    if obj is None:
        return False
    row, col = min(int(obj.cy), region.shape[0] - 1), min(int(obj.cx), region.shape[1] - 1)
    return bool(region[row, col])


def no_new_objects(before: Annotation, after: Annotation) -> bool:
    """The intact-image rule of spatial edits: the annotator finds no more objects after the edit than before
    (an edit that paints the concept into the quadrant while the rest turns to coloured noise is no success)."""
    return len(after.objects) <= len(before.objects)


def objects_stay(objects: Iterable[FoundObject], after: Annotation) -> bool:
    """Every one of `objects` has a same-label object in `after` whose centre is within STAY_PX."""
    return all(any(o.label == p.label and np.hypot(o.cx - p.cx, o.cy - p.cy) <= STAY_PX for o in after.objects)
               for p in objects)


def style_of(target: str) -> str | None:
    """The background style a target names ("striped background" -> "striped"), None when it names none."""
    style = target.removesuffix(" background")
    return None if style == target else style

