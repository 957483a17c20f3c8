"""Our TopK SAE trainer against EleutherAI sparsify's, side by side in one run, on the same tokens.

Both get the same k, latents, batch size, tokens (in the same order), learning rate and LR schedule, Adam,
bias init from the first batch's mean, decoder renorm + parallel-gradient removal, and AuxK with
alpha = 1/32, k_aux = d/2 (sparsify's fixed value) and the same dead-token threshold. What differs is each
system's own: sparsify scales its AuxK by min(dead / k_aux, 1) and normalises it by the input's variance,
lets it train only the decoder, and counts a latent as fired when selected; ours normalises by the residual's
variance, trains the dead latents' encoder rows too, and counts a firing only for activations > 0.
sparsify's Trainer needs a Hugging Face model and dataset, so its training step is replicated here from its
public API (SparseCoder.forward -> fvu, auxk_loss; torch Adam as its Trainer falls back to without
bitsandbytes). Both final FVUs come from `atlas.sae.metrics.fvu` on the same held-out tokens.

    OMP_NUM_THREADS=2 .venv/bin/python bench/sae_vs_sparsify.py --threads 2

The last line is `RESULT throughput_ratio=<ours/sparsify> fvu_ours=<x> fvu_sparsify=<y>`.
Needs `pip install eai-sparsify` (it leaves torch alone).
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from atlas.sae import SaeConfig, SaeTrainConfig, fvu, train_sae
from atlas.sae.train import _lr_factor, token_batches

DATA_SEED_OFFSET = 1_000_003


def synthetic_activations(n_tokens: int, d: int, seed: int, n_features: int = 4096, rank: int = 16) -> Tensor:
    """Tokens shaped like SD v1.4 residual updates: a sparse part, a dense low-rank part, an offset and noise.

    - sparse: each token mixes 8 of `n_features` random unit directions, drawn with Zipf-like frequencies
      (feature i has weight 1 / (i + 10)), with log-normal positive coefficients (median 2);
    - dense: `rank` random directions with Gaussian coefficients of scales 2 * 0.8^j (shared, always on);
    - a fixed random offset of norm 3 (real deltas have a non-zero mean) and isotropic noise of std 0.05.
    The generator is torch's seeded CPU generator, so the same seed gives the same tokens everywhere; it is
    offset from the SAEs' init seed, or `randn` would give an SAE the true features as its initial decoder.
    """
    g = torch.Generator().manual_seed(DATA_SEED_OFFSET + seed)
    features = F.normalize(torch.randn(n_features, d, generator=g), dim=1)
    dense = F.normalize(torch.randn(rank, d, generator=g), dim=1) * (2 * 0.8 ** torch.arange(rank)).unsqueeze(1)
    offset = F.normalize(torch.randn(d, generator=g), dim=0) * 3
    freq = 1.0 / (torch.arange(n_features) + 10.0)
    out = torch.empty(n_tokens, d, dtype=torch.float16)
    for start in range(0, n_tokens, 16384):
        n = min(16384, n_tokens - start)
        idx = torch.multinomial(freq.expand(n, -1), 8, replacement=False, generator=g)
        coef = torch.exp(torch.randn(n, 8, generator=g) * 0.5 + 0.7)
        x = F.embedding_bag(idx, features, per_sample_weights=coef, mode="sum")
        x += torch.randn(n, rank, generator=g) @ dense + offset + 0.05 * torch.randn(n, d, generator=g)
        out[start : start + n] = x.half()
    return out


def train_sparsify(data: Tensor, args: argparse.Namespace, train_cfg: SaeTrainConfig, d: int):
    """sparsify's Trainer.fit step for loss_fn="fvu" and optimizer="adam", without the LM around it."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(args.seed)
    sae = SparseCoder(d, SparseCoderConfig(num_latents=args.latents, k=args.k), "cpu", dtype=torch.float32)
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr)
    n_data = data.shape[0]
    total_steps = max(1, (args.tokens or n_data) // min(args.batch_size, n_data))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total_steps, train_cfg))
    since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    batches = itertools.islice(token_batches(data, min(args.batch_size, n_data), args.seed), total_steps)
    tokens = 0
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        x = batch.to(torch.float32)
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = since_fired > args.dead_tokens if args.auxk_alpha > 0 else None
        out = sae(x=x, y=x, dead_mask=dead_mask)
        did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu + args.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        with torch.no_grad():
            since_fired += x.shape[0]
            since_fired[did_fire] = 0
        tokens += x.shape[0]
    seconds = time.perf_counter() - start
    return sae, tokens / seconds, float(out.fvu.detach()), float((since_fired > args.dead_tokens).double().mean())


@torch.no_grad()
def held_out_fvu(reconstruct, x: Tensor, batch_size: int) -> float:
    """Our fvu over the whole held-out set (one call on all tokens, not a mean of batch ratios)."""
    x = x.float()
    x_hat = torch.cat([reconstruct(b) for b in x.split(batch_size)])
    return float(fvu(x, x_hat))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=262_144, help="training tokens (default 64 steps of 4096)")
    p.add_argument("--held-out", type=int, default=16_384, help="evaluation tokens")
    p.add_argument("--d", type=int, default=1280, help="width of synthetic activations")
    p.add_argument("--latents", type=int, default=5120)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=SaeTrainConfig.lr)
    p.add_argument("--lr-decay-fraction", type=float, default=SaeTrainConfig.lr_decay_fraction)
    p.add_argument("--auxk-alpha", type=float, default=1 / 32)
    p.add_argument("--dead-tokens", type=int, default=0, help="dead-latent threshold for AuxK (0 = tokens / 8)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--activations", help=".safetensors with tensor 'x' (N, d): real activations instead")
    p.add_argument("--only", choices=["ours", "sparsify"], help="run one side (for profiling)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's Triton decoder needs a GPU

    if args.activations:
        from safetensors.torch import load_file

        x_all = load_file(args.activations)["x"]
        n_eval = min(args.held_out, x_all.shape[0] // 10)
        gen = torch.Generator().manual_seed(args.seed)
        x_all = x_all[torch.randperm(x_all.shape[0], generator=gen)]
        train, held_out = x_all[n_eval:], x_all[:n_eval]
        source = f"{args.activations} ({x_all.shape[0]} x {x_all.shape[1]}, {x_all.dtype})"
    else:
        t = time.perf_counter()
        x_all = synthetic_activations(args.tokens + args.held_out, args.d, args.seed)  # one dictionary for both
        train, held_out = x_all[: args.tokens], x_all[args.tokens :]
        source = f"synthetic seed {args.seed} ({time.perf_counter() - t:.1f} s to generate)"
    d = train.shape[1]
    args.tokens = min(args.tokens, train.shape[0]) if args.activations else args.tokens
    args.dead_tokens = args.dead_tokens or max(args.batch_size, args.tokens // 8)
    train_cfg = SaeTrainConfig(lr=args.lr, lr_decay_fraction=args.lr_decay_fraction, batch_size=args.batch_size,
                               n_tokens=args.tokens, seed=args.seed, device="cpu", log_every=1)
    sae_cfg = SaeConfig(d_in=d, n_latents=args.latents, k=args.k, k_aux=d // 2, auxk_alpha=args.auxk_alpha,
                        dead_tokens=args.dead_tokens, b_init="mean")
    print(f"data: {source}; train {args.tokens} tokens, held-out {held_out.shape[0]}; d={d} latents={args.latents} "
          f"k={args.k} batch={args.batch_size} lr={args.lr} auxk_alpha={args.auxk_alpha:.4g} k_aux={d // 2} "
          f"dead_tokens={args.dead_tokens} threads={torch.get_num_threads()}")

    results = {}
    if args.only != "sparsify":
        res = train_sae(train, sae_cfg, train_cfg, progress=False)
        fvu_ours = held_out_fvu(lambda b: res.sae(b).x_hat, held_out, args.batch_size)
        results["ours"] = (res.metrics["tokens_per_s"], fvu_ours)
        print(f"ours:     {res.metrics['tokens_per_s']:9.0f} tokens/s  held-out FVU {fvu_ours:.4f}  "
              f"(last-batch train FVU {res.history[-1]['fvu']:.4f}, dead {res.metrics['dead_fraction']:.3f})")
    if args.only != "ours":
        sae, tps, last_fvu, dead = train_sparsify(train, args, train_cfg, d)
        fvu_theirs = held_out_fvu(lambda b: sae(b).sae_out, held_out, args.batch_size)
        results["sparsify"] = (tps, fvu_theirs)
        print(f"sparsify: {tps:9.0f} tokens/s  held-out FVU {fvu_theirs:.4f}  "
              f"(last-batch train FVU {last_fvu:.4f}, dead {dead:.3f})")
    if len(results) == 2:
        (tps_o, fvu_o), (tps_s, fvu_s) = results["ours"], results["sparsify"]
        print(f"RESULT throughput_ratio={tps_o / tps_s:.3f} fvu_ours={fvu_o:.4f} fvu_sparsify={fvu_s:.4f}")


if __name__ == "__main__":
    main()
