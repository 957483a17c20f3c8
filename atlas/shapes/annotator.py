"""A classical annotator for the shapes world: no learned weights, so it can judge the model.

It finds coloured blobs (saturated pixels, by hue), splits them into connected components,
names each component's shape by its best overlap with a circle, square and triangle template
stretched to the component's bounding box, and reads the background style from the row profile
of the unsaturated pixels (stripes are horizontal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from atlas.shapes.world import COLORS, POSITIONS, SHAPES, unit_shape


@dataclass(frozen=True)
class FoundObject:
    shape: str
    color: str
    mask: np.ndarray  # (H, W) bool
    cx: float
    cy: float
    score: float  # template IoU of the chosen shape

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def box(self) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(self.mask)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    def in_position(self, position: str, size: int) -> bool:
        """Whether the object's centre of mass lies in a named position (half or quadrant)."""
        x0, y0, x1, y1 = (v * size for v in POSITIONS[position])
        return x0 <= self.cx < x1 and y0 <= self.cy < y1


@dataclass(frozen=True)
class Annotation:
    objects: tuple[FoundObject, ...]
    style: str


@dataclass
class AnnotatorConfig:
    """Thresholds of the classical annotator (tuned on rendered scenes, checked on generated ones)."""

    min_saturation: float = 70.0  # max(rgb) - min(rgb) above which a pixel belongs to an object
    min_area: int = 8  # components smaller than this (pixels) are noise
    stripe_contrast: float = 12.0  # std of the background's row profile above which it is striped


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees of float RGB pixels (..., 3)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return h * 60.0


# Hue (degrees) of each colour, computed from the palette so the two cannot drift apart.
_HUES = {name: float(_hue(np.array(rgb, dtype=np.float32))) for name, rgb in COLORS.items()}


def _nearest_colour(hues: np.ndarray) -> np.ndarray:
    names = list(_HUES)
    ref = np.array([_HUES[n] for n in names])
    d = np.abs(hues[..., None] - ref)
    d = np.minimum(d, 360 - d)
    return d.argmin(-1)


def _classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """Best template IoU over shapes fitted to the component's bounding box (stretched to its width and height,
    so that a slightly oblong square still reads as a square, not as the circle that fits inside it)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    pad = 2
    crop = np.pad(mask[y0:y1, x0:x1], pad)
    h, w = crop.shape
    gy, gx = np.mgrid[0:h, 0:w] + 0.5
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        for dr in (-0.5, -0.25, 0.0, 0.25, 0.5):
            rx, ry = max(w / 2 - pad + dr, 0.25), max(h / 2 - pad + dr, 0.25)  # a one-pixel line has half-width 0.5
            tpl = unit_shape(shape, (gx - w / 2) / rx, (gy - h / 2) / ry)
            iou = float((tpl & crop).sum() / max((tpl | crop).sum(), 1))
            if iou > best_iou:
                best, best_iou = shape, iou
    return best, best_iou


def annotate(image: np.ndarray, config: AnnotatorConfig | None = None) -> Annotation:
    """Find the objects and the background style of one (H, W, 3) uint8 image."""
    config = config or AnnotatorConfig()
    rgb = np.asarray(image, dtype=np.float32)
    saturation = rgb.max(-1) - rgb.min(-1)
    coloured = saturation > config.min_saturation
    colour_idx = _nearest_colour(_hue(rgb))
    names = list(_HUES)
    found: list[FoundObject] = []
    for ci, colour in enumerate(names):
        labels, n = ndimage.label(coloured & (colour_idx == ci))
        for k in range(1, n + 1):
            mask = labels == k
            if mask.sum() < config.min_area:
                continue
            mask = ndimage.binary_fill_holes(mask)
            shape, score = _classify_shape(mask)
            ys, xs = np.nonzero(mask)
            found.append(FoundObject(shape, colour, mask, float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, score))
    found.sort(key=lambda o: (o.cy, o.cx))
    return Annotation(tuple(found), _style(rgb, coloured, config))


def _style(rgb: np.ndarray, coloured: np.ndarray, config: AnnotatorConfig) -> str:
    near_object = ndimage.binary_dilation(coloured, iterations=1)
    grey = rgb.mean(-1)
    keep = ~near_object
    counts = keep.sum(1)
    rows = counts >= 3
    if rows.sum() < 4:
        return "plain"
    profile = (grey * keep).sum(1)[rows] / counts[rows]
    return "striped" if float(profile.std()) > config.stripe_contrast else "plain"
