"""Pictures people can look at: labelled image grids and heatmap overlays (PNG)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from atlas.errors import BadInputError


def image_grid(images: Sequence[np.ndarray] | np.ndarray, labels: Sequence[str] | None = None, cols: int = 8,
               cell: int = 128, label_lines: int = 3, title: Sequence[str] = ()) -> Image.Image:
    """Tile uint8 (H, W, 3) images into one picture, each upscaled to `cell` px with its label below, under the
    lines of `title`."""
    images = list(images)
    if not images:
        raise BadInputError("no images to put in a grid")
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    font = ImageFont.load_default()
    line_h = 11
    chars = max(8, cell // 6)
    label_h = label_lines * line_h + 4 if labels else 0
    top = len(title) * line_h + 6 if title else 0
    canvas = Image.new("RGB", (cols * cell, top + rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, line in enumerate(title):
        draw.text((4, 3 + j * line_h), line, fill="black", font=font)
    for i, img in enumerate(images):
        x, y = (i % cols) * cell, top + (i // cols) * (cell + label_h)
        canvas.paste(Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((cell, cell), Image.NEAREST), (x, y))
        if labels:
            lines = textwrap.wrap(labels[i], chars)[:label_lines]
            for j, line in enumerate(lines):
                draw.text((x + 2, y + cell + 2 + j * line_h), line, fill="black", font=font)
    return canvas


def heat_overlay(image: np.ndarray, heat: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """The image tinted orange by a grid activation map (scaled to its own peak), a region's border drawn white."""
    size = image.shape[0]
    peak = float(heat.max())
    scaled = heat / peak if peak > 0 else heat
    big = np.kron(scaled, np.ones((size // heat.shape[0], size // heat.shape[1])))[..., None]
    tile = (image * (0.3 + 0.7 * big) + np.array([255, 90, 0]) * 0.6 * big).clip(0, 255).astype(np.uint8)
    if region is not None:
        from scipy import ndimage

        tile[region & ~ndimage.binary_erosion(region)] = 255
    return tile
