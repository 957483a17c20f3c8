"""Train TopK SAEs on cached activations: Adam, AuxK on dead latents, unit-norm decoder rows.

The data are a sequence of tokens cut into consecutive batches of `batch_size`: an in-memory tensor
(`TensorStream`: pass p over its rows in an order seeded by (seed, p)), a `TokenStream` such as
atlas.capture's `ShardStream` (shards read from disk through a bounded shuffle buffer), or any iterable of
chunks, taken in its order. The data stay where they are; only batches move to the device, cast to fp32 one
at a time.

`train_saes` trains several SAEs in one pass: every batch goes to each, and each ends exactly as it would
trained alone on the same batches. Given a checkpoint directory it writes the whole state -- weights, Adam,
the dead-latent counters, the log and the position in the data -- atomically every `checkpoint_minutes`, when
SIGINT or SIGTERM arrives (then the signal takes its course), when reading the data fails, and at the end.
Running again resumes and ends with the same SAEs as a run never interrupted: a stream's order is a function
of its seed and the position alone, so the position is all the random state there is to keep.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from atlas.errors import BadInputError, ConflictError, UnavailableError
from atlas.files import atomic_write
from atlas.models.device import pick_device
from atlas.sae.config import SaeConfig, SaeTrainConfig
from atlas.sae.metrics import ActivationData, DeadLatentTracker, l0
from atlas.sae.model import Sae

CHECKPOINT_NAME = "checkpoint.pt"
CHUNK_TOKENS = 1 << 14
"""Rows a stream hands over at a time: a few batches, so the copy out of its buffer stays small."""
SHARED_FIELDS = ("batch_size", "n_tokens", "epochs", "device", "autocast", "threads", "checkpoint_minutes")
"""Options of SaeTrainConfig that SAEs trained in one pass share (they see the same batches on one device)."""
RUN_ONLY_FIELDS = ("device", "threads", "checkpoint_minutes")
"""Options a resumed run may change: where and how often it runs, not what it computes."""


class TrainResult(NamedTuple):
    sae: Sae
    metrics: dict[str, Any]
    """Summary: the last logging window's fvu / auxk_loss / l0, dead_fraction, steps, tokens, seconds, tokens_per_s."""
    history: list[dict[str, Any]]
    """One entry per `log_every` steps, averaged over those steps."""


@runtime_checkable
class TokenStream(Protocol):
    """A resumable sequence of training tokens, endless (pass after pass over the data)."""

    n_tokens: int
    """Tokens in one pass."""

    def chunks(self, start: int = 0) -> Iterator[Tensor]:
        """(n, d) chunks of the sequence from token `start` on; every call gives the same sequence."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the sequence is made of; a checkpoint resumes only over the same."""
        ...


def permutation(n: int, *key: int) -> Tensor:
    """A permutation of range(n) that depends on `key` (non-negative ints) alone."""
    return torch.from_numpy(np.random.default_rng(key).permutation(n))


def shuffled_chunks(rows: Tensor, start: int, chunk_tokens: int, *key: int) -> Iterator[Tensor]:
    """Copies of `rows` in the order `permutation(len(rows), *key)`, from place `start` on, `chunk_tokens` at a time."""
    order = permutation(rows.shape[0], *key)
    for i in range(start, rows.shape[0], chunk_tokens):
        yield rows[order[i : i + chunk_tokens]]


class TensorStream:
    """The rows of an in-memory (..., d) tensor as a token stream: pass p in an order seeded by (seed, p)."""

    def __init__(self, x: Tensor, seed: int = 0, chunk_tokens: int = CHUNK_TOKENS) -> None:
        self.x = x.reshape(-1, x.shape[-1])
        self.n_tokens = self.x.shape[0]
        self.seed = seed
        self.chunk_tokens = chunk_tokens

    def chunks(self, start: int = 0) -> Iterator[Tensor]:
        if not self.n_tokens:
            return
        first, offset = divmod(start, self.n_tokens)
        for pass_index in itertools.count(first):
            yield from shuffled_chunks(self.x, offset, self.chunk_tokens, self.seed, pass_index)
            offset = 0

    def describe(self) -> dict[str, Any]:
        return {"tensor": list(self.x.shape), "dtype": str(self.x.dtype), "seed": self.seed}


def cut_batches(chunks: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Consecutive batches of exactly `batch_size` rows; a chunk's leftover rows start the next batch, so no
    token is dropped at chunk boundaries (only an incomplete last batch)."""
    carry: Tensor | None = None
    for chunk in chunks:
        chunk = chunk.reshape(-1, chunk.shape[-1])
        if carry is not None and carry.shape[0]:
            chunk = torch.cat([carry, chunk.to(carry.dtype)])
        full = chunk.shape[0] // batch_size * batch_size
        for i in range(0, full, batch_size):
            yield chunk[i : i + batch_size]
        carry = chunk[full:]


def as_stream(data: ActivationData | TokenStream, seed: int) -> TokenStream | None:
    """The data as a resumable stream (a tensor becomes a TensorStream), or None for a plain iterable."""
    if isinstance(data, Tensor):
        return TensorStream(data, seed)
    return data if isinstance(data, TokenStream) else None


def token_batches(data: ActivationData | TokenStream, batch_size: int, seed: int = 0) -> Iterator[Tensor]:
    """The batches `train_saes` trains on from the start (a tensor: passes seeded by `seed`), endless for a stream."""
    stream = as_stream(data, seed)
    return cut_batches(stream.chunks(0) if stream is not None else data, batch_size)


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


class _Run:
    """One SAE's training state: weights, Adam, dead-latent counters and the log of the current window."""

    def __init__(self, sae: Sae, cfg: SaeTrainConfig, total_tokens: int, device: torch.device, bf16: bool) -> None:
        self.sae = sae.to(device).train()
        self.cfg = cfg
        self.optimizer = make_optimizer(sae, cfg)
        self.tracker = DeadLatentTracker(sae.n_latents, sae.cfg.dead_after(total_tokens), device=device)
        self.alpha = sae.cfg.auxk_alpha
        self.autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if bf16
                         else contextlib.nullcontext())
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # summed on device: no sync per step on CUDA
        self.window_steps = 0
        self.history: list[dict[str, Any]] = []

    def step(self, x: Tensor, step: int, total_steps: int | None) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * _lr_factor(step - 1, total_steps, self.cfg)
        dead_mask = self.tracker.dead_mask() if self.alpha > 0 else None
        with self.autocast:
            out = self.sae(x, dead_mask=dead_mask)
        loss = out.loss + self.alpha * out.auxk_loss if self.alpha > 0 else out.loss
        loss.backward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sae.set_decoder_norm_to_unit_norm()
        self.tracker.update(out.top_acts.detach(), out.top_indices)
        self.sums += torch.stack([out.fvu.detach(), out.auxk_loss.detach(), l0(out.top_acts.detach())]).double()
        self.window_steps += 1

    def log(self, step: int, tokens: int, seconds: float) -> None:
        """Close the logging window: one history entry of its means."""
        fvu_mean, auxk_mean, l0_mean = (float(v) / self.window_steps for v in self.sums.tolist())
        self.history.append({
            "step": step, "tokens": tokens, "fvu": fvu_mean, "auxk_loss": auxk_mean, "l0": l0_mean,
            "dead_fraction": self.tracker.dead_fraction(), "lr": self.optimizer.param_groups[0]["lr"],
            "tokens_per_s": tokens / seconds if seconds > 0 else math.nan,
        })
        self.sums.zero_()
        self.window_steps = 0

    def settings(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this run."""
        train = {k: v for k, v in asdict(self.cfg).items() if k not in RUN_ONLY_FIELDS}
        return {"sae": self.sae.cfg.to_dict(), "train": train}

    def state(self) -> dict[str, Any]:
        return {"settings": self.settings(), "weights": self.sae.state_dict(), "optimizer": self.optimizer.state_dict(),
                "tokens_since_fired": self.tracker.tokens_since_fired, "sums": self.sums,
                "window_steps": self.window_steps, "history": self.history}

    def load(self, state: dict[str, Any]) -> None:
        self.sae.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tracker.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.sums.copy_(state["sums"])
        self.window_steps = state["window_steps"]
        self.history = list(state["history"])


class _StopSignals:
    """While active (in the main thread), SIGINT and SIGTERM only note their arrival, so that training stops
    between two steps; `deliver` then puts the old handlers back and raises the signal again."""

    def __init__(self, active: bool) -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if self.active:
            self.old = {sig: signal.signal(sig, self._note) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        self.old = {}

    def deliver(self) -> None:
        self.__exit__()
        signal.raise_signal(self.signum)
        raise KeyboardInterrupt  # the old handler let the process go on: still, a half-trained SAE is no result


def _shared_config(jobs: Sequence[tuple[SaeConfig, SaeTrainConfig]]) -> SaeTrainConfig:
    if not jobs:
        raise BadInputError("no SAE to train")
    first = jobs[0][1]
    differ = [name for name in SHARED_FIELDS if any(getattr(cfg, name) != getattr(first, name) for _, cfg in jobs)]
    if differ:
        raise BadInputError(f"SAEs trained in one pass share their batches: give them the same {', '.join(differ)}")
    return first


def _load_checkpoint(path: Path, device: torch.device, data: dict[str, Any], runs: list[_Run]) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        raise UnavailableError(f"cannot read the training checkpoint {path}: delete it to start over") from err
    if state["data"] != data or [s["settings"] for s in state["saes"]] != [run.settings() for run in runs]:
        raise ConflictError(f"{path} is the checkpoint of a run with other data or settings: give the same ones "
                            "to resume it, or delete it to start over")
    for run, saved in zip(runs, state["saes"]):
        run.load(saved)
    return state


def train_saes(
    data: ActivationData | TokenStream,
    jobs: Sequence[tuple[SaeConfig, SaeTrainConfig]],
    checkpoint: str | Path | None = None,
    progress: bool = True,
    saes: Sequence[Sae | None] | None = None,
    name: str = "sae",
) -> list[TrainResult]:
    """Train one SAE per (SaeConfig, SaeTrainConfig) in one pass over the data, or continue the given `saes`.

    The SAEs share the options of SHARED_FIELDS; a tensor is shuffled with the first one's seed. With a
    `checkpoint` directory the run is resumable (a tensor or a TokenStream; a plain iterable cannot resume).
    `name` labels the progress bar (the pipeline passes block/t/branch).
    """
    from atlas.progress import bar as progress_bar

    cfg = _shared_config(jobs)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    stream = as_stream(data, cfg.seed)
    if stream is not None:
        batch_size = min(cfg.batch_size, stream.n_tokens) or cfg.batch_size
        total_tokens = cfg.n_tokens or int(cfg.epochs * stream.n_tokens)
        total_steps: int | None = max(1, total_tokens // batch_size)
    elif checkpoint is not None:
        raise BadInputError("a resumable run needs a tensor or a TokenStream (atlas.capture.ShardStream), "
                            "not a plain iterable of chunks")
    else:
        batch_size, total_tokens = cfg.batch_size, cfg.n_tokens
        total_steps = cfg.n_tokens // cfg.batch_size or None
    use_bf16 = cfg.autocast and device.type == "cuda" and torch.cuda.is_bf16_supported()
    given = list(saes) if saes is not None else [None] * len(jobs)
    if len(given) != len(jobs):
        raise BadInputError(f"{len(given)} SAEs to continue for {len(jobs)} configurations: give one per configuration")
    runs = [_Run(sae or Sae(sae_cfg, device=device, generator=torch.Generator().manual_seed(train_cfg.seed)),
                 train_cfg, total_tokens, device, use_bf16) for (sae_cfg, train_cfg), sae in zip(jobs, given)]

    path = Path(checkpoint) / CHECKPOINT_NAME if checkpoint is not None else None
    data_key = stream.describe() if stream is not None else {}
    step = tokens = 0
    seconds = 0.0
    if path is not None and path.exists():
        state = _load_checkpoint(path, device, data_key, runs)
        step, tokens, seconds = state["step"], state["tokens"], state["seconds"]
    batches = cut_batches(stream.chunks(tokens) if stream is not None else data, batch_size)
    if step == 0:
        first = next(batches, None)
        if first is None:
            raise BadInputError("no training batch: the data hold fewer tokens than one batch")
        for run, sae in zip(runs, given):
            if sae is None:
                run.sae.init_bias(first)
        batches = itertools.chain([first], batches)

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"data": data_key, "step": step, "tokens": tokens, "seconds": elapsed(),
                 "saes": [run.state() for run in runs]}
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    start = time.perf_counter()
    last_save = start

    def elapsed() -> float:
        return seconds + time.perf_counter() - start

    bar = progress_bar(total=total_tokens or None, initial=tokens, unit="tok", unit_scale=True, disable=not progress,
                       desc=name if len(runs) == 1 else f"{name} ({len(runs)} saes)")
    with _StopSignals(path is not None) as stop:
        while total_steps is None or step < total_steps:
            try:
                batch = next(batches, None)
            except Exception:
                if path is not None:  # between two steps: a consistent state to resume from once the data are fixed
                    save()
                raise
            if batch is None:
                break
            x = batch.to(device=device, dtype=torch.float32, non_blocking=True)
            step += 1
            tokens += x.shape[0]
            for run in runs:
                run.step(x, step, total_steps)
                if step % run.cfg.log_every == 0 or step == total_steps:
                    run.log(step, tokens, elapsed())
            bar.update(x.shape[0])
            if runs[0].history and runs[0].history[-1]["step"] == step:
                bar.set_postfix(fvu=f"{runs[0].history[-1]['fvu']:.4f}",
                                dead=f"{runs[0].history[-1]['dead_fraction']:.3f}")
            if path is not None and (stop.signum is not None
                                     or time.perf_counter() - last_save > cfg.checkpoint_minutes * 60):
                save()
                last_save = time.perf_counter()
                if stop.signum is not None:
                    bar.close()
                    stop.deliver()
    bar.close()
    for run in runs:
        if run.window_steps:
            run.log(step, tokens, elapsed())
    if path is not None:
        save()
    total_seconds = elapsed()
    results = []
    for run in runs:
        last = run.history[-1]
        metrics = {
            "fvu": last["fvu"],
            "auxk_loss": last["auxk_loss"],
            "l0": last["l0"],
            "dead_fraction": run.tracker.dead_fraction(),
            "steps": step,
            "n_tokens": tokens,
            "seconds": total_seconds,
            "tokens_per_s": tokens / total_seconds if total_seconds > 0 else math.nan,
            "device": str(device),
            "bf16_autocast": use_bf16,
        }
        results.append(TrainResult(run.sae, metrics, run.history))
    return results


def train_sae(
    data: ActivationData | TokenStream,
    sae_config: SaeConfig,
    train_config: SaeTrainConfig | None = None,
    progress: bool = True,
    sae: Sae | None = None,
    checkpoint: str | Path | None = None,
) -> TrainResult:
    """Train (or continue training `sae`) on (N, d_in) activations, a TokenStream or an iterable of chunks."""
    return train_saes(data, [(sae_config, train_config or SaeTrainConfig())], checkpoint, progress, [sae])[0]
