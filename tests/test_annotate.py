"""Annotation interface: grid pooling golden values, the shapes backend against rendered ground truth, prompt nouns."""

from __future__ import annotations

import random

import numpy as np
import pytest

from atlas.annotate.base import Annotator, ObjectAnnotation
from atlas.annotate.nouns import prompt_nouns
from atlas.errors import BadInputError
from atlas.grids import grid_coverage, mask_to_grid
from atlas.pipeline.presets import ANNOTATOR_NAMES, get_annotator
from atlas.shapes.world import random_scene, render

# 4x4 mask -> 2x2 grid: top-left cell full, top-right 1/4, bottom-left 1/2, bottom-right empty.
MASK_4X4 = np.array([
    [1, 1, 0, 1],
    [1, 1, 0, 0],
    [1, 0, 0, 0],
    [0, 1, 0, 0],
], dtype=bool)


def test_grid_coverage_golden_2x2():
    np.testing.assert_allclose(grid_coverage(MASK_4X4, (2, 2)), [[1.0, 0.25], [0.5, 0.0]])
    assert grid_coverage(MASK_4X4, (2, 2)).dtype == np.float32


def test_mask_to_grid_threshold_edges():
    assert mask_to_grid(MASK_4X4, (2, 2)).tolist() == [[True, False], [True, False]]  # exactly half counts
    assert mask_to_grid(MASK_4X4, (2, 2), threshold=0.25).tolist() == [[True, True], [True, False]]
    assert mask_to_grid(MASK_4X4, (2, 2), threshold=0.26).tolist() == [[True, False], [True, False]]
    assert mask_to_grid(MASK_4X4, (2, 2), threshold=1.0).tolist() == [[True, False], [False, False]]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(BadInputError, match="threshold"):
            mask_to_grid(MASK_4X4, (2, 2), threshold=bad)


def test_grid_coverage_uneven_cells_batches_and_identity():
    # 3 pixels into 2 cells of 1.5 pixels: cell 0 = pixel 0 + half of pixel 1, cell 1 = half of pixel 1 + pixel 2.
    np.testing.assert_allclose(grid_coverage(np.array([[1, 1, 0]], dtype=bool), (1, 2)), [[1.0, 1 / 3]], rtol=1e-6)
    np.testing.assert_allclose(grid_coverage(np.array([[0, 1, 0]], dtype=bool), (1, 2)), [[1 / 3, 1 / 3]], rtol=1e-6)
    batch = np.stack([MASK_4X4, ~MASK_4X4])
    cov = grid_coverage(batch, (2, 2))
    assert cov.shape == (2, 2, 2)
    np.testing.assert_allclose(cov[0] + cov[1], np.ones((2, 2)))
    np.testing.assert_array_equal(grid_coverage(MASK_4X4, (4, 4)), MASK_4X4.astype(np.float32))


def test_grid_coverage_of_a_512_image_at_sd_grids():
    mask = np.zeros((512, 512), dtype=bool)
    mask[:256, 256:] = True  # top-right quadrant
    mask[300:316, 0:16] = True  # a 16x16 patch: half of one 32x32 cell at 16x16
    cov16 = grid_coverage(mask, (16, 16))
    assert cov16[:8, 8:].min() == 1.0 and cov16[9, 0] == 0.25 and cov16.sum() == pytest.approx(64 + 0.25)
    grid8 = mask_to_grid(mask, (8, 8))
    assert grid8[:4, 4:].all() and grid8.sum() == 16


def test_unknown_annotator_lists_valid_names():
    with pytest.raises(BadInputError, match="shapes, grounded-sam"):
        get_annotator("sam3")
    assert ANNOTATOR_NAMES == ("shapes", "grounded-sam")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_shapes_backend_matches_rendered_ground_truth():
    annotator = get_annotator("shapes")
    assert isinstance(annotator, Annotator) and annotator.name == "shapes"
    rng = random.Random(5)
    scenes = [random_scene(rng) for _ in range(150)]
    rendered = [render(s) for s in scenes]
    results = annotator.annotate([img for img, _ in rendered], [s.caption for s in scenes])
    assert len(results) == len(scenes)
    n_objects = good = 0
    for scene, (img, masks), objects in zip(scenes, rendered, results):
        assert all(isinstance(o, ObjectAnnotation) and o.mask.dtype == bool and o.mask.shape == img.shape[:2]
                   for o in objects)
        backgrounds = [o for o in objects if o.label.endswith(" background")]
        assert [b.label for b in backgrounds] == [f"{scene.style} background"] and backgrounds[0].score == 1.0
        shapes = [o for o in objects if o not in backgrounds]
        union = np.logical_or.reduce([o.mask for o in shapes]) if shapes else np.zeros(img.shape[:2], bool)
        np.testing.assert_array_equal(backgrounds[0].mask, ~union)
        for obj, mask in zip(scene.objects, masks):
            n_objects += 1
            same = [o for o in shapes if o.label == obj.label]
            good += bool(same) and max(_iou(o.mask, mask) for o in same) >= 0.95
        for o in shapes:
            x0, y0, x1, y1 = o.box
            ys, xs = np.nonzero(o.mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert good / n_objects >= 0.98, f"{good}/{n_objects} objects found with the right label and mask IoU >= 0.95"


def test_shapes_backend_rejects_mismatched_batches():
    img, _ = render(random_scene(random.Random(0)))
    with pytest.raises(BadInputError, match="1 images but 2 prompts"):
        get_annotator("shapes").annotate([img], ["a", "b"])
    with pytest.raises(BadInputError, match="uint8"):
        get_annotator("shapes").annotate([img.astype(np.float32)], ["a"])


@pytest.mark.parametrize("prompt, nouns", [
    ("a dog and a red car", ["dog", "red car"]),
    ("a red circle on the left and a blue square on a striped background",
     ["red circle", "blue square", "striped background"]),
    ("A photo of two cats, a tall building and the sky at sunset.", ["cats", "tall building", "sky", "sunset"]),
    ("a man riding a horse next to a river", ["man", "horse", "river"]),
    ("a green triangle at the top right", ["green triangle"]),
    ("an astronaut with 3 balloons in the style of a painting", ["astronaut", "balloons", "painting"]),
    ("a dog and a dog", ["dog"]),
    ("the left", []),
    ("", []),
])
def test_prompt_nouns_golden(prompt, nouns):
    assert prompt_nouns(prompt) == nouns
