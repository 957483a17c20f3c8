"""Train one TopK SAE per captured (block, t, branch) and tabulate their explained variance (the paper's Table 1).

Each SAE trains on the `train` split of an activation directory and is scored on held-out images (the
`test` split, else `dictionary`, else the training data itself, which the table then says). Checkpoints go
to `<out>/<block>/t<t>/<branch>/` in `Sae.save_pretrained` layout, with metrics.json and stats.parquet
(per-latent firing frequency and mean activation, which edits use to scale their strength).
`train_all` runs its SAEs on an executor (atlas.pipeline.executor): one after another here, or spread over Ray
actors that each read the shards from the activation directory and write their SAE directories on storage
the driver shares; every SAE trains with the same seed either way, so gives the same weights.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

from atlas.capture import ActivationSet, ShardStream
from atlas.errors import AtlasError, NotFoundError
from atlas.pipeline.config import SaeJobConfig
from atlas.pipeline.executor import Executor, LocalExecutor
from atlas.sae import Sae, SaeConfig, SaeTrainConfig, evaluate_with_stats, train_sae, write_metrics
from atlas.sae.config import parse_latents

CHECKPOINT_DIR = "checkpoint"
"""Where an unfinished SAE's training state waits, inside its directory."""
HELD_OUT_SPLITS = ("test", "dictionary")


@dataclass(frozen=True)
class SaeReport:
    """One trained SAE: where it is and how well it reconstructs held-out activations."""

    block: str
    t: float
    branch: str
    path: Path
    metrics: dict
    scored_on: str


def sae_dir(root: str | Path, block: str, t: float, branch: str) -> Path:
    return Path(root) / block / f"t{float(t)}" / branch


def train_one(acts: ActivationSet, block: str, t: float, branch: str, out: str | Path,
              config: SaeJobConfig | None = None, progress: bool = True) -> SaeReport:
    """Train, score and save the SAE of one (block, t, branch); a finished SAE is kept unless `retrain`.

    Training streams the shards (`config.buffer_tokens` positions in memory) and checkpoints into
    `<path>/checkpoint/`, so an interrupted run resumes where it stopped; the checkpoint goes once the SAE is
    saved."""
    config = config or SaeJobConfig()
    acts.check_key(block, t, branch)
    path = sae_dir(out, block, t, branch)
    held_out = next((s for s in HELD_OUT_SPLITS if any(r.split == s for r in acts.prompts)), None)
    if (path / "metrics.json").exists():
        if not config.retrain:
            metrics = json.loads((path / "metrics.json").read_text())
            return SaeReport(block, float(t), branch, path, metrics, metrics.get("scored_on", held_out or "train"))
        (path / "metrics.json").unlink()  # unfinished from here on: an interrupted retrain resumes without --retrain
    train_split = "train" if any(r.split == "train" for r in acts.prompts) else None
    stream = ShardStream(acts, block, t, branch, split=train_split, seed=config.seed,
                         buffer_tokens=config.buffer_tokens)
    n_latents = parse_latents(config.latents, stream.d_in)
    sae_config = SaeConfig(d_in=stream.d_in, n_latents=n_latents, k=min(config.k, n_latents),
                           dead_tokens=config.dead_tokens, k_aux=min(256, n_latents // 2))
    n_tokens = max(config.min_tokens, int(config.epochs * stream.n_tokens))
    train_config = SaeTrainConfig(lr=config.lr, batch_size=min(config.batch_size, stream.n_tokens), n_tokens=n_tokens,
                                  seed=config.seed, device=config.device, checkpoint_minutes=config.checkpoint_minutes)
    result = train_sae(stream, sae_config, train_config, progress=progress, checkpoint=path / CHECKPOINT_DIR)
    scored_on = held_out or "train"
    metrics, stats = evaluate_with_stats(result.sae, acts.vectors(block, t, branch, held_out or train_split))
    metrics = {**metrics, "scored_on": scored_on, "train": result.metrics, "n_train_tokens": stream.n_tokens}
    result.sae.save_pretrained(path)
    write_metrics(result.sae, path, metrics=metrics, stats=stats)  # metrics.json last: the SAE is done
    shutil.rmtree(path / CHECKPOINT_DIR)
    return SaeReport(block, float(t), branch, path, metrics, scored_on)


def train_all(acts: ActivationSet, out: str | Path, config: SaeJobConfig | None = None, branch: str | None = None,
              progress: bool = True, executor: Executor | None = None,
              say: Callable[[str], None] | None = None) -> list[SaeReport]:
    """One SAE per captured (block, t, branch), optionally only one branch, each a `train_one` on `executor` (default:
    here, one after another); `say` receives one line per SAE finished (its explained variance and worker).
    Returns the reports in the activation directory's key order."""
    keys = [SaeKey(*k) for k in acts.keys() if branch is None or k[2] == branch]
    if not keys:
        raise NotFoundError(f"no captured activations of branch {branch!r} in {acts.path}")
    job = _TrainJob(acts, Path(out).absolute(), config or SaeJobConfig(), progress)
    reports = {}
    for key, report, worker in (executor or LocalExecutor()).map(job, keys, in_flight=1):
        reports[key] = replace(report, path=sae_dir(out, *key))
        if say:
            say(f"{key}: explained variance {report.metrics['explained_variance']:.3f} ({worker})")
    return [reports[key] for key in keys]


class SaeKey(NamedTuple):
    """Which SAE: its (block, t, branch)."""

    block: str
    t: float
    branch: str

    def __str__(self) -> str:
        return f"SAE {self.block} t={self.t} {self.branch}"


@dataclass(frozen=True)
class _TrainJob:
    """`train_one` of each SAE key into `out` (absolute: a Ray actor's working directory is not the driver's),
    picklable for Ray. A Ray actor trains on its own device unless the config names one."""

    acts: ActivationSet
    out: Path
    config: SaeJobConfig
    progress: bool

    def start(self, device: str | None) -> Callable[[SaeKey], tuple[SaeKey, SaeReport, str]]:
        if device is None:
            return partial(self.run, self.config, self.progress, "this process")
        config = replace(self.config, device=device) if self.config.device == "auto" else self.config
        worker = f"{config.device} worker {os.getpid()}@{socket.gethostname()}"
        return partial(self.run, config, False, worker)  # an actor's progress bars would go to its log only

    def run(self, config: SaeJobConfig, progress: bool, worker: str,
            key: SaeKey) -> tuple[SaeKey, SaeReport, str]:
        try:
            return key, train_one(self.acts, *key, self.out, config, progress), worker
        except AtlasError as err:  # the same meaning (a generic class: pickles for Ray), naming the SAE
            meaning = next(c for c in type(err).__mro__ if c.__module__ == AtlasError.__module__)
            raise meaning(f"{key}: {err.message}") from err
        except Exception as err:  # a bug: its traceback, which names the SAE too
            err.add_note(f"while training the {key}")
            raise


def load_sae(out: str | Path, block: str, t: float, branch: str) -> Sae:
    path = sae_dir(out, block, t, branch)
    if not (path / "sae.safetensors").exists():
        raise NotFoundError(f"no SAE for {block} t={t} {branch} in {out}; train it with `atlas train`")
    return Sae.from_pretrained(path)


def ev_table(reports: list[SaeReport]) -> str:
    """Explained variance per block (rows) and t (columns), one table per branch, as markdown."""
    lines = []
    for branch in dict.fromkeys(r.branch for r in reports):
        mine = [r for r in reports if r.branch == branch]
        ts = sorted({r.t for r in mine}, reverse=True)
        blocks = list(dict.fromkeys(r.block for r in mine))
        cell = {(r.block, r.t): r.metrics["explained_variance"] for r in mine}
        scored = ", ".join(sorted({r.scored_on for r in mine}))
        lines += [f"Explained variance ({branch} branch, held-out split: {scored})", "",
                  "| block | " + " | ".join(f"t={t}" for t in ts) + " |",
                  "|---|" + "---|" * len(ts)]
        lines += ["| " + b + " | " + " | ".join(f"{cell[(b, t)]:.3f}" if (b, t) in cell else "-" for t in ts) + " |"
                  for b in blocks]
        lines.append("")
    return "\n".join(lines)
