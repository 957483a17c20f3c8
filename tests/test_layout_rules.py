"""Golden values for the layout rules on hand-made inputs: what a caption names, the paper's top-concept vote
against the generous top-labelled one, the caption-aware baseline's masks and the in-memory dictionary rule."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from atlas.layout.captions import named_position
from atlas.layout.predict import predict_layout
from atlas.layout.score import baseline_masks, linked_vectors


@pytest.mark.parametrize("caption, label, named", [
    ("a red circle at the top left, a blue square on the right", "red circle", "top left"),
    ("a red circle at the top left, a blue square on the right", "blue square", "right"),
    ("a green triangle at the bottom and a red triangle at the top right on a striped background", "red triangle",
     "top right"),
    ("a red square, a blue triangle and a red circle on a striped background", "red circle", None),
    ("a dog in the upper  left corner", "dog", "top left"),
    ("a cat in the middle", "cat", "centre"),
    ("a hotdog on the left", "dog", None),  # whole words only
    ("a red circle on the left and a red circle on the right", "red circle", None),  # two places: none named
    ("a red circle on the left", "blue circle", None),
])
def test_named_position(caption, label, named):
    assert named_position(caption, label) == named


def test_the_papers_vote_takes_the_top_concept_even_when_unlabelled():
    """Two positions; at (0, 0) the top concept (latent 2, value 5) has no label and a weaker one (latent 0) is the
    target's: the paper's rule predicts nothing there, the top-labelled vote predicts it. At (0, 1) the top concept
    is the target's: both predict it."""
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)  # latent 0: target, 1: other, 2: none
    latents = np.array([[[2, 0], [0, 1]]])
    values = np.array([[[5.0, 1.0], [3.0, 1.0]]], np.float32)
    target = np.array([1.0, 0.0], np.float32)
    assert predict_layout(latents, values, vectors, target, 0.5).tolist() == [[False, True]]
    assert predict_layout(latents, values, vectors, target, 0.5, labelled_only=True).tolist() == [[True, True]]
    silent = np.zeros_like(values)  # no active code: nothing predicted by either
    assert not predict_layout(latents, silent, vectors, target, 0.5, labelled_only=True).any()


def test_caption_baseline_pools_the_masks_of_a_named_position():
    left, right = np.zeros((2, 2), bool), np.zeros((2, 2), bool)
    left[:, 0], right[:, 1] = True, True
    train = {(1, "red circle"): left, (2, "blue square"): left, (3, "red circle"): right}
    named = {1: "left", 2: "left", 3: None}
    by_position = baseline_masks(train, lambda image_id, label: named[image_id])
    assert set(by_position) == {"left"} and by_position["left"].tolist() == left.tolist()
    by_label = baseline_masks(train)
    assert by_label["blue square"].tolist() == left.tolist()
    assert by_label["red circle"].all()  # half left, half right: the best threshold keeps both halves


def test_linked_vectors_keep_labels_with_enough_hits():
    stats = pa.table({"latent": [0, 0, 1], "label": ["a", "b", "a"], "hits": [2, 1, 1]})
    vectors = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([0.0, 1.0], np.float32)}
    strict = linked_vectors(stats, 3, vectors, min_hits=2)
    assert strict.tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    loose = linked_vectors(stats, 3, vectors, min_hits=1)
    assert np.allclose(loose[0], [2 ** -0.5, 2 ** -0.5]) and loose[1].tolist() == [1.0, 0.0] and not loose[2].any()
