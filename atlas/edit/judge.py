"""Judging an edit: did it do what it asked, and what else did it change? The protocol every judge follows and
the judge that works on any atlas (`AtlasJudge`: the atlas's own annotator, and CLIP for style edits).

    spatial  reached = the centre of mass of the pixels the annotator labels `target` lies in the region (the
             paper's criterion: the object's centre of mass lands in the target quadrant)
    style    reached = the CLIP similarity of the image to the target's words rises from the unedited image to
             the edited one (the paper's criterion)
    add      reached = the centre of mass of the target's new pixels (labelled `target` in the edited image, not in
             the unedited one) lies in the region (anywhere for an add edit without one)
    intact   the annotator finds no more objects than in the unedited image (one more for an add edit: the added
             object), and every other object stays (its label is still found, its centre within STAY_FRACTION of
             the image side; for an add edit every object of the unedited image is an other object)
    success  reached in an intact image: a success that ruins the image counts as a failure

Every verdict also says where the pixels changed (`locality`): inside the edit's region and outside it (a style
edit's region is everything but the unedited image's other objects, which it should leave alone).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from atlas.errors import UnavailableError

Finder = Callable[[np.ndarray, str], list[tuple[str, np.ndarray]]]
"""The objects of one image generated from a prompt, as (label, (H, W) bool mask) pairs: the pipeline wraps the
atlas's annotator in one."""

STAY_FRACTION = 0.1
"""How far (a fraction of the image side) another object's centre may drift and still count as staying."""


class JudgeUnavailable(UnavailableError):
    """A judge's model or package is not on this machine; the message (one line) says what to get and where."""


class StyleScorer(Protocol):
    """Similarity of images to a text (atlas.edit.scores.ClipScorer is one)."""

    def similarity(self, images: Sequence[np.ndarray], text: str) -> np.ndarray: ...


@dataclass
class Verdict:
    """How one edit went."""

    success: bool
    """The target was reached and the image stayed intact."""
    reached: bool
    """The target alone (the paper's criterion), whatever happened to the rest of the image."""
    before: bool | None
    """Whether the unedited image already met the target (None: the judge cannot tell from one image)."""
    intact: bool
    """The judge's no-damage rule held (see the judge)."""
    others_stay: bool | None
    """Every other object of the unedited image is still there (None: it had no other object)."""
    change_in: float | None
    """Mean absolute pixel change (0-1) inside the edit's region (None: the region is empty)."""
    change_out: float | None
    """The same outside the region (None: nothing lies outside)."""
    values: dict[str, float] = field(default_factory=dict)
    """The judge's own numbers: the target's centre (x, y pixels), the CLIP similarities."""


class Judge(Protocol):
    """Decides one edit: `kind` spatial (move `target` into `region`, an (H, W) bool mask of the image), global
    (give the image the `target` style) or add (put a `target` the image lacks into `region`, None: anywhere); None
    when it cannot tell (a spatial edit without a region)."""

    name: str
    """Who judges, for the tables ("the shapes world's annotator")."""

    def ready(self, kind: str) -> None:
        """Load what judging `kind` needs now, so that a missing model fails before any image is generated."""

    def __call__(self, original: np.ndarray, edited: np.ndarray, kind: str, target: str,
                 region: np.ndarray | None, prompt: str) -> Verdict | None: ...


def locality(original: np.ndarray, edited: np.ndarray, inside: np.ndarray) -> tuple[float | None, float | None]:
    """Mean absolute pixel change (0-1, over pixels and channels) inside the (H, W) bool mask and outside it; None
    for a side without pixels."""
    change = np.abs(original.astype(np.float32) - edited.astype(np.float32)).mean(-1) / 255.0
    inside = np.asarray(inside, bool)
    return tuple(float(change[side].mean()) if side.any() else None for side in (inside, ~inside))


def verdict(original: np.ndarray, edited: np.ndarray, reached: bool, before: bool | None, intact: bool,
            others_stay: bool | None, inside: np.ndarray, **values: float) -> Verdict:
    """A Verdict with its locality: success = reached and intact."""
    change_in, change_out = locality(original, edited, inside)
    return Verdict(bool(reached and intact), bool(reached), before, bool(intact), others_stay, change_in, change_out,
                   {k: float(v) for k, v in values.items()})


def centre_of_mass(mask: np.ndarray) -> tuple[float, float] | None:
    """(x, y) in pixels of a mask's centre of mass (pixel (0, 0) spans [0, 1) x [0, 1)); None for an empty mask."""
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)


def in_region(centre: tuple[float, float] | None, region: np.ndarray) -> bool:
    """Whether a centre (x, y) lies in the pixel of the (H, W) bool region that holds it."""
    if centre is None:
        return False
    row, col = min(int(centre[1]), region.shape[0] - 1), min(int(centre[0]), region.shape[1] - 1)
    return bool(region[row, col])


def label_mask(found: list[tuple[str, np.ndarray]], label: str, shape: tuple[int, int]) -> np.ndarray:
    """Every pixel labelled `label` (any case): one object the annotator split into pieces keeps one centre."""
    mask = np.zeros(shape, bool)
    for name, m in found:
        if name.strip().lower() == label.strip().lower():
            mask |= np.asarray(m, bool)
    return mask


def head_noun(label: str) -> str:
    """The last word of a label ("striped background" -> "background"): what a style edit restyles."""
    words = label.strip().lower().split()
    return words[-1] if words else ""


class AtlasJudge:
    """The judge of any atlas: `find` (the atlas's annotator) locates objects, `clip` (loaded on first use)
    scores styles. Spatial edits by the centre of the target's pixels, style edits by CLIP similarity (see the
    module); both need an intact image. The annotations and scores of the last `keep` unedited images are kept,
    so a sweep that edits one image many times annotates it once."""

    def __init__(self, find: Finder, name: str, clip: Callable[[], StyleScorer] | None = None,
                 keep: int = 32) -> None:
        self.find, self.name, self._load_clip, self.keep = find, name, clip, keep
        self._clip: StyleScorer | None = None
        self._kept: dict[tuple, object] = {}

    def ready(self, kind: str) -> None:
        if kind != "spatial":
            self.clip()

    def clip(self) -> StyleScorer:
        if self._clip is None:
            if self._load_clip is None:
                raise JudgeUnavailable(f"{self.name} has no style scorer: give the judge a CLIP model")
            self._clip = self._load_clip()
        return self._clip

    def _memo(self, key: tuple, compute: Callable[[], object]) -> object:
        if key not in self._kept:
            if len(self._kept) >= self.keep:
                self._kept.pop(next(iter(self._kept)))
            self._kept[key] = compute()
        return self._kept[key]

    def _unedited(self, image: np.ndarray, prompt: str) -> list[tuple[str, np.ndarray]]:
        return self._memo(("find", _digest(image), prompt), lambda: self.find(image, prompt))

    def _unedited_similarity(self, image: np.ndarray, text: str) -> float:
        return self._memo(("clip", _digest(image), text), lambda: self._similarity(image, text))

    def _similarity(self, image: np.ndarray, text: str) -> float:
        return float(self.clip().similarity([image], text)[0])

    def __call__(self, original: np.ndarray, edited: np.ndarray, kind: str, target: str,
                 region: np.ndarray | None, prompt: str) -> Verdict | None:
        if kind == "spatial" and region is None:
            return None
        shape = original.shape[:2]
        before, after = self._unedited(original, prompt), self.find(edited, prompt)
        if kind == "spatial":
            others = {name for name, _ in before if name.strip().lower() != target.strip().lower()}
        elif kind == "add":
            others = {name for name, _ in before}
        else:
            others = {name for name, _ in before if head_noun(name) != head_noun(target)}
        side = STAY_FRACTION * max(shape)
        stays = [_moved(label_mask(before, name, shape), label_mask(after, name, shape)) <= side for name in others]
        others_stay = all(stays) if stays else None
        intact = len(after) <= len(before) + (kind == "add") and others_stay is not False
        if kind == "add":
            region = np.ones(shape, bool) if region is None else region
            had = label_mask(before, target, shape)
            now = centre_of_mass(label_mask(after, target, shape) & ~had)
            centre = {} if now is None else {"centre_x": now[0], "centre_y": now[1]}
            return verdict(original, edited, in_region(now, region), in_region(centre_of_mass(had), region), intact,
                           others_stay, region, **centre)
        if kind == "spatial":
            was, now = (centre_of_mass(label_mask(found, target, shape)) for found in (before, after))
            centre = {} if now is None else {"centre_x": now[0], "centre_y": now[1]}
            return verdict(original, edited, in_region(now, region), in_region(was, region), intact, others_stay,
                           region, **centre)
        kept = np.zeros(shape, bool)
        for name in others:
            kept |= label_mask(before, name, shape)
        was, now = self._unedited_similarity(original, target), self._similarity(edited, target)
        return verdict(original, edited, now > was, None, intact, others_stay, ~kept, clip_before=was, clip_after=now)


def _moved(before: np.ndarray, after: np.ndarray) -> float:
    """How far the centre of a label's pixels moved (infinite when the label is gone)."""
    was, now = centre_of_mass(before), centre_of_mass(after)
    return float("inf") if was is None or now is None else float(np.hypot(now[0] - was[0], now[1] - was[1]))


def _digest(image: np.ndarray) -> tuple:
    return image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
