"""BatchTopK, JumpReLU and Matryoshka-BatchTopK beside TopK: golden values on hand-checked tiny inputs, persistence,
and training to the asked sparsity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atlas.errors import BadInputError
from atlas.sae import Sae, SaeConfig, SaeTrainConfig, evaluate, train_sae
from atlas.sae.model import _JumpReLU, _Step, batch_top


def identity_sae(sae_type: str, k: int = 2, n: int = 4, **kw) -> Sae:
    """d = n_latents, W_enc = W_dec = I and zero biases: the pre-activations are the input itself."""
    sae = Sae(SaeConfig(d_in=n, n_latents=n, k=k, sae_type=sae_type, **kw))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(n))
        sae.W_dec.copy_(torch.eye(n))
    return sae


def as_sets(acts: torch.Tensor, idx: torch.Tensor) -> list[dict[int, float]]:
    acts = acts.detach()
    return [{int(i): round(float(a), 6) for a, i in zip(row_a, row_i) if a > 0} for row_a, row_i in zip(acts, idx)]


def test_batch_top_takes_the_batch_wide_k_times_b_largest_positive_values():
    pre = torch.tensor([[5.0, 4.0, 3.0, -1.0], [0.1, 0.2, -1.0, -2.0]])
    def kept(idx, keep):
        return [sorted(int(i) for i, kept in zip(r, m) if kept) for r, m in zip(idx, keep)]

    idx, keep, smallest = batch_top(pre, 2, 4)  # 2 * 2 = 4 largest of the batch: 5, 4, 3 in row 0, 0.2 in row 1
    assert idx.shape == (2, 3)  # the most any row kept
    assert kept(idx, keep) == [[0, 1, 2], [1]]
    assert float(smallest) == pytest.approx(0.2)
    idx, keep, smallest = batch_top(pre, 2, 2)  # a row keeps at most 2: the 4 largest of 5, 4 | 0.2, 0.1
    assert idx.shape == (2, 2) and kept(idx, keep) == [[0, 1], [0, 1]] and float(smallest) == pytest.approx(0.1)
    idx, keep, smallest = batch_top(torch.tensor([[1.0, -1.0], [-2.0, -3.0]]), 2, 2)  # only one positive entry
    assert keep.sum() == 1 and int(idx[0][keep[0]][0]) == 0 and float(smallest) == 1.0


def test_batchtopk_trains_on_the_batch_rule_and_infers_with_the_running_threshold():
    sae = identity_sae("batchtopk").train()
    x = torch.tensor([[5.0, 4.0, 3.0, -1.0], [0.1, 0.2, -1.0, -2.0]])
    out = sae(x)
    assert as_sets(out.top_acts, out.top_indices) == [{0: 5.0, 1: 4.0, 2: 3.0}, {1: 0.2}]  # cap min(4 k, 4) = 4
    assert torch.allclose(out.x_hat, torch.tensor([[5.0, 4.0, 3.0, 0.0], [0.0, 0.2, 0.0, 0.0]]))
    assert float(sae.threshold) == pytest.approx(0.2)  # the first batch sets it
    sae(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]))  # selects 4, 3, 2, 1: smallest 1
    assert float(sae.threshold) == pytest.approx(0.9 * 0.2 + 0.1 * 1.0)
    sae.eval()
    enc = sae.encode(torch.tensor([[0.3, 0.25, 0.1, 2.0]]))  # above 0.28: latents 0 and 3
    assert as_sets(enc.top_acts, enc.top_indices) == [{0: 0.3, 3: 2.0}]
    assert enc.top_acts.shape == (1, 4)  # cap = min(4 k, n_latents)


def test_inference_keeps_at_most_max_active_latents_per_position():
    sae = identity_sae("batchtopk", k=1, n=6, max_active=2).eval()
    with torch.no_grad():
        sae.threshold.fill_(0.5)
    enc = sae.encode(torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0, 0.6], [0.1, 0.0, 0.0, 0.0, 0.0, 0.0]]))
    assert as_sets(enc.top_acts, enc.top_indices) == [{2: 3.0, 3: 4.0}, {}]
    assert SaeConfig(d_in=8, k=3, sae_type="jumprelu").cap == 12 and SaeConfig(d_in=8, k=3).cap == 3


def test_jumprelu_straight_through_gradients_of_the_threshold():
    x = torch.tensor([[0.5, 1.05, 2.0, 3.0]], requires_grad=True)
    theta = torch.tensor([0.45, 1.0, 2.05, 1.0], requires_grad=True)
    z = _JumpReLU.apply(x, theta, 0.2)  # x - theta = 0.05, 0.05, -0.05 (in the kernel's window), 2.0 (outside)
    assert z[0].tolist() == pytest.approx([0.5, 1.05, 0.0, 3.0])
    z.sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0, 0.0, 1.0]]
    assert theta.grad.tolist() == pytest.approx([-0.45 / 0.2, -1.0 / 0.2, -2.05 / 0.2, 0.0])
    theta.grad = None
    step = _Step.apply(x, theta, 0.2)
    assert step[0].tolist() == [1.0, 1.0, 0.0, 1.0]
    step.sum().backward()
    assert theta.grad.tolist() == pytest.approx([-5.0, -5.0, -5.0, 0.0])


def test_jumprelu_forward_loss_and_the_gradient_reaching_log_threshold():
    sae = identity_sae("jumprelu", k=2, bandwidth=0.2).train()
    with torch.no_grad():
        sae.log_threshold.copy_(torch.tensor([0.45, 1.0, 2.05, 9.0]).log())
        sae.b_dec.zero_()
    x = torch.tensor([[0.5, 1.05, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    out = sae(x)
    assert as_sets(out.top_acts, out.top_indices) == [{0: 0.5, 1: 1.05}, {}]
    fvu = 2.0**2 + 3.0**2  # the unreconstructed part of row 0 ...
    variance = float((x - x.mean(0)).pow(2).sum())  # ... over the variance around the mean
    assert float(out.fvu.detach()) == pytest.approx(fvu / variance)
    # mean L0 = 2 firing / 2 positions = 1, k = 2: the sparsity loss is (1 / 2 - 1)^2 = 0.25
    assert float(out.loss.detach()) == pytest.approx(fvu / variance + 0.25)
    sae.zero_grad()
    _Step.apply(x, sae.log_threshold.exp(), 0.2).sum().backward()  # d/dlog(theta) = theta * d/dtheta
    assert sae.log_threshold.grad.tolist() == pytest.approx([-0.45 * 5.0, -1.0 * 5.0, -2.05 * 5.0, 0.0])


def test_jumprelu_init_sets_the_threshold_where_k_latents_per_position_fire():
    sae = Sae(SaeConfig(d_in=8, n_latents=32, k=3, sae_type="jumprelu"), generator=torch.Generator().manual_seed(0))
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    sae.init_bias(x)
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    theta = float(sae.log_threshold.detach().exp()[0])
    assert int((pre > theta).sum()) == 3 * 200
    assert float(sae.bandwidth) == pytest.approx(0.1 * theta)


def test_matryoshka_loss_is_the_mean_fvu_of_the_nested_prefixes():
    cfg = SaeConfig(d_in=4, n_latents=4, k=2, sae_type="matryoshka", matryoshka_groups=2)
    assert cfg.prefixes() == [2, 4]
    assert SaeConfig(d_in=128, sae_type="matryoshka").prefixes() == [64, 128, 256, 512]
    assert SaeConfig(d_in=128).prefixes() == [512]
    sae = identity_sae("matryoshka", matryoshka_groups=2).train()
    x = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 4.0, -1.0]])
    with torch.no_grad():
        out = sae(x)  # 4 largest of the batch: 4 (latent 2 of row 1), 3, 2, 1 (row 0)
    assert as_sets(out.top_acts, out.top_indices) == [{0: 1.0, 1: 3.0, 2: 2.0}, {2: 4.0}]
    variance = float((x - x.mean(0)).pow(2).sum())
    full = 1.0  # only the -1 is lost
    prefix = 2.0**2 + 4.0**2 + 1.0  # latents 0, 1 only: row 0 loses 2, row 1 loses 4 and -1
    assert float(out.fvu) == pytest.approx(full / variance)
    assert float(out.loss) == pytest.approx((full + prefix) / 2 / variance)


@pytest.mark.parametrize("sae_type", ["batchtopk", "jumprelu", "matryoshka"])
def test_each_type_saves_its_type_and_thresholds_and_loads_back(sae_type, tmp_path):
    sae = Sae(SaeConfig(d_in=8, n_latents=16, k=2, sae_type=sae_type), generator=torch.Generator().manual_seed(0))
    sae.init_bias(torch.randn(64, 8, generator=torch.Generator().manual_seed(1)))
    sae.train()(torch.randn(64, 8, generator=torch.Generator().manual_seed(2)))  # batchtopk: a threshold
    sae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "cfg.json").read_text())
    assert config["sae_type"] == config["activation"] == sae_type
    loaded = Sae.from_pretrained(tmp_path)
    total = [float(s.thresholds().detach().sum()) for s in (loaded, sae)]
    assert loaded.cfg == sae.cfg and total[0] == total[1] > 0
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.encode(x).top_acts, sae.eval().encode(x).top_acts)


def test_an_unknown_type_is_a_one_line_error():
    with pytest.raises(BadInputError, match="sae_type must be one of topk, batchtopk, jumprelu, matryoshka"):
        SaeConfig(d_in=8, sae_type="gated")


@pytest.mark.parametrize("sae_type", ["topk", "batchtopk", "jumprelu", "matryoshka"])
def test_each_type_trains_to_about_k_active_latents_and_reconstructs(sae_type):
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(48, 16, generator=gen)
    codes = torch.rand(6000, 48, generator=gen) * (torch.rand(6000, 48, generator=gen) < 4 / 48)
    x = codes @ basis  # sparse mixtures of 48 directions, 4 per position on average
    result = train_sae(x[:5000], SaeConfig(d_in=16, n_latents=64, k=4, sae_type=sae_type),
                       SaeTrainConfig(lr=3e-3, batch_size=250, epochs=6, seed=0), progress=False)
    metrics = evaluate(result.sae, x[5000:])
    assert metrics["explained_variance"] > 0.6, metrics
    assert 2.0 < metrics["l0"] < 8.0, metrics


def test_types_and_ks_name_their_variants_by_what_differs_from_the_primary():
    from atlas.pipeline.config import SaeJobConfig

    assert SaeJobConfig(k=[10, 20]).saes() == [("", "topk", 10), ("k20", "topk", 20)]
    assert SaeJobConfig(k=[10, 20], sae_type=["jumprelu", "topk"]).saes() == [
        ("", "jumprelu", 10), ("k20", "jumprelu", 20), ("topk", "topk", 10), ("topk-k20", "topk", 20)]
    with pytest.raises(BadInputError, match="distinct types"):
        SaeJobConfig(sae_type=["topk", "topk"])


def test_a_threshold_type_exports_to_saelens_as_jumprelu_with_its_thresholds(tmp_path):
    from safetensors.torch import load_file

    from atlas.pipeline.export import write_saelens
    from atlas.store import SaeInfo

    info = SaeInfo(0, "mid", 1.0, "cond", 2, 4, 4, 2, 2, None, 0, None, variant="batchtopk")
    sae = identity_sae("batchtopk")
    with torch.no_grad():
        sae.threshold.fill_(0.25)
    write_saelens(sae, info, "shapes", tmp_path / "b", np.zeros(4))
    assert json.loads((tmp_path / "b" / "cfg.json").read_text())["architecture"] == "jumprelu"
    assert load_file(str(tmp_path / "b" / "sae_weights.safetensors"))["threshold"].tolist() == [0.25] * 4
    write_saelens(identity_sae("topk"), info, "shapes", tmp_path / "t", np.zeros(4))
    assert json.loads((tmp_path / "t" / "cfg.json").read_text())["architecture"] == "topk"
