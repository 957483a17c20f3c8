"""Attribute labels beside object labels: 'red', 'circle', 'top left', 'striped', each with its own mask.

An object annotation may carry its attributes (kind -> value: the shapes annotator knows each object's colour,
shape and quadrant, and gives every object of an image, the background included, the image's style); one that
carries none (a tagger's "black dog") gets the words of its label instead, each of the kind its word has in
ATTRIBUTES ('black' is a colour) or `word`. An image's mask of an attribute is the union of the masks of its
objects that have it, so a style covers the whole image and 'red' covers every red object.

The dictionary links concepts to these masks by the same rule as to objects (atlas.dictionary), kept apart from the
object labels so the object-level figures (best labels, layout prediction, the report) do not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atlas.annotate.base import ObjectAnnotation

OBJECT = "object"
"""The kind of an object label ('red circle', 'black dog'), beside the attribute kinds."""
WORD = "word"
"""The kind of a label word with no attribute kind ('dog' of 'black dog')."""
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey",
               "gray"),
    "shape": ("circle", "square", "triangle", "rectangle", "hexagon", "star", "disc"),
    "position": ("left", "right", "top", "bottom", "centre", "center", "middle"),
    "style": ("striped", "plain", "dotted", "checked"),
}
"""Attribute words and their kind: what varies among a concept's labels is named by its kind ("any shape")."""
KINDS = (OBJECT, *ATTRIBUTES, WORD)
"""Every label kind, objects first."""


@dataclass(frozen=True)
class AttributeMask:
    """One attribute of one image: its kind, value (the label) and (H, W) bool mask."""

    kind: str
    label: str
    mask: np.ndarray


def attribute_of(word: str) -> str | None:
    """The kind of an attribute word (colour, shape, position, style), None for any other word."""
    return next((kind for kind, words in ATTRIBUTES.items() if word in words), None)


def attribute_masks(objects: Sequence[ObjectAnnotation]) -> list[AttributeMask]:
    """The attributes of one image's objects, each with the union of the masks of the objects that have it, in
    order of first appearance."""
    found: dict[tuple[str, str], np.ndarray] = {}
    for obj in objects:
        for kind, value in attributes_of(obj):
            key = (kind, value)
            found[key] = found[key] | obj.mask if key in found else obj.mask.astype(bool)
    return [AttributeMask(kind, label, mask) for (kind, label), mask in found.items()]


def attributes_of(obj: ObjectAnnotation) -> list[tuple[str, str]]:
    """(kind, value) of each attribute of an object: its own, or the words of its label (a word without a kind in
    ATTRIBUTES is a `word`)."""
    if obj.attributes:
        return list(obj.attributes.items())
    return [(attribute_of(w) or WORD, w) for w in dict.fromkeys(obj.label.split())]
