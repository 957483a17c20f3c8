"""Presets: what each kind of atlas brings to the stages, by name. The one place that knows the shapes world.

    shapes  the embedded model, its captions (with their splits), its classical annotator
    sd14    Stable Diffusion v1.4 with the paper's settings, prompts from a file, Grounded-SAM

Kept free of heavy imports (the CLI reads the names at startup); each backend loads when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from atlas.errors import BadInputError

if TYPE_CHECKING:
    from atlas.annotate.base import Annotator


@dataclass(frozen=True)
class Preset:
    """Defaults of one kind of atlas; BuildConfig fields left at 0 / "" take these."""

    model: str
    n_images: int
    annotator: str
    blocks: tuple[str, ...] = ("down", "mid", "up")
    t: tuple[float, ...] = (1.0, 0.5, 0.0)
    prompts_needed: bool = False


PRESETS = {
    "shapes": Preset(model="shapes", n_images=640, annotator="shapes"),
    "sd14": Preset(model="sd14", n_images=1000, annotator="grounded-sam", prompts_needed=True),
}
ANNOTATOR_NAMES = ("shapes", "grounded-sam")


def _shapes_annotator(**options: object) -> Annotator:
    from atlas.shapes.backend import ShapesAnnotator

    return ShapesAnnotator(**options)


def _grounded_sam(**options: object) -> Annotator:
    from atlas.annotate.grounded_sam import GroundedSamAnnotator

    return GroundedSamAnnotator(**options)


_ANNOTATORS: dict[str, Callable[..., Annotator]] = {"shapes": _shapes_annotator, "grounded-sam": _grounded_sam}


def get_annotator(name: str, **options: object) -> Annotator:
    """The annotator backend called `name`, built with `options` (its constructor's keyword arguments)."""
    if name not in _ANNOTATORS:
        raise BadInputError(f"unknown annotator {name!r}; expected one of {', '.join(ANNOTATOR_NAMES)}")
    return _ANNOTATORS[name](**options)


def shapes_captions(n: int, split: str | None = None, seed: int = 0) -> list[str]:
    """Captions of the shapes world (a build's prompts when no prompt file is given)."""
    from atlas.shapes.world import captions

    return captions(n, split=split, seed=seed)
