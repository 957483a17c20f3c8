"""Which judge decides the edits of an atlas (the edit stage's protocol, atlas.edit.judge.Judge), and which annotator
finds the objects an added object leaves alone (`finder_for`):

    an atlas of the shapes model   the shapes world's rules (atlas.shapes.judge) on its classical annotator
    any other atlas                AtlasJudge on the annotator that built the atlas (the source of its objects),
                                   with CLIP for style edits (loaded when first needed)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from atlas.edit.config import CLIP_MODEL, CLIP_WEIGHTS
from atlas.edit.judge import AtlasJudge, Finder, Judge, Verdict, in_region, verdict
from atlas.edit.scores import load_clip
from atlas.pipeline.presets import SHAPES_MODELS, recorded_annotator
from atlas.shapes import judge as shapes
from atlas.shapes.annotator import Annotation, FoundObject, annotate
from atlas.store import Atlas


class ShapesJudge:
    """The shapes world's judge behind the protocol: spatial edits need no new objects, style edits need every
    object to stay (atlas.shapes.judge), add edits need a new object of the target's label with its centre in the
    region, every object of the unedited image staying and nothing else new; the verdict adds the locality and
    whether the other objects stayed."""

    name = "the shapes world's annotator"

    def ready(self, kind: str) -> None:
        """Needs no model."""

    def __call__(self, original: np.ndarray, edited: np.ndarray, kind: str, target: str,
                 region: np.ndarray | None, prompt: str) -> Verdict | None:
        before, after = annotate(original), annotate(edited)
        if kind == "add":
            return self.added(original, edited, before, after, target, region)
        if kind == "spatial":
            if region is None:
                return None
            others = [o for o in before.objects if o.label != target]
            moved = shapes.main_object(after, target)
            centre = {} if moved is None else {"centre_x": moved.cx, "centre_y": moved.cy}
            return verdict(original, edited, shapes.centre_in(after, target, region),
                           shapes.centre_in(before, target, region), shapes.no_new_objects(before, after),
                           shapes.objects_stay(others, after) if others else None, region, **centre)
        style = shapes.style_of(target)
        if style is None:
            return None
        stay = shapes.objects_stay(before.objects, after)
        covered = np.zeros(original.shape[:2], bool)
        for o in before.objects:
            covered |= o.mask
        return verdict(original, edited, after.style == style, before.style == style, stay,
                       stay if before.objects else None, ~covered)


    @staticmethod
    def added(original: np.ndarray, edited: np.ndarray, before: Annotation, after: Annotation, target: str,
              region: np.ndarray | None) -> Verdict:
        region = np.ones(original.shape[:2], bool) if region is None else region
        new = [o for o in added_objects(before, after) if o.label == target]
        inside = [o for o in new if in_region((o.cx, o.cy), region)]
        found = max(inside or new, key=lambda o: int(o.mask.sum()), default=None)
        stay = shapes.objects_stay(before.objects, after)
        intact = len(after.objects) <= len(before.objects) + 1 and stay
        centre = {} if found is None else {"centre_x": found.cx, "centre_y": found.cy}
        return verdict(original, edited, bool(inside), shapes.centre_in(before, target, region), intact,
                       stay if before.objects else None, region, **centre)


def added_objects(before: Annotation, after: Annotation) -> list[FoundObject]:
    """The objects of `after` with no same-label object of `before` within STAY_PX: what an edit added."""
    return [o for o in after.objects if not shapes.objects_stay([o], before)]


def atlas_annotator(store: Atlas) -> str | None:
    """The annotator that found the atlas's objects (the one that found most, if several did), None before any."""
    rows = store.query("SELECT source, count(*) AS n FROM objects GROUP BY source ORDER BY n DESC, source LIMIT 1")
    return rows.to_pylist()[0]["source"] if rows.num_rows else None


def shapes_objects(image: np.ndarray, prompt: str) -> list[tuple[str, np.ndarray]]:
    """The shapes world's annotator as a Finder."""
    return [(o.label, o.mask) for o in annotate(image).objects]


def is_shapes_atlas(store: Atlas) -> bool:
    """Whether the atlas's model draws the shapes world (the U-Net or the DiT), so its world's captions, annotator
    and judge apply."""
    return store.model()["name"] in SHAPES_MODELS


def finder_for(store: Atlas) -> Finder | None:
    """The annotator that finds an image's objects for the atlas's edits (an added object leaves them alone): the
    shapes world's for a shapes atlas, else the one that built the atlas (None before any annotation)."""
    if is_shapes_atlas(store):
        return shapes_objects
    name = atlas_annotator(store)
    return None if name is None else annotator_finder(name, str(store.root.resolve()))


@lru_cache(maxsize=4)
def annotator_finder(annotator: str, atlas_dir: str) -> Finder:
    """The annotator called `annotator`, with the options it annotated the atlas at `atlas_dir` with, as a Finder
    (kept, with its models, for the next edit of this process)."""
    backend = recorded_annotator(annotator, atlas_dir)

    def find(image: np.ndarray, prompt: str) -> list[tuple[str, np.ndarray]]:
        return [(o.label, o.mask) for o in backend.annotate([image], [prompt])[0]]

    return find


def judge_for(store: Atlas, clip_model: str = CLIP_MODEL, clip_weights: str = CLIP_WEIGHTS) -> Judge | None:
    """The judge of the atlas's edits, or None when the atlas has no annotated objects (nothing to judge by).
    Building it loads the annotator; a missing model raises its one-line UnavailableError."""
    if is_shapes_atlas(store):
        return ShapesJudge()
    name = atlas_annotator(store)
    return None if name is None else annotator_judge(name, str(store.root.resolve()), clip_model, clip_weights)


@lru_cache(maxsize=4)
def annotator_judge(annotator: str, atlas_dir: str, clip_model: str = CLIP_MODEL,
                    clip_weights: str = CLIP_WEIGHTS) -> AtlasJudge:
    """AtlasJudge on the annotator called `annotator`, with the options it annotated the atlas at `atlas_dir` with
    (kept, with its models, for the next edit of this process)."""
    return AtlasJudge(annotator_finder(annotator, atlas_dir), f"the {annotator} annotator (style: CLIP {clip_model})",
                      clip=lambda: load_clip(clip_model, clip_weights))
