"""Train one TopK SAE on cached activations: Adam, AuxK on dead latents, unit-norm decoder rows.

The data stay on the CPU (they are usually larger than the accelerator's memory); only batches move to the
device. A tensor is shuffled globally each epoch; an iterable of chunks (one file at a time) is shuffled
within a chunk and should be written in random order.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

from atlas.errors import BadInputError
from atlas.models.device import pick_device
from atlas.sae.config import SaeConfig, SaeTrainConfig
from atlas.sae.metrics import ActivationData, DeadLatentTracker, l0
from atlas.sae.model import Sae


class TrainResult(NamedTuple):
    sae: Sae
    metrics: dict[str, Any]
    """Summary: the last logging window's fvu / auxk_loss / l0, dead_fraction, steps, tokens, seconds, tokens_per_s."""
    history: list[dict[str, Any]]
    """One entry per `log_every` steps, averaged over those steps."""


def shuffled_batches(
    data: ActivationData, batch_size: int, n_tokens: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """CPU batches of exactly `batch_size` rows until about `n_tokens` tokens (0 = until an iterable ends).

    A tensor smaller than one batch gives batches of all its rows. An iterable's leftover rows are carried into
    the next chunk, so no token is dropped at chunk boundaries.
    """
    if isinstance(data, Tensor):
        data = data.reshape(-1, data.shape[-1])
        n = data.shape[0]
        bs = min(batch_size, n)
        steps = max(1, n_tokens // bs)
        per_epoch = n // bs
        for epoch_start in range(0, steps, per_epoch):
            perm = torch.randperm(n, generator=generator)
            for i in range(min(per_epoch, steps - epoch_start)):
                yield data[perm[i * bs : (i + 1) * bs]]
        return
    emitted = 0
    carry: Tensor | None = None
    for chunk in data:
        chunk = chunk.reshape(-1, chunk.shape[-1])
        if carry is not None and carry.shape[0]:
            chunk = torch.cat([carry, chunk.to(carry.dtype)])
        perm = torch.randperm(chunk.shape[0], generator=generator)
        full = chunk.shape[0] // batch_size * batch_size
        for i in range(0, full, batch_size):
            if n_tokens and emitted + batch_size > n_tokens:
                return
            yield chunk[perm[i : i + batch_size]]
            emitted += batch_size
        carry = chunk[perm[full:]]


def _lr_factor(step: int, total_steps: int | None, cfg: SaeTrainConfig) -> float:
    factor = 1.0
    if cfg.lr_warmup_steps > 0:
        factor = min(1.0, (step + 1) / cfg.lr_warmup_steps)
    if total_steps and cfg.lr_decay_fraction > 0:
        decay_steps = max(1, round(total_steps * cfg.lr_decay_fraction))
        remaining = total_steps - step
        if remaining <= decay_steps:
            factor *= max(remaining, 0) / decay_steps
    return factor


def make_optimizer(sae: Sae, cfg: SaeTrainConfig) -> torch.optim.Adam:
    """Adam; the fused kernel where it exists (CPU and CUDA fp32): one pass over 2 x n_latents x d_in weights
    instead of a dozen, about 5x faster on CPU than torch's default per-tensor loop."""
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in sae.parameters())
    return torch.optim.Adam(sae.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=fused or None)


def train_sae(
    data: ActivationData,
    sae_config: SaeConfig,
    train_config: SaeTrainConfig | None = None,
    progress: bool = True,
    sae: Sae | None = None,
) -> TrainResult:
    """Train (or continue training `sae`) on (N, d_in) activations or an iterable of such chunks."""
    from tqdm.auto import tqdm

    cfg = train_config or SaeTrainConfig()
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    generator = torch.Generator().manual_seed(cfg.seed)
    fresh = sae is None
    if sae is None:
        sae = Sae(sae_config, device=device, generator=generator)
    sae.to(device).train()

    if isinstance(data, Tensor):
        n_data = data.reshape(-1, data.shape[-1]).shape[0]
        total_tokens = cfg.n_tokens or int(cfg.epochs * n_data)
        bs = min(cfg.batch_size, n_data)
        total_steps: int | None = max(1, total_tokens // bs)
    else:
        total_tokens = cfg.n_tokens
        total_steps = cfg.n_tokens // cfg.batch_size or None
    batches = shuffled_batches(data, cfg.batch_size, total_tokens, generator)
    first = next(batches, None)
    if first is None:
        raise BadInputError("no training batch: the data hold fewer tokens than one batch")
    if fresh:
        sae.init_bias(first)
    batches = itertools.chain([first], batches)

    optimizer = make_optimizer(sae, cfg)
    tracker = DeadLatentTracker(sae.n_latents, sae.cfg.dead_after(total_tokens), device=device)
    alpha = sae.cfg.auxk_alpha
    use_bf16 = cfg.autocast and device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )

    history: list[dict[str, Any]] = []
    window = {"steps": 0}
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # summed on device: no sync per step on CUDA
    tokens = 0
    step = 0
    start = time.perf_counter()
    bar = tqdm(total=total_tokens or None, unit="tok", unit_scale=True, disable=not progress, desc="sae")
    for step, batch in enumerate(batches, start=1):
        x = batch.to(device=device, dtype=torch.float32, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step - 1, total_steps, cfg)
        dead_mask = tracker.dead_mask() if alpha > 0 else None
        with autocast:
            out = sae(x, dead_mask=dead_mask)
        loss = out.fvu + alpha * out.auxk_loss if alpha > 0 else out.fvu
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()
        tracker.update(out.top_acts.detach(), out.top_indices)

        sums += torch.stack([out.fvu.detach(), out.auxk_loss.detach(), l0(out.top_acts.detach())]).double()
        window["steps"] += 1
        tokens += x.shape[0]
        bar.update(x.shape[0])
        if step % cfg.log_every == 0 or (total_steps is not None and step == total_steps):
            history.append(_log_entry(step, tokens, start, sums, window, tracker, optimizer))
            bar.set_postfix(fvu=f"{history[-1]['fvu']:.4f}", dead=f"{history[-1]['dead_fraction']:.3f}")
            sums.zero_()
            window["steps"] = 0
    bar.close()
    if window["steps"]:
        history.append(_log_entry(step, tokens, start, sums, window, tracker, optimizer))
    seconds = time.perf_counter() - start
    last = history[-1]
    metrics = {
        "fvu": last["fvu"],
        "auxk_loss": last["auxk_loss"],
        "l0": last["l0"],
        "dead_fraction": tracker.dead_fraction(),
        "steps": step,
        "n_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else math.nan,
        "device": str(device),
        "bf16_autocast": use_bf16,
    }
    return TrainResult(sae, metrics, history)


def _log_entry(
    step: int,
    tokens: int,
    start: float,
    sums: Tensor,
    window: dict[str, Any],
    tracker: DeadLatentTracker,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    fvu_sum, auxk_sum, l0_sum = (float(v) / window["steps"] for v in sums.tolist())
    elapsed = time.perf_counter() - start
    return {
        "step": step,
        "tokens": tokens,
        "fvu": fvu_sum,
        "auxk_loss": auxk_sum,
        "l0": l0_sum,
        "dead_fraction": tracker.dead_fraction(),
        "lr": optimizer.param_groups[0]["lr"],
        "tokens_per_s": tokens / elapsed if elapsed > 0 else math.nan,
    }
