"""Training speed of each SAE type (TopK, BatchTopK, JumpReLU, Matryoshka-BatchTopK) beside EleutherAI sparsify's
TopK, at equal L0 (every type's k, sparsify's k) on the same activations.

Ours train through `atlas.sae.train_sae` (its tokens/s excludes the bias initialisation); sparsify's
`SparseCoder` runs its training step (forward -> fvu, backward, decoder-gradient projection, Adam, decoder renorm)
on the same batches. Every run first warms up on a few batches. The activations are an atlas's captured ones
(--activations DIR --key mid/1.0/cond) or, without --activations, bench/sae_vs_sparsify.py's synthetic tokens.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sae_variants.py --activations /work/tmp/sb-atlas/activations \
        --key mid/1.0/cond --threads 1

The last line is `RESULT sparsify_tok_s=<x> <type>_tok_s=<y> <type>_ratio=<ours/sparsify> <type>_l0=<z> ...`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import torch
from torch import Tensor

from atlas.sae import SaeConfig, SaeTrainConfig, evaluate, train_sae
from atlas.sae.config import SAE_TYPES
from atlas.sae.train import token_batches

WARMUP_STEPS = 5


def activations(args: argparse.Namespace) -> Tensor:
    if not args.activations:
        from sae_vs_sparsify import synthetic_activations

        return synthetic_activations(args.batch_size * args.steps, 128, args.seed)
    from atlas.capture import ActivationSet
    from atlas.capture.config import parse_key

    block, t, branch = parse_key(args.key)[0]
    return ActivationSet(args.activations).load(block, t, branch)["x"]


def sparsify_speed(data: Tensor, args: argparse.Namespace) -> float:
    """Tokens per second of sparsify's TopK training step on `args.steps` batches of the data."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(args.seed)
    sae = SparseCoder(data.shape[1], SparseCoderConfig(num_latents=args.latents, k=args.k), "cpu",
                      dtype=torch.float32)
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr)
    batches = token_batches(data, args.batch_size, args.seed)
    tokens = 0
    start = 0.0
    for step, batch in enumerate(itertools.islice(batches, WARMUP_STEPS + args.steps)):
        if step == WARMUP_STEPS:
            start, tokens = time.perf_counter(), 0
        x = batch.to(torch.float32)
        if step == 0:
            sae.b_dec.data = x.mean(0)
        out = sae(x=x, y=x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        tokens += x.shape[0]
    return tokens / (time.perf_counter() - start)


def our_speed(data: Tensor, sae_type: str, args: argparse.Namespace) -> tuple[float, float]:
    """(tokens per second, held-out L0) of our `sae_type` trained on `args.steps` batches after a warm-up run."""
    cfg = SaeConfig(d_in=data.shape[1], n_latents=args.latents, k=args.k, sae_type=sae_type)
    train = SaeTrainConfig(lr=args.lr, batch_size=args.batch_size, seed=args.seed, log_every=10**9)
    train_sae(data, cfg, SaeTrainConfig(**{**vars(train), "n_tokens": WARMUP_STEPS * args.batch_size}),
              progress=False)
    result = train_sae(data, cfg, SaeTrainConfig(**{**vars(train), "n_tokens": args.steps * args.batch_size}),
                       progress=False)
    return result.metrics["tokens_per_s"], evaluate(result.sae, data[: 8 * args.batch_size])["l0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", default="", help="Activation directory (empty: synthetic tokens).")
    parser.add_argument("--key", default="mid/1.0/cond", help="(block, t, branch) of the activations.")
    parser.add_argument("--latents", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's Triton decoder needs a GPU
    torch.set_num_threads(args.threads)
    data = activations(args).to(torch.float32)
    print(f"{data.shape[0]} tokens of width {data.shape[1]}, {args.latents} latents, k {args.k}, batch "
          f"{args.batch_size}, {args.steps} timed steps, {args.threads} threads")
    theirs = sparsify_speed(data, args)
    print(f"sparsify topk: {theirs:,.0f} tok/s")
    fields = [f"sparsify_tok_s={theirs:.0f}"]
    for sae_type in SAE_TYPES:
        ours, l0 = our_speed(data, sae_type, args)
        print(f"{sae_type}: {ours:,.0f} tok/s ({ours / theirs:.2f}x sparsify), held-out L0 {l0:.1f}")
        fields += [f"{sae_type}_tok_s={ours:.0f}", f"{sae_type}_ratio={ours / theirs:.3f}", f"{sae_type}_l0={l0:.2f}"]
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
