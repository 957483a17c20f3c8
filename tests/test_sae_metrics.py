"""Golden values for the SAE metrics, worked out by hand (SAE libraries have shipped wrong ones)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from atlas.sae import (
    DeadLatentTracker,
    Sae,
    SaeConfig,
    dead_fraction,
    evaluate,
    evaluate_with_stats,
    explained_variance,
    fvu,
    l0,
    latent_stats,
    write_metrics,
)


def test_fvu_and_explained_variance_golden():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    x_hat = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    # squared error 0 + 1 + 0 + 1 = 2; mean (2, 4); squared deviations (1 + 4) + (1 + 4) = 10
    assert float(fvu(x, x_hat)) == pytest.approx(0.2)
    assert float(explained_variance(x, x_hat)) == pytest.approx(0.8)
    assert float(fvu(x, x.mean(0).expand_as(x))) == pytest.approx(1.0)  # predicting the mean explains nothing
    assert float(fvu(x, x)) == 0.0


def test_explained_variance_is_mean_centred_not_around_zero():
    x = torch.tensor([[101.0, 102.0], [103.0, 106.0]])
    x_hat = torch.tensor([[101.0, 103.0], [103.0, 105.0]])
    # same deviations as above: 0.8. Taken around zero (SAELens's old bug) it would be 1 - 2 / 42,170 = 0.99995.
    assert float(explained_variance(x, x_hat)) == pytest.approx(0.8)
    assert float(explained_variance(x.half(), x_hat.half())) == pytest.approx(0.8)  # no fp16 overflow/cancellation


def test_l0_counts_strictly_positive_activations():
    top_acts = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.5]])  # TopK after ReLU can select zeros
    assert float(l0(top_acts)) == pytest.approx(1.5)
    assert float(l0(top_acts.reshape(1, 2, 3))) == pytest.approx(1.5)


def test_dead_fraction_and_tracker_golden():
    assert dead_fraction(torch.tensor([0, 3, 0, 1])) == 0.5
    tracker = DeadLatentTracker(4, dead_tokens=10)
    assert not tracker.dead_mask().any()
    # 4 tokens; latent 2 is selected but with activation 0: it did not fire
    tracker.update(torch.tensor([[1.0, 0.0]] * 4), torch.tensor([[0, 2], [1, 2], [0, 2], [1, 2]]))
    assert tracker.tokens_since_fired.tolist() == [0, 0, 4, 4]
    tracker.update(torch.tensor([[0.5]] * 8), torch.tensor([[1]] * 8))
    assert tracker.tokens_since_fired.tolist() == [8, 0, 12, 12]
    assert tracker.dead_mask().tolist() == [False, False, True, True]
    assert tracker.dead_fraction() == 0.5
    tracker.update(torch.tensor([[0.5], [0.5]]), torch.tensor([[0], [3]]))
    assert tracker.tokens_since_fired.tolist() == [0, 2, 14, 0]


def identity_sae() -> Sae:
    """d = n = 3, k = 1, W_enc = W_dec = I, zero biases: each token keeps its largest coordinate."""
    sae = Sae(SaeConfig(d_in=3, n_latents=3, k=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3))
    return sae


X = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
# reconstruction: the first three tokens exactly, the last as 0 (its top-1 activation is ReLU(-1) = 0): error 3.
# mean (0.5, 0.5, -0.25); squared deviations 5 + 9 + 0.75 = 14.75.


def test_latent_stats_and_evaluate_golden():
    sae = identity_sae()
    stats = latent_stats(sae, X, batch_size=3)
    assert stats.n_tokens == 4
    assert stats.fire_counts.tolist() == [2, 1, 0]
    assert stats.frequency.tolist() == [0.5, 0.25, 0.0]
    assert stats.mean_activation.tolist() == [1.5, 3.0, 0.0]
    metrics = evaluate(sae, X, batch_size=3)
    assert metrics["fvu"] == pytest.approx(3 / 14.75)
    assert metrics["explained_variance"] == pytest.approx(1 - 3 / 14.75)
    assert metrics["l0"] == 0.75
    assert metrics["dead_fraction"] == pytest.approx(1 / 3)


def test_evaluate_accumulates_sums_not_per_batch_ratios():
    sae = identity_sae()
    torch.manual_seed(0)
    x = torch.cat([torch.randn(50, 3) * 0.1, torch.randn(50, 3) * 5 + 2])  # batches with very different variance
    whole = evaluate(sae, x, batch_size=1000)["fvu"]
    with torch.no_grad():
        enc = sae.encode(x)
        direct = float(fvu(x, sae.decode(enc.top_acts, enc.top_indices)))
    assert whole == pytest.approx(direct, rel=1e-6)
    assert evaluate(sae, x, batch_size=50)["fvu"] == pytest.approx(direct, rel=1e-6)
    assert evaluate(sae, x, batch_size=7)["fvu"] == pytest.approx(direct, rel=1e-6)
    assert evaluate(sae, [x[:33], x[33:]], batch_size=16)["fvu"] == pytest.approx(direct, rel=1e-6)  # chunk iterable
    assert evaluate(sae, [x[:33], x[:0], x[33:]])["fvu"] == pytest.approx(direct, rel=1e-6)  # a shard without the split
    per_batch_mean = sum(evaluate(sae, part)["fvu"] for part in x.split(50)) / 2
    assert abs(per_batch_mean - direct) > 0.05  # the naive average would really differ here


def test_save_pretrained_writes_metrics_and_stats(tmp_path):
    sae = identity_sae()
    metrics, stats = evaluate_with_stats(sae, X)
    sae.save_pretrained(tmp_path / "s")
    write_metrics(sae, tmp_path / "s", metrics=metrics, stats=stats)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "cfg.json", "metrics.json", "sae.safetensors", "stats.parquet"]
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["l0"] == 0.75
    table = pq.read_table(tmp_path / "s" / "stats.parquet").to_pydict()
    assert table == {"latent": [0, 1, 2], "frequency": [0.5, 0.25, 0.0], "mean_activation": [1.5, 3.0, 0.0],
                     "decoder_norm": [1.0, 1.0, 1.0]}
    sae.save_pretrained(tmp_path / "plain")
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["cfg.json", "sae.safetensors"]
