"""What every annotator returns and checks; backends are chosen by name in atlas.pipeline.presets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from atlas.errors import BadInputError, UnavailableError


class AnnotatorNotAvailable(UnavailableError):
    """A backend's weights or package are not on this machine; the message (one line) says how to get them."""


@dataclass
class ObjectAnnotation:
    """One object found in one image: its label, confidence, box (x0, y0, x1, y1 in pixels) and (H, W) bool mask."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray
    attributes: dict[str, str] = field(default_factory=dict)
    """Kind -> value ('colour' -> 'red') where the annotator knows them; empty: the label's words stand in
    (atlas.annotate.attributes)."""


@runtime_checkable
class Annotator(Protocol):
    """Finds the objects of a batch of (H, W, 3) uint8 images; `prompts` are the images' prompts, one each."""

    name: str

    def annotate(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[list[ObjectAnnotation]]: ...


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box (x0, y0, x1, y1) of a mask, x1/y1 exclusive; (0, 0, 0, 0) for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0, 0.0, 0.0, 0.0
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def check_batch(images: Sequence[np.ndarray], prompts: Sequence[str]) -> None:
    """Fail early, with the reason, on inputs every backend would otherwise misread."""
    if len(images) != len(prompts):
        raise BadInputError(f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise BadInputError(f"image {i} is {image.dtype} {image.shape}; expected (H, W, 3) uint8")
