"""Reconstruction and sparsity metrics, with golden-value tests, because SAE libraries have shipped wrong ones.

Conventions: variance is always taken around the per-feature mean (SAELens once took it around zero, which
flatters activations with a large mean); a latent "fires" on a token when it is selected AND its activation is
strictly positive (TopK can select zeros); dataset-level metrics accumulate sums over the whole dataset rather
than averaging per-batch ratios.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from atlas.errors import BadInputError
from atlas.files import atomic_write

if TYPE_CHECKING:
    from atlas.sae.model import Sae

ActivationData = Tensor | Iterable[Tensor]
"""(N, d) activations, or an iterable of (n_i, d) chunks (e.g. read one file at a time)."""


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained: sum((x - x_hat)^2) / sum((x - mean_x)^2), mean per feature over the batch."""
    x = x.reshape(-1, x.shape[-1]).double()
    x_hat = x_hat.reshape(-1, x_hat.shape[-1]).double()
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


def explained_variance(x: Tensor, x_hat: Tensor) -> Tensor:
    """1 - FVU (mean-centred)."""
    return 1.0 - fvu(x, x_hat)


def l0(top_acts: Tensor) -> Tensor:
    """Mean number of strictly positive activations per token."""
    acts = top_acts.reshape(-1, top_acts.shape[-1])
    return (acts > 0).sum(1).double().mean()


def dead_fraction(fire_counts: Tensor) -> float:
    """Fraction of latents that never fired (count 0) over the tokens the counts were taken on."""
    return float((fire_counts == 0).double().mean())


class DeadLatentTracker:
    """Tokens since each latent last fired; dead = not fired for `dead_tokens` tokens (OpenAI/sparsify rule)."""

    def __init__(self, n_latents: int, dead_tokens: int, device: str | torch.device | None = None) -> None:
        self.dead_tokens = dead_tokens
        self.tokens_since_fired = torch.zeros(n_latents, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, top_acts: Tensor, top_indices: Tensor) -> None:
        """Count one batch: every latent ages by its token count, latents with an activation > 0 reset to 0."""
        top_acts = top_acts.reshape(-1, top_acts.shape[-1])
        self.tokens_since_fired += top_acts.shape[0]
        fired = top_indices.reshape(top_acts.shape)[top_acts > 0]
        self.tokens_since_fired[fired] = 0

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.dead_tokens

    def dead_fraction(self) -> float:
        return float(self.dead_mask().double().mean())


class LatentStats(NamedTuple):
    frequency: Tensor
    """(n_latents,) fraction of tokens on which the latent fires (selected with activation > 0)."""
    mean_activation: Tensor
    """(n_latents,) mean activation over the tokens where it fires (0 if it never fires)."""
    fire_counts: Tensor
    """(n_latents,) int64 number of tokens on which it fires."""
    n_tokens: int


def iter_batches(data: ActivationData, batch_size: int) -> Iterator[Tensor]:
    """Consecutive batches in data order (chunks of an iterable are split, never merged; empty ones skipped)."""
    chunks = [data] if isinstance(data, Tensor) else data
    for chunk in chunks:
        chunk = chunk.reshape(-1, chunk.shape[-1])
        if chunk.shape[0]:
            yield from chunk.split(batch_size)


@torch.no_grad()
def _scan(sae: Sae, data: ActivationData, batch_size: int) -> tuple[dict[str, float], LatentStats]:
    n = sae.n_latents
    counts = torch.zeros(n, dtype=torch.int64, device=sae.device)
    act_sums = torch.zeros(n, dtype=torch.float64, device=sae.device)
    sse = cos_sum = hat_sq = hat_dot = 0.0
    active = 0
    seen = 0
    mean = m2 = None  # running per-feature mean and sum of squared deviations (Chan et al.'s merge)
    was_training = sae.training
    sae.eval()
    try:
        for batch in iter_batches(data, batch_size):
            x = batch.to(device=sae.device, dtype=sae.dtype)
            enc = sae.encode(x)
            x_hat = sae.decode(enc.top_acts, enc.top_indices)
            xd, hd = x.double(), x_hat.double()
            sse += float((xd - hd).pow(2).sum())
            cos_sum += float(torch.nn.functional.cosine_similarity(xd, hd, dim=1, eps=1e-12).sum())
            hat_sq += float(hd.pow(2).sum())
            hat_dot += float((hd * xd).sum())
            fired = enc.top_acts > 0
            active += int(fired.sum())
            counts += torch.bincount(enc.top_indices[fired], minlength=n)
            act_sums.index_add_(0, enc.top_indices[fired], enc.top_acts[fired].double())
            xb = x.double()
            nb = xb.shape[0]
            mean_b = xb.mean(0)
            m2_b = (xb - mean_b).pow(2).sum(0)
            if mean is None:
                mean, m2 = mean_b, m2_b
            else:
                delta = mean_b - mean
                total = seen + nb
                mean = mean + delta * (nb / total)
                m2 = m2 + m2_b + delta.pow(2) * (seen * nb / total)
            seen += nb
    finally:
        sae.train(was_training)
    if seen == 0:
        raise BadInputError("no tokens to evaluate")
    total_variance = float(m2.sum())
    fvu_value = sse / total_variance if total_variance > 0 else math.nan
    stats = LatentStats(
        frequency=(counts.double() / seen).cpu(),
        mean_activation=(act_sums / counts.clamp_min(1)).float().cpu(),
        fire_counts=counts.cpu(),
        n_tokens=seen,
    )
    metrics = {
        "fvu": fvu_value,
        "explained_variance": 1.0 - fvu_value,
        "l0": active / seen,
        "dead_fraction": dead_fraction(counts),
        "n_tokens": seen,
        "mse": sse / (seen * sae.d_in),
        "cosine": cos_sum / seen,
        "relative_reconstruction_bias": hat_sq / hat_dot if hat_dot else math.nan,
    }
    return metrics, stats


def evaluate(sae: Sae, data: ActivationData, batch_size: int = 4096) -> dict[str, float]:
    """fvu, explained_variance, l0, dead_fraction (never fired on `data`) and n_tokens over the whole dataset; mse
    (per element), cosine (mean over tokens of cos(x, x_hat), 0 for a zero reconstruction) and
    relative_reconstruction_bias, sum ||x_hat||^2 / sum <x_hat, x> (the gamma of Rajamanoharan et al. 2024 that
    best rescales x_hat onto x: below 1 the SAE shrinks its reconstructions, 1 none)."""
    return _scan(sae, data, batch_size)[0]


def latent_stats(sae: Sae, data: ActivationData, batch_size: int = 4096) -> LatentStats:
    """Per-latent firing frequency and mean activation when firing."""
    return _scan(sae, data, batch_size)[1]


def evaluate_with_stats(sae: Sae, data: ActivationData, batch_size: int = 4096) -> tuple[dict[str, float], LatentStats]:
    """`evaluate` and `latent_stats` in one pass over the data."""
    return _scan(sae, data, batch_size)


def frequency_counts(frequency: Tensor, cuts: tuple[float, ...] = (0.01, 0.1)) -> dict[str, int]:
    """How many latents fire on more than each fraction of the tokens ("freq_over_1pct": ..., SAEBench's counts
    of dense latents)."""
    return {f"freq_over_{cut * 100:g}pct": int((frequency > cut).sum()) for cut in cuts}


def decoder_cosines(w_dec: Tensor, block: int = 4096) -> tuple[float, float]:
    """(max, mean over latents of the max) cosine between a decoder row and any other row: how near duplicates
    the dictionary's concept vectors come (1 = two identical concepts). Blocks of rows keep memory at block * n."""
    w = torch.nn.functional.normalize(w_dec.detach().double(), dim=1)
    best = torch.empty(w.shape[0], dtype=torch.float64, device=w.device)
    for start in range(0, w.shape[0], block):
        sims = w[start:start + block] @ w.T
        rows = torch.arange(start, start + sims.shape[0], device=w.device)
        sims[rows - start, rows] = -math.inf
        best[start:start + sims.shape[0]] = sims.max(1).values
    return float(best.max()), float(best.mean())


def bench_metrics(sae: Sae, data: ActivationData, batch_size: int = 4096) -> dict[str, float]:
    """The static half of the diffusion SAEBench on `data`: `evaluate`'s figures, the alive fraction, the counts of
    latents firing on > 1 % and > 10 % of tokens and the decoder's max / mean-max cosine."""
    metrics, stats = evaluate_with_stats(sae, data, batch_size)
    max_cos, mean_max_cos = decoder_cosines(sae.W_dec)
    return {**metrics, "alive_fraction": 1.0 - metrics["dead_fraction"], **frequency_counts(stats.frequency),
            "max_decoder_cosine": max_cos, "mean_max_decoder_cosine": mean_max_cos}


def write_metrics(
    sae: Sae, directory: str | Path, metrics: dict[str, Any] | None = None, stats: LatentStats | None = None
) -> None:
    """stats.parquet with one row per latent (latent, frequency, mean_activation, decoder_norm), then metrics.json;
    each atomically, metrics.json last since a resumed `atlas train` skips an SAE that has it."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if stats is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "latent": pa.array(range(sae.n_latents), pa.int32()),
                "frequency": stats.frequency.double().numpy(),
                "mean_activation": stats.mean_activation.float().numpy(),
                "decoder_norm": sae.W_dec.detach().float().norm(dim=1).cpu().numpy(),
            }
        )
        atomic_write(path / "stats.parquet", lambda tmp: pq.write_table(table, tmp))
    if metrics is not None:
        text = json.dumps(metrics, indent=2, sort_keys=True, default=float) + "\n"
        atomic_write(path / "metrics.json", lambda tmp: tmp.write_text(text))
