"""Golden values for the report's concept-structure figures on hand-made decoders and activation maps."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from atlas.report.report import label_geometry, positional_spread


def test_cohesion_and_separability_of_hand_made_decoder_rows():
    """Label A: e0 and (e0+e1)/sqrt2 (cosine 1/sqrt2); label B: e2 twice (cosine 1); label C: e0 alone.

    Cohesion = mean(1/sqrt2, 1) = 0.8536 (C has no pair). Mean directions: A at 22.5 degrees from e0, B = e2,
    C = e0, so separability = mean(cos(A,B), cos(A,C), cos(B,C)) = mean(0, cos 22.5deg, 0) = 0.3080.
    Checked to fail when broken: counting each row's cosine with itself (the diagonal) gives cohesion 0.9512;
    not normalising the mean directions gives separability 0.2845."""
    w = np.zeros((6, 4), np.float32)
    w[0, 0] = 1
    w[1, :2] = 1 / math.sqrt(2)
    w[2, 2] = w[3, 2] = 1
    w[4, 0] = 1
    w[5, 3] = 1  # unlabelled: must not count
    cohesion, separability, labels = label_geometry(w, [(0, "A"), (1, "A"), (2, "B"), (3, "B"), (4, "C")])
    assert labels == 3
    assert cohesion == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-6)
    assert separability == pytest.approx(math.cos(math.pi / 8) / 3, abs=1e-6)


def test_one_label_has_no_separability_and_no_labels_no_figures():
    w = np.eye(3, dtype=np.float32)
    cohesion, separability, labels = label_geometry(w, [(0, "A"), (1, "A")])
    assert (cohesion, labels) == (0.0, 1) and math.isnan(separability)
    assert all(math.isnan(x) for x in label_geometry(w, [])[:2])


def _codes(firings: list[tuple[int, int, int, int, float]]) -> pa.Table:
    image, row, col, latent, value = zip(*firings)
    return pa.table({"image_id": pa.array(image, pa.int32()), "row": pa.array(row, pa.int16()),
                     "col": pa.array(col, pa.int16()), "latent": pa.array(latent, pa.int32()),
                     "value": pa.array(value, pa.float32())})


def test_positional_spread_on_hand_made_maps():
    """On a 4x4 grid (a uniform spread has variance 15/12 per axis, 2.5 in all), over 32 images:
    latent 0 always at (1, 2) with varying strength -> 0; latent 4 at (0, 0) with 3 and (0, 2) with 1 on each
    image -> column variance 1 - 0.5^2 = 0.75 -> 0.3; latent 2 at every cell twice -> 1.0; latent 1 at (0, 0)
    on half the images and (3, 3) on the rest -> (2.25 + 2.25) / 2.5 = 1.8; latent 3 on 5 images only -> left
    out. Checked to fail when broken: unweighted variance puts latent 4 at 0.4; dropping the min-images rule
    lists latent 3."""
    firings = []
    for i in range(32):
        firings += [(i, 1, 2, 0, 1.0 + i), (i, 0, 0, 4, 3.0), (i, 0, 2, 4, 1.0), (i, i % 4, (i // 4) % 4, 2, 2.0),
                    (i, 0, 0, 1, 1.0) if i < 16 else (i, 3, 3, 1, 1.0)]
    firings += [(i, 2, 2, 3, 1.0) for i in range(5)]
    spread = positional_spread(_codes(firings), (4, 4), min_images=20).to_pylist()
    assert [(r["latent"], r["spread"]) for r in spread] == [(0, 0.0), (4, 0.3), (2, 1.0), (1, 1.8)]
    assert [(r["mean_row"], r["mean_col"], r["images"], r["firings"]) for r in spread][:2] == [
        (1.0, 2.0, 32, 32), (0.0, 0.5, 32, 64)]
