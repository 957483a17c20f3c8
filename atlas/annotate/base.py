"""What every annotator returns, how its masks meet the UNet's grid, and how a backend is chosen by name.

The concept dictionary compares SAE activation maps (one value per UNet grid cell) with object masks, so an
annotator's image-resolution masks are pooled to each hooked block's grid here, by exact area averaging.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# name -> "module:class"; imported only when asked for, so `shapes` never pays for transformers.
_BACKENDS = {
    "shapes": "atlas.annotate.shapes:ShapesAnnotator",
    "grounded-sam": "atlas.annotate.grounded_sam:GroundedSamAnnotator",
}
ANNOTATOR_NAMES = tuple(_BACKENDS)


class AnnotatorNotAvailable(RuntimeError):
    """A backend's weights or package are not on this machine; the message (one line) says how to get them."""


@dataclass
class ObjectAnnotation:
    """One object found in one image: its label, confidence, box (x0, y0, x1, y1 in pixels) and (H, W) bool mask."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray


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
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image {i} is {image.dtype} {image.shape}; expected (H, W, 3) uint8")


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: the fraction of output cell i covered by input pixel p (rows sum to 1)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    p = np.arange(n_in)
    overlap = np.minimum(p + 1, edges[1:, None]) - np.maximum(p, edges[:-1, None])
    return np.clip(overlap, 0.0, None) / (n_in / n_out)


def _coverage(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim < 2:
        raise ValueError(f"mask has shape {mask.shape}; expected (..., H, W)")
    gh, gw = grid_hw
    if gh < 1 or gw < 1:
        raise ValueError(f"grid {grid_hw} must be at least 1x1")
    wy, wx = _pool_matrix(mask.shape[-2], gh), _pool_matrix(mask.shape[-1], gw)
    return np.einsum("ih,...hw,jw->...ij", wy, mask.astype(np.float64), wx)


def grid_coverage(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Fraction of each grid cell the mask covers, float32 (..., gh, gw).

    Exact area averaging: cells need not hold a whole number of pixels (e.g. 30 px -> 8 cells), so any
    image size meets any grid without resampling artefacts.
    """
    return _coverage(mask, grid_hw).astype(np.float32)


def mask_to_grid(mask: np.ndarray, grid_hw: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """Bool (..., gh, gw): cells whose coverage is at least `threshold` (in (0, 1]; 0.5 = half the cell)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold {threshold} must be in (0, 1]")
    return _coverage(mask, grid_hw) >= threshold - 1e-9


def get_annotator(name: str, **options: object) -> Annotator:
    """The backend called `name`, built with `options` (its constructor's keyword arguments)."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown annotator {name!r}; expected one of {', '.join(ANNOTATOR_NAMES)}")
    module_name, class_name = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(**options)
