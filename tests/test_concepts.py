"""Concept dictionary and layout prediction: golden values on hand-checked inputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from atlas.dictionary.link import LinkConfig, link
from atlas.grids import iou, mask_cells
from atlas.layout.predict import predict_layout, weighted_layout
from atlas.models.text import TextEmbedder


def test_link_golden_values():
    # image 1: latent 7 at (0,0)=1.0, (0,1)=0.05 (under 10 % of max: off), (1,0)=0.5; latent 3 at (1,1)
    # image 2: latent 7 at (0,1)=0.2 only
    codes = pa.table({"image_id": [1, 1, 1, 1, 2], "row": [0, 0, 1, 1, 0], "col": [0, 1, 0, 1, 1],
                      "latent": [7, 7, 7, 3, 7], "value": [1.0, 0.05, 0.5, 2.0, 0.2]})
    masks = np.zeros((3, 2, 2), bool)
    masks[0, :, 0] = True  # object 10 in image 1: red circle on the left column -> IoU with latent 7 = 2/2
    masks[1, 0, 1] = True  # object 11 in image 1: blue square top right -> no overlap with anything on
    masks[2, 0, :] = True  # object 12 in image 2: red circle top row -> IoU with latent 7 = 1/2 (not > 0.5)
    cells = mask_cells(np.array([10, 11, 12]), np.array([1, 1, 2]), ["red circle", "blue square", "red circle"], masks)
    out = link(codes, cells, LinkConfig(threshold=0.1, iou=0.5, min_hits=1)).to_pylist()
    assert len(out) == 1  # latent 3 overlaps no object; latent 7 never touches the blue square
    row = out[0]
    assert (row["latent"], row["label"]) == (7, "red circle")
    assert row["mean_iou"] == pytest.approx(0.75)  # (1.0 + 0.5) / 2 red circles
    assert row["hits"] == 1 and row["hit_rate"] == pytest.approx(0.5)
    assert row["precision"] == pytest.approx(1.0)  # 3 on-cells, all inside red circles
    assert row["recall"] == pytest.approx(3 / 4)  # 3 of the 4 red-circle cells
    assert row["support"] == 2 and row["passes"]
    strict = link(codes, cells, LinkConfig(min_hits=2)).to_pylist()
    assert not strict[0]["passes"]


def test_iou_golden_values():
    a = np.array([[1, 1], [0, 0]], bool)
    b = np.array([[1, 0], [1, 0]], bool)
    assert iou(a, b) == pytest.approx(1 / 3)
    assert iou(a, a) == 1.0
    assert iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0


def test_predict_layout_top_labelled_uses_the_most_active_labelled_concept():
    vectors = np.zeros((5, 2))
    vectors[1] = [1, 0]  # concept 1 labelled "red circle"
    vectors[2] = [0, 1]  # concept 2 labelled something else
    latents = np.array([[[1, 4], [4, 2]], [[2, 1], [3, 4]]])  # (2, 2, k=2); 3 and 4 unlabelled
    values = np.array([[[0.5, 0.9], [1.0, 0.2]], [[0.7, 0.6], [1.0, 1.0]]])
    mask = predict_layout(latents, values, vectors, np.array([1.0, 0.0]), threshold=0.9, labelled_only=True)
    # (0,0): unlabelled 4 is stronger but only labelled concepts vote -> 1 -> match
    # (0,1): labelled 2 -> no; (1,0): 2 (0.7) beats 1 (0.6) -> no; (1,1): nothing labelled -> no
    assert mask.tolist() == [[True, False], [False, False]]
    # the paper's vote: (0,0)'s top concept 4 has no label -> nothing predicted anywhere
    assert not predict_layout(latents, values, vectors, np.array([1.0, 0.0]), threshold=0.9).any()


def test_weighted_layout_sums_every_concepts_evidence():
    weights = np.array([0.0, 0.5, 0.1, 0.0, 0.2])  # mean IoU of each concept with the label's objects
    latents = np.array([[[1, 4], [4, 2]], [[2, 1], [3, 4]]])  # (2, 2, k=2)
    values = np.array([[[0.5, 0.9], [1.0, 0.2]], [[0.7, 0.6], [1.0, 1.0]]])
    # scores: (0,0) 0.25 + 0.18 = 0.43; (0,1) 0.2 + 0.02 = 0.22; (1,0) 0.07 + 0.3 = 0.37; (1,1) 0 + 0.2 = 0.2
    assert weighted_layout(latents, values, weights, 0.8).tolist() == [[True, False], [True, False]]
    assert weighted_layout(latents, values, weights, 0.5).tolist() == [[True, True], [True, False]]
    assert weighted_layout(latents, values, weights, 0.1).all()
    # no evidence anywhere: nothing is predicted (rather than everything above 0 * 0)
    assert not weighted_layout(latents, values, np.zeros(5), 0.5).any()


@pytest.mark.slow
def test_label_embeddings_find_labels_by_meaning():
    embedder = TextEmbedder()
    vectors = embedder.embed(["cat", "red car", "striped background"])
    query = embedder.embed(["kitten"])[0]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert int(np.argmax(vectors @ query)) == 0
