"""The TopK/AuxK SAE: definition, sparse paths against dense references, training invariants, persistence, recovery."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from atlas.sae import Sae, SaeConfig, SaeTrainConfig, evaluate, geometric_median, train_sae
from atlas.sae.metrics import DeadLatentTracker
from atlas.sae.train import TensorStream, _lr_factor, cut_batches, make_optimizer, token_batches


def small_sae(d: int = 16, n: int = 48, k: int = 4, seed: int = 0, **kw) -> Sae:
    sae = Sae(SaeConfig(d_in=d, n_latents=n, k=k, **kw), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # move away from the symmetric init so every parameter matters in the references
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 1))
        sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 2))
        sae.W_enc.mul_(1 + 0.5 * torch.rand(sae.W_enc.shape, generator=torch.Generator().manual_seed(seed + 3)))
    return sae


def dense_reference(sae: Sae, x: torch.Tensor, dead_mask: torch.Tensor | None = None):
    """The SAE written the slow, obvious way: dense z, ReLU before TopK, dense AuxK."""
    pre = F.relu((x - sae.b_dec) @ sae.W_enc.T + sae.b_enc)
    vals, idx = pre.topk(sae.cfg.k, dim=1)
    z = torch.zeros_like(pre).scatter(1, idx, vals)
    x_hat = z @ sae.W_dec + sae.b_dec
    fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    aux = x.new_zeros(())
    if dead_mask is not None and dead_mask.any():
        e = (x - x_hat).detach()
        pre_aux = F.relu((x - sae.b_dec.detach()) @ sae.W_enc.T + sae.b_enc)
        k_aux = min(sae.cfg.k_aux, int(dead_mask.sum()))
        av, ai = pre_aux.masked_fill(~dead_mask, -1.0).topk(k_aux, dim=1)
        e_hat = torch.zeros_like(pre_aux).scatter(1, ai, av) @ sae.W_dec
        aux = (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    return x_hat, z, fvu, aux


def test_forward_shapes_and_leading_dims():
    sae = small_sae()
    x = torch.randn(2, 5, 16)
    out = sae(x)
    assert out.x_hat.shape == (2, 5, 16)
    assert out.top_acts.shape == out.top_indices.shape == (10, 4)
    assert out.top_indices.dtype == torch.int64
    assert out.fvu.ndim == 0 and out.auxk_loss.ndim == 0
    assert float(out.auxk_loss) == 0.0
    enc = sae.encode(x)
    assert enc.pre_acts.shape == (10, 48) and not enc.pre_acts.requires_grad


def test_encode_is_topk_of_relu_and_decode_is_sparse_equivalent():
    sae = small_sae()
    with torch.no_grad():  # token 0 sits at b_dec, so its pre-activations are b_enc: exactly 2 positive, k = 4
        sae.b_enc.copy_(-sae.b_enc.abs() - 0.01)
        sae.b_enc[:2] *= -1
    x = torch.randn(64, 16)
    x[0] = sae.b_dec.detach()
    with torch.no_grad():
        x_hat_ref, z_ref, fvu_ref, _ = dense_reference(sae, x)
        enc = sae.encode(x)
        z = torch.zeros(64, 48).scatter(1, enc.top_indices, enc.top_acts)
        torch.testing.assert_close(z, z_ref)
        assert (enc.top_acts >= 0).all()
        assert (enc.top_acts[0] == 0).sum() == 2 and set(enc.top_indices[0][enc.top_acts[0] > 0].tolist()) == {0, 1}
        x_hat = sae.decode(enc.top_acts, enc.top_indices)
        torch.testing.assert_close(x_hat, z @ sae.W_dec + sae.b_dec, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x_hat, x_hat_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x).fvu, fvu_ref)


# none dead; fewer than k_aux (all used); dense path dropping the few smallest / keeping the top k_aux; sparse path
@pytest.mark.parametrize(("n_dead", "k_aux"), [(0, 12), (5, 12), (30, 20), (30, 12), (40, 3)])
def test_gradients_equal_dense_reference(n_dead, k_aux):
    sae = small_sae(k_aux=k_aux)
    ref = small_sae(k_aux=k_aux)
    x = torch.randn(200, 16) + 0.3
    dead = torch.zeros(48, dtype=torch.bool)
    dead[torch.randperm(48, generator=torch.Generator().manual_seed(5))[:n_dead]] = True
    out = sae(x, dead_mask=dead)
    (out.fvu + 0.5 * out.auxk_loss).backward()
    _, _, fvu_ref, aux_ref = dense_reference(ref, x, dead)
    (fvu_ref + 0.5 * aux_ref).backward()
    torch.testing.assert_close(out.fvu, fvu_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.auxk_loss, aux_ref, rtol=1e-5, atol=1e-6)
    assert (float(out.auxk_loss.detach()) > 0) == (n_dead > 0)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, dict(ref.named_parameters())[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_auxk_loss_zero_without_dead_latents_positive_with_them():
    sae = small_sae()
    x = torch.randn(128, 16)
    assert float(sae(x).auxk_loss) == 0.0
    assert float(sae(x, dead_mask=torch.zeros(48, dtype=torch.bool)).auxk_loss) == 0.0
    dead = torch.zeros(48, dtype=torch.bool)
    dead[:10] = True
    assert float(sae(x, dead_mask=dead).auxk_loss.detach()) > 0.0


def test_train_step_keeps_unit_norm_decoder_and_removes_parallel_gradient():
    sae = small_sae()
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
        sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48))
    sae(torch.randn(128, 16) * 2).fvu.backward()
    before = torch.einsum("nd,nd->n", sae.W_dec.grad, sae.W_dec.detach())
    assert before.abs().max() > 1e-3  # there was something to remove
    grad_before = sae.W_dec.grad.clone()
    sae.remove_gradient_parallel_to_decoder_directions()
    after = torch.einsum("nd,nd->n", sae.W_dec.grad, sae.W_dec.detach())
    assert after.abs().max() < 1e-6
    torch.testing.assert_close(grad_before - sae.W_dec.grad, before[:, None] * sae.W_dec.detach())  # only radial part

    result = train_sae(torch.randn(512, 16), sae.cfg, SaeTrainConfig(batch_size=128, n_tokens=512, lr=1e-2),
                       progress=False)
    torch.testing.assert_close(result.sae.W_dec.norm(dim=1), torch.ones(48))
    assert result.metrics["steps"] == 4 and result.metrics["n_tokens"] == 512


def test_save_load_round_trip_is_bit_identical(tmp_path):
    sae = small_sae(k=3, auxk_alpha=0.05, dead_tokens=123, b_init="mean")
    x = torch.randn(50, 16)
    sae.save_pretrained(tmp_path / "sae")
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["n_latents"] == 48
    loaded = Sae.from_pretrained(tmp_path / "sae")
    assert loaded.cfg == sae.cfg
    for name, p in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p)
    with torch.no_grad():
        a, b = sae(x), loaded(x)
    assert torch.equal(a.x_hat, b.x_hat) and torch.equal(a.top_indices, b.top_indices)
    assert loaded.W_enc.device.type == "cpu" and loaded.W_enc.dtype == torch.float32


def test_geometric_median_is_robust_and_bias_init_uses_it():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [100.0, 0.0]])
    gm = geometric_median(x, iters=200)
    assert abs(float(gm[0]) - 2.0) < 0.05 and abs(float(gm[1])) < 1e-6  # the mean would be 21.2
    sae = small_sae(d=2, n=4, k=1)
    sae.init_bias(x)
    torch.testing.assert_close(sae.b_dec, geometric_median(x))
    sae.init_bias(x, method="mean")
    torch.testing.assert_close(sae.b_dec, torch.tensor([21.2, 0.0]))


def test_tensor_batches_cover_each_token_once_per_pass_and_chunks_carry_over():
    data = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    batches = list(itertools.islice(token_batches(data, 5, seed=3), 8))
    for epoch in (batches[:4], batches[4:]):
        assert sorted(torch.cat(epoch)[:, 0].tolist()) == list(range(0, 40, 2))
    assert not torch.equal(torch.cat(batches[:4]), torch.cat(batches[4:]))  # each pass in its own order
    again = torch.cat(list(itertools.islice(token_batches(data, 5, seed=3), 8)))
    assert torch.equal(torch.cat(batches), again)
    resumed = torch.cat(list(itertools.islice(TensorStream(data, seed=3, chunk_tokens=6).chunks(15), 3)))
    assert len(resumed) == 17 and torch.equal(resumed, again[15:32])  # from any token, any chunk size: the same
    chunks = [data[:7], data[7:13], data[13:]]
    batches = list(cut_batches(iter(chunks), 5))
    assert len(batches) == 4 and torch.equal(torch.cat(batches), data)  # a plain iterable keeps its order


def test_lr_schedule_warmup_and_final_decay():
    cfg = SaeTrainConfig(lr_warmup_steps=4, lr_decay_fraction=0.5)
    factors = [_lr_factor(s, 10, cfg) for s in range(10)]
    assert factors == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]
    assert _lr_factor(7, None, cfg) == 1.0  # unknown length: no decay


def planted_data(n_tokens: int, d: int = 32, n_true: int = 64, k: int = 3, seed: int = 0):
    """Tokens that are sums of k of n_true unit directions with coefficients in [0.5, 1.5).

    The generator is offset from the SAE's init seed: with the same seed, `randn` would hand the SAE the
    planted directions as its initial decoder rows."""
    g = torch.Generator().manual_seed(1_000_003 + seed)
    directions = F.normalize(torch.randn(n_true, d, generator=g), dim=1)
    idx = torch.rand(n_tokens, n_true, generator=g).argsort(1)[:, :k]
    coef = 0.5 + torch.rand(n_tokens, k, generator=g)
    return torch.einsum("nk,nkd->nd", coef, directions[idx]), directions


@pytest.mark.slow
def test_recovers_planted_directions():
    x, directions = planted_data(20_000)
    cfg = SaeConfig(d_in=32, n_latents=128, k=3, dead_tokens=5000)
    init = Sae(cfg, generator=torch.Generator().manual_seed(0))  # what train_sae starts from (seed 0)
    assert ((directions @ init.W_dec.detach().T).max(dim=1).values > 0.9).sum() == 0  # nothing found by luck
    result = train_sae(x[:16_000], cfg, SaeTrainConfig(lr=3e-3, batch_size=256, n_tokens=256 * 500, log_every=100),
                       progress=False)
    best_cos = (directions @ result.sae.W_dec.detach().T).max(dim=1).values
    assert (best_cos > 0.9).float().mean() >= 0.9, best_cos
    held_out = evaluate(result.sae, x[16_000:])
    assert held_out["fvu"] < 0.15 and held_out["l0"] <= 3
    assert [h["step"] for h in result.history] == [100, 200, 300, 400, 500]
    assert result.history[-1]["fvu"] < result.history[0]["fvu"]


@pytest.mark.slow
def test_auxk_revives_latents_that_never_win_topk():
    """Latents whose encoder rows are scaled to 2 % never reach the top-k, so they get no gradient from the
    reconstruction loss: without AuxK (almost) all stay dead; with AuxK they learn the residual and fire."""
    x, _ = planted_data(8192, d=32, n_true=64, k=3, seed=1)
    cfg = SaeConfig(d_in=32, n_latents=64, k=3, k_aux=16, dead_tokens=512)
    fire_counts = {}
    for alpha in (0.0, 1 / 32):
        sae = Sae(dataclasses.replace(cfg, auxk_alpha=alpha), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            sae.W_enc[16:] *= 0.02
        result = train_sae(x, sae.cfg, SaeTrainConfig(lr=3e-3, batch_size=256, n_tokens=256 * 150), progress=False,
                           sae=sae)
        tracker = DeadLatentTracker(64, 1)
        with torch.no_grad():
            enc = result.sae.encode(x)
        tracker.update(enc.top_acts, enc.top_indices)
        fire_counts[alpha] = int((~tracker.dead_mask()[16:]).sum())
    assert fire_counts[0.0] <= 2, fire_counts  # a stray one can win on a token where few healthy latents are > 0
    assert fire_counts[1 / 32] >= 40, fire_counts  # measured: 47 of 48


def test_optimizer_is_fused_adam_on_cpu():
    opt = make_optimizer(small_sae(), SaeTrainConfig())
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"]


def test_tied_init_decoder_rows_are_normalised_encoder_rows():
    sae = Sae(SaeConfig(d_in=64, n_latents=256, k=8), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sae.W_dec, F.normalize(sae.W_enc, dim=1))
    assert 0.5 < float(sae.W_enc.detach().norm(dim=1).mean()) < 0.65  # nn.Linear's scale, sqrt(1/3)
    assert not sae.b_enc.detach().any() and not sae.b_dec.detach().any()
    again = Sae(SaeConfig(d_in=64, n_latents=256, k=8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.W_enc, sae.W_enc)


def test_train_sae_on_an_iterable_of_chunks():
    x, _ = planted_data(3000, d=16, n_true=24, k=2, seed=2)
    chunks = (chunk for chunk in x.split(700))  # a one-shot generator, like reading one file at a time
    cfg = SaeConfig(d_in=16, n_latents=32, k=2)
    result = train_sae(chunks, cfg, SaeTrainConfig(batch_size=256, n_tokens=2560, log_every=4), progress=False)
    assert result.metrics["n_tokens"] == 2560 and result.metrics["steps"] == 10
    assert [h["step"] for h in result.history] == [4, 8, 10]
    assert result.history[-1]["lr"] > 0  # length known from n_tokens: decayed, not yet 0
    unbounded = train_sae(iter(x.split(700)), cfg, SaeTrainConfig(batch_size=256), progress=False)
    assert unbounded.metrics["n_tokens"] == 2816  # every full batch of the 3000 tokens, remainders carried over


def test_an_sae_saved_by_an_older_atlas_still_loads(tmp_path):
    """Before the sparsify layout: config.json and tensors named W_enc / b_enc."""
    from safetensors.torch import load_file, save_file

    sae = small_sae(k=3)
    path = sae.save_pretrained(tmp_path / "sae")
    config = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").unlink()
    (path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "num_latents"}))
    renamed = {"encoder.weight": "W_enc", "encoder.bias": "b_enc"}
    tensors = {renamed.get(name, name): t for name, t in load_file(str(path / "sae.safetensors")).items()}
    assert set(tensors) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    save_file(tensors, str(path / "sae.safetensors"))
    loaded = Sae.from_pretrained(path)
    x = torch.randn(20, 16)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x).top_indices, sae.encode(x).top_indices)
    assert loaded.cfg == sae.cfg
