"""PNG pictures drawn on the server (PIL + a matplotlib colormap): no JavaScript plotting needed.

Activation maps live on the SAE's coarse grid (4x4 to 16x16); they are upscaled with nearest
neighbour so each cell stays visibly one cell, and blended over the image with an opacity that grows
with the activation, so silent cells leave the image untouched.
"""

from __future__ import annotations

import io
import threading

import numpy as np
from matplotlib import colormaps
from PIL import Image

MIN_SIDE = 128
MAX_SIDE = 512
COLORMAP = colormaps["inferno"]
OPACITY = 0.85
"""How opaque a heatmap cell at full colour is drawn by default (the concept page's slider changes it)."""
_PLOTTING = threading.Lock()  # matplotlib's text rendering is not thread-safe, and the server renders in threads


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def display_size(image: Image.Image, size: int | None = None) -> int:
    """The side of a rendering: `size` when given, else the image's own, at least MIN_SIDE (crisp when scaled)."""
    side = size or max(image.size)
    return int(min(MAX_SIDE, max(MIN_SIDE if size is None else 16, side)))


def heatmap(image: Image.Image, amap: np.ndarray, vmax: float | None = None, size: int | None = None,
            opacity: float = OPACITY) -> Image.Image:
    """The image with the activation map blended over it; values are divided by `vmax` (default the map's max), and
    a cell at full colour is drawn at `opacity` (0 leaves the image as it is)."""
    side = display_size(image, size)
    base = image.convert("RGB").resize((side, side), Image.NEAREST)
    top = float(vmax) if vmax and np.isfinite(vmax) and vmax > 0 else float(np.max(amap, initial=0.0))
    level = np.clip(np.asarray(amap, np.float32) / top, 0.0, 1.0) if top > 0 else np.zeros_like(amap, np.float32)
    colour = (COLORMAP(level)[..., :3] * 255).astype(np.uint8)
    alpha = (np.sqrt(level) * float(np.clip(opacity, 0.0, 1.0)) * 255).astype(np.uint8)
    layer = Image.fromarray(np.dstack([colour, alpha]), "RGBA").resize((side, side), Image.NEAREST)
    out = base.convert("RGBA")
    out.alpha_composite(layer)
    return out.convert("RGB")


def mask_overlay(image: Image.Image, mask: Image.Image, size: int | None = None,
                 colour: tuple[int, int, int] = (0, 200, 255)) -> Image.Image:
    """The image with an object's mask tinted and everything else dimmed."""
    side = display_size(image, size)
    base = np.asarray(image.convert("RGB").resize((side, side), Image.NEAREST), np.float32)
    inside = np.asarray(mask.convert("L").resize((side, side), Image.NEAREST)) >= 128
    tint = np.where(inside[..., None], 0.6 * base + 0.4 * np.array(colour, np.float32), 0.35 * base)
    return Image.fromarray(tint.astype(np.uint8))


def scaled(image: Image.Image, size: int | None = None) -> Image.Image:
    side = display_size(image, size)
    return image.convert("RGB").resize((side, side), Image.NEAREST)


def histogram_png(counts: list[int], edges: list[float], width: int = 360, height: int = 140) -> bytes:
    """A bar chart of an activation histogram with its value range on the x axis."""
    from matplotlib.figure import Figure

    with _PLOTTING:
        figure = Figure(figsize=(width / 100, height / 100), dpi=100)
        axes = figure.add_subplot()
        if counts:
            axes.stairs(counts, edges, fill=True, color="#2451b3")
        axes.set_xlabel("activation")
        axes.set_ylabel("positions")
        axes.tick_params(labelsize=7)
        figure.tight_layout(pad=0.3)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    return buffer.getvalue()
