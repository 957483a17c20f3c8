"""The shapes world: random scenes of coloured shapes, their captions, and their rendering.

A scene is ground truth: we know every object's shape, colour, position and mask, so every
measurement the atlas makes on the shapes model (layout IoU, edit success) can be checked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from atlas.capture.splits import split_of
from atlas.errors import BadInputError

SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
}
KINDS = tuple((shape, color) for shape in SHAPES for color in COLORS)
STYLES = ("plain", "striped")
DEFAULT_STYLE = "plain"
# Named positions and the box (x0, y0, x1, y1, as fractions of the image) an object's centre must fall in.
POSITIONS: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
    "top left": (0.0, 0.0, 0.5, 0.5),
    "top right": (0.5, 0.0, 1.0, 0.5),
    "bottom left": (0.0, 0.5, 0.5, 1.0),
    "bottom right": (0.5, 0.5, 1.0, 1.0),
}
POSITION_PHRASES = {p: ("on the " if p in ("left", "right") else "at the ") + p for p in POSITIONS}
PLAIN_BACKGROUND = (25, 25, 25)
STRIPE_COLORS = ((60, 60, 60), (115, 115, 115))
STRIPE_PERIOD = 4
SPLITS = ("train", "dictionary", "test")


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene: centre (cx, cy) and half-size r are in pixels."""

    shape: str
    color: str
    cx: float
    cy: float
    r: float
    position: str | None = None  # the named position, when the caption names one

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    style: str = DEFAULT_STYLE
    style_named: bool = True
    size: int = 32

    @property
    def caption(self) -> str:
        return caption_of(self)


# Most objects one 32 x 32 scene can place apart at the default sizes (half-size >= 4.5, gap 2): five never fit
# (0 of 20,000 draws), so a world asking for five would redraw forever.
MAX_OBJECTS = 4


@dataclass
class WorldConfig:
    """How scenes are drawn. The defaults are the world the shipped shapes model was trained on."""

    size: int = 32
    max_objects: int = 3
    min_half_size: float = 4.5
    max_half_size: float = 6.5
    p_named_positions: float = 0.5
    p_named_style: float = 0.5
    p_striped: float = 0.5
    gap: float = 2.0
    weights_n_objects: tuple[float, ...] = field(default=(0.4, 0.35, 0.25))
    shared_colour_fraction: float | None = None
    """Of the scenes with two or more objects, the fraction in which two objects share a colour (None: as
    chance has it, about 2 in 11 two-object scenes)."""

    def __post_init__(self) -> None:
        if self.max_objects > MAX_OBJECTS:
            raise BadInputError(f"a scene holds at most {MAX_OBJECTS} objects, not {self.max_objects}: give at most "
                                f"{MAX_OBJECTS} object-count weights, e.g. 0.4,0.35,0.25")


def caption_of(scene: Scene) -> str:
    """Plain English for a scene, e.g. 'a red circle on the left and a blue square on a striped background'."""
    parts = []
    for obj in scene.objects:
        text = f"a {obj.color} {obj.shape}"
        if obj.position is not None:
            text += " " + POSITION_PHRASES[obj.position]
        parts.append(text)
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if scene.style_named:
        text += f" on a {scene.style} background"
    return text


def _inside(box: tuple[float, float, float, float], size: int, r: float, rng: random.Random) -> tuple[float, float]:
    margin = 0.06 * size  # keep centres clearly inside the named half / quadrant
    x0, y0, x1, y1 = (v * size for v in box)
    lo_x, hi_x = max(x0 + (margin if x0 > 0 else 0), r), min(x1 - (margin if x1 < size else 0), size - r)
    lo_y, hi_y = max(y0 + (margin if y0 > 0 else 0), r), min(y1 - (margin if y1 < size else 0), size - r)
    return rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)


def random_scene(rng: random.Random, config: WorldConfig | None = None, split: str | None = None) -> Scene:
    """Draw a random scene; with `split`, redraw until its caption belongs to that split."""
    config = config or WorldConfig()
    while True:
        scene = _draw_scene(rng, config)
        if scene is not None and (split is None or split_of(scene.caption) == split):
            return scene


def _draw_scene(rng: random.Random, config: WorldConfig) -> Scene | None:
    n = rng.choices(range(1, config.max_objects + 1), weights=config.weights_n_objects[: config.max_objects])[0]
    kinds = _draw_kinds(rng, n, config.shared_colour_fraction)
    named = rng.random() < config.p_named_positions
    positions = rng.sample(list(POSITIONS), n) if named else [None] * n
    objects: list[ShapeObject] = []
    for (shape, color), pos in zip(kinds, positions):
        for _ in range(50):
            r = rng.uniform(config.min_half_size, config.max_half_size)
            box = POSITIONS[pos] if pos else (0.0, 0.0, 1.0, 1.0)
            cx, cy = _inside(box, config.size, r, rng)
            if all(_boxes_apart((cx, cy, r), (o.cx, o.cy, o.r), config.gap) for o in objects):
                objects.append(ShapeObject(shape, color, cx, cy, r, pos))
                break
        else:
            return None
    style_named = rng.random() < config.p_named_style
    style = ("striped" if rng.random() < config.p_striped else "plain") if style_named else DEFAULT_STYLE
    return Scene(tuple(objects), style, style_named, config.size)


def _draw_kinds(rng: random.Random, n: int, shared_colour_fraction: float | None) -> list[tuple[str, str]]:
    """`n` distinct (shape, colour) pairs; with a fraction, some colour repeats in that share of the draws."""
    kinds = rng.sample(KINDS, n)
    if n < 2 or shared_colour_fraction is None:
        return kinds
    want_shared = rng.random() < shared_colour_fraction
    while (len({c for _, c in kinds}) < n) != want_shared:
        kinds = rng.sample(KINDS, n)
    return kinds


def _boxes_apart(a: tuple[float, float, float], b: tuple[float, float, float], gap: float) -> bool:
    (ax, ay, ar), (bx, by, br) = a, b
    return abs(ax - bx) >= ar + br + gap or abs(ay - by) >= ar + br + gap


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean mask of one filled shape, sampled at pixel centres."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    return unit_shape(shape, (xs - cx) / r, (ys - cy) / r)


def unit_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v), in half-sizes from the centre (v down), lie inside a shape; scaling u and v apart
    gives the shape stretched to any box."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":  # apex up, base at the bottom of the box
        return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    raise BadInputError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def background(style: str, size: int) -> np.ndarray:
    img = np.empty((size, size, 3), dtype=np.uint8)
    if style == "plain":
        img[:] = PLAIN_BACKGROUND
    elif style == "striped":
        rows = (np.arange(size) // (STRIPE_PERIOD // 2)) % 2
        img[:] = np.asarray(STRIPE_COLORS, dtype=np.uint8)[rows][:, None, :]
    else:
        raise BadInputError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    return img


def render(scene: Scene) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render a scene to an (H, W, 3) uint8 image and one boolean mask per object."""
    img = background(scene.style, scene.size)
    masks = []
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.cx, obj.cy, obj.r, scene.size)
        img[mask] = COLORS[obj.color]
        masks.append(mask)
    return img, masks


def captions(n: int, split: str | None = "train", seed: int = 0, config: WorldConfig | None = None) -> list[str]:
    """`n` random captions of one split (None: of all splits, in their natural 80/10/10 mix), from `seed`."""
    rng = random.Random(f"{split}-{seed}")
    return [random_scene(rng, config, split).caption for _ in range(n)]
