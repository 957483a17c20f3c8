"""The shapes world: scenes, captions, splits and rendering."""

from __future__ import annotations

import random

import numpy as np
import pytest

from atlas.errors import BadInputError
from atlas.shapes.world import (
    COLORS,
    POSITIONS,
    STYLES,
    Scene,
    ShapeObject,
    WorldConfig,
    background,
    caption_of,
    captions,
    random_scene,
    render,
    shape_mask,
    split_of,
)


def test_captions_read_as_plain_english():
    objects = (ShapeObject("circle", "red", 8, 16, 5, "left"), ShapeObject("square", "blue", 24, 8, 5, "top right"))
    scene = Scene(objects, "striped", True)
    assert caption_of(scene) == "a red circle on the left and a blue square at the top right on a striped background"
    three = Scene(tuple(ShapeObject(s, c, 0, 0, 5) for s, c in [("circle", "red"), ("square", "blue"),
                                                                ("triangle", "green")]), "plain", False)
    assert caption_of(three) == "a red circle, a blue square and a green triangle"


def test_scenes_respect_their_named_positions_and_never_overlap():
    rng = random.Random(0)
    named = 0
    for _ in range(500):
        scene = random_scene(rng)
        assert 1 <= len(scene.objects) <= 3
        assert len({o.label for o in scene.objects}) == len(scene.objects)
        _, masks = render(scene)
        total = np.sum(masks, axis=0)
        assert total.max() == 1  # no two objects share a pixel
        for obj, mask in zip(scene.objects, masks):
            assert mask.sum() > 20
            if obj.position:
                named += 1
                x0, y0, x1, y1 = (v * scene.size for v in POSITIONS[obj.position])
                assert x0 <= obj.cx < x1 and y0 <= obj.cy < y1
    assert 0.3 < named / 500 / 1.85 < 0.7  # about half of the captions name positions (1.85 objects on average)


def test_splits_are_deterministic_and_disjoint():
    assert split_of("a red circle") == split_of("a red circle")
    train = set(captions(300, "train", seed=1))
    test = set(captions(100, "test", seed=1))
    assert train.isdisjoint(test)
    assert all(split_of(c) == "test" for c in test)
    assert captions(5, "train", seed=2) == captions(5, "train", seed=2)
    counts = {s: 0 for s in ("train", "dictionary", "test")}
    rng = random.Random(3)
    for _ in range(2000):
        counts[split_of(random_scene(rng).caption)] += 1
    assert 0.7 < counts["train"] / 2000 < 0.9 and counts["test"] > 100


def test_rendering_draws_the_palette_and_the_style():
    scene = Scene((ShapeObject("square", "yellow", 16, 16, 5),), "striped", True)
    img, (mask,) = render(scene)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (img[mask] == COLORS["yellow"]).all()
    assert len({tuple(p) for p in img[~mask]}) == 2  # two stripe colours
    assert len({tuple(p) for p in background("plain", 32).reshape(-1, 3)}) == 1
    assert set(STYLES) == {"plain", "striped"}


def test_shape_masks_have_the_expected_areas():
    size, r = 64, 10.0
    area = {s: shape_mask(s, 32, 32, r, size).sum() / (2 * r) ** 2 for s in ("circle", "square", "triangle")}
    assert area["circle"] == pytest.approx(np.pi / 4, abs=0.03)
    assert area["square"] == pytest.approx(1.0, abs=0.12)
    assert area["triangle"] == pytest.approx(0.5, abs=0.06)
    with pytest.raises(BadInputError, match="unknown shape"):
        shape_mask("star", 1, 1, 1, 8)


def test_world_config_limits_objects():
    rng = random.Random(4)
    config = WorldConfig(max_objects=1, weights_n_objects=(1.0,))
    assert all(len(random_scene(rng, config).objects) == 1 for _ in range(50))
    with pytest.raises(BadInputError, match="at most 4 objects, not 5"):
        WorldConfig(max_objects=5, weights_n_objects=(0, 0, 0, 0, 1))  # five never fit: drawing would never return
