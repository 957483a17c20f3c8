"""The classical annotator against rendered ground truth (target: >= 0.98 on every attribute)."""

from __future__ import annotations

import random

import numpy as np

from atlas.shapes.annotator import Annotation, FoundObject, annotate
from atlas.shapes.evaluate import BARS, score
from atlas.shapes.world import Scene, ShapeObject, random_scene, render


def _match(scene: Scene, ann: Annotation) -> dict[str, float]:
    """Per-attribute accuracy of one image: each true object is paired with the found object nearest to it."""
    out = {"shape": 0, "colour": 0, "position": 0, "mask_iou": 0.0}
    _, masks = render(scene)
    for obj, mask in zip(scene.objects, masks):
        if not ann.objects:
            continue
        near = min(ann.objects, key=lambda f: np.hypot(f.cx - obj.cx, f.cy - obj.cy))
        out["shape"] += near.shape == obj.shape
        out["colour"] += near.color == obj.color
        ys, xs = np.nonzero(mask)
        out["position"] += abs(near.cx - xs.mean() - 0.5) < 0.5 and abs(near.cy - ys.mean() - 0.5) < 0.5
        out["mask_iou"] += (near.mask & mask).sum() / (near.mask | mask).sum()
    return out


def test_annotator_reads_rendered_scenes_at_least_98_percent():
    rng = random.Random(11)
    scenes = [random_scene(rng) for _ in range(400)]
    totals = {"shape": 0, "colour": 0, "position": 0, "mask_iou": 0.0}
    n_objects = style_ok = count_ok = 0
    for scene in scenes:
        img, _ = render(scene)
        ann = annotate(img)
        for key, value in _match(scene, ann).items():
            totals[key] += value
        n_objects += len(scene.objects)
        style_ok += ann.style == scene.style
        count_ok += len(ann.objects) == len(scene.objects)
    for key in ("shape", "colour", "position"):
        assert totals[key] / n_objects >= 0.98, key
    assert totals["mask_iou"] / n_objects >= 0.95
    assert style_ok / len(scenes) >= 0.98
    assert count_ok / len(scenes) >= 0.98


def test_annotator_tolerates_noise_like_a_generated_image():
    rng = random.Random(12)
    noise = np.random.default_rng(0)
    ok = total = 0
    for _ in range(100):
        scene = random_scene(rng)
        img, _ = render(scene)
        noisy = np.clip(img.astype(int) + noise.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        ann = annotate(noisy)
        ok += sorted(o.label for o in ann.objects) == sorted(o.label for o in scene.objects)
        ok += ann.style == scene.style
        total += 2
    assert ok / total >= 0.95


def test_score_counts_hits_extras_positions_and_styles_by_hand():
    """Golden values: two scenes, hand-built annotations, every figure checked by hand."""
    left = ShapeObject("circle", "red", 8, 16, 5, "left")
    scene_a = Scene((left, ShapeObject("square", "blue", 24, 16, 5, "right")), "striped", True)
    scene_b = Scene((ShapeObject("triangle", "green", 16, 16, 5),), "plain", False)
    mask = np.zeros((32, 32), bool)
    found_a = Annotation((FoundObject("circle", "red", mask, 20.0, 16.0, 0.9),), "striped")  # wrong half, blue missing
    found_b = Annotation((FoundObject("triangle", "green", mask, 16.0, 16.0, 0.9),
                          FoundObject("square", "yellow", mask, 3.0, 3.0, 0.9)), "plain")  # one extra object
    result = score([scene_a, scene_b], [found_a, found_b])
    assert result.objects_present == 2 / 3
    assert result.all_objects_present == 1 / 2
    assert result.no_extra_objects == 1 / 2
    assert result.positions_respected == 0.0 and result.n_positions == 1
    assert result.style_respected == 1.0 and result.n_styles == 1
    assert not result.passes()
    assert "NO" in result.table() and set(BARS) <= set(result.table().split())


def test_a_stretched_shape_keeps_its_name():
    from atlas.shapes.world import COLORS, PLAIN_BACKGROUND, unit_shape

    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    for shape in ("circle", "square", "triangle"):
        for rx, ry in ((6.0, 7.5), (7.5, 6.0), (5.0, 6.5)):  # as oblong as a generated 'square' can be: 12 x 15
            img = np.empty((32, 32, 3), np.uint8)
            img[:] = PLAIN_BACKGROUND
            img[unit_shape(shape, (xs - 16) / rx, (ys - 16) / ry)] = COLORS["red"]
            found = annotate(img).objects
            assert [o.label for o in found] == [f"red {shape}"], (shape, rx, ry)
            assert found[0].score > 0.85


def test_a_one_pixel_line_is_annotated_without_dividing_by_zero():
    """Edited images can hold a thin coloured streak; its fitted template must stay finite (the old fit divided
    by a half-width of zero and warned)."""
    import warnings

    from atlas.shapes.world import COLORS, PLAIN_BACKGROUND

    img = np.empty((32, 32, 3), np.uint8)
    img[:] = PLAIN_BACKGROUND
    img[4:28, 10] = COLORS["blue"]  # 24 pixels, 1 wide
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = annotate(img).objects
    assert [o.color for o in found] == ["blue"] and 0 < found[0].score <= 1


def _attributes(objects) -> dict[tuple[str, str], np.ndarray]:
    from atlas.annotate.attributes import attribute_masks

    return {(a.kind, a.label): a.mask for a in attribute_masks(objects)}


def test_attribute_masks_of_a_hand_made_scene():
    """Golden: two red shapes and a blue one on stripes; each attribute's mask is the union of the objects that
    have it (the annotator's own masks, which match the rendered ones), the style covers the whole image."""
    from atlas.shapes.backend import ShapesAnnotator

    scene = Scene((ShapeObject("circle", "red", 8, 8, 5), ShapeObject("square", "red", 24, 24, 5),
                   ShapeObject("triangle", "blue", 24, 8, 5)), "striped")
    image, truth = render(scene)
    found = ShapesAnnotator().annotate([image], [""])[0]
    by_label = {o.label: o.mask for o in found}
    got = _attributes(found)
    assert set(got) == {("colour", "red"), ("colour", "blue"), ("shape", "circle"), ("shape", "square"),
                        ("shape", "triangle"), ("position", "top left"), ("position", "bottom right"),
                        ("position", "top right"), ("style", "striped")}
    assert np.array_equal(got["colour", "red"], by_label["red circle"] | by_label["red square"])
    assert np.array_equal(got["shape", "circle"], by_label["red circle"])
    assert np.array_equal(got["position", "top right"], by_label["blue triangle"])
    assert got["style", "striped"].all()
    red = truth[0] | truth[1]
    assert (got["colour", "red"] & red).sum() / (got["colour", "red"] | red).sum() >= 0.9


def test_label_words_stand_in_for_attributes_an_annotator_does_not_give():
    """Golden: a tagger's labels give their words, each of its attribute kind or `word`."""
    from atlas.annotate.base import ObjectAnnotation, box_of

    masks = [np.zeros((4, 4), bool) for _ in range(3)]
    masks[0][0, 0] = masks[1][3, 3] = masks[2][0, 3] = True
    found = [ObjectAnnotation(label, 1.0, box_of(m), m) for label, m in zip(("black dog", "white dog", "dog"), masks)]
    got = _attributes(found)
    assert list(got) == [("colour", "black"), ("word", "dog"), ("colour", "white")]
    assert np.array_equal(got["word", "dog"], masks[0] | masks[1] | masks[2])
    assert np.array_equal(got["colour", "white"], masks[1])


def test_attribute_cells_pool_masks_to_each_grid():
    """Golden: a mask of an 8 x 8 image's top-left quarter is cell (0, 0) of a 2 x 2 grid and four cells of 4 x 4."""
    from atlas.annotate.attributes import AttributeMask
    from atlas.annotate.run import attribute_cells

    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    cells = attribute_cells([7], [[AttributeMask("colour", "red", mask)]], [(2, 2), (4, 4)])
    rows = sorted((r["grid_h"], r["row"], r["col"]) for r in cells.to_pylist())
    assert rows == [(2, 0, 0), (4, 0, 0), (4, 0, 1), (4, 1, 0), (4, 1, 1)]
    assert set(cells["kind"].to_pylist()) == {"colour"} and set(cells["image_id"].to_pylist()) == {7}
    assert set(cells["label"].to_pylist()) == {"red"}
