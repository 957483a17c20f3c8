"""Train SAEs per captured (block, t, branch), one per SAE type and k, and tabulate their explained variance (the
paper's Table 1).

Each SAE trains on the `train` split of an activation directory and is scored on held-out images (the
`test` split, else `dictionary`, else the training data itself, which the table then says). The SAEs of one
(block, t, branch) -- one per type and k -- train together in one pass over its shards. The first type's first
k's SAE is the primary one of its key, the others are variants named by atlas.store.ids.k_variants ("k20",
"jumprelu"). Checkpoints go to `<out>/<block>/t<t>/<branch>/` (the primary) and
`<out>/<block>/t<t>/<branch>@<variant>/` in `Sae.save_pretrained` layout, with metrics.json and stats.parquet
(per-latent firing frequency and mean activation, which edits use to scale their strength).
`train_all` runs its keys on an executor (atlas.pipeline.executor): one after another here, or spread over Ray
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
from atlas.errors import AtlasError, BadInputError, NotFoundError
from atlas.pipeline.config import SaeJobConfig
from atlas.pipeline.executor import Executor, LocalExecutor
from atlas.report.tables import ev_pivot
from atlas.sae import Sae, SaeConfig, SaeTrainConfig, evaluate_with_stats, train_saes, write_metrics
from atlas.sae.config import parse_latents
from atlas.sae.model import read_config
from atlas.store.ids import DEFAULT_VARIANT, branch_part, split_branch_part

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
    variant: str
    k: int
    sae_type: str = SaeConfig.sae_type


def held_out_split(acts: ActivationSet) -> str | None:
    """The split SAEs are scored on: the first of HELD_OUT_SPLITS the capture has, None when it has none."""
    return next((s for s in HELD_OUT_SPLITS if any(r.split == s for r in acts.prompts)), None)


def sae_dir(root: str | Path, block: str, t: float, branch: str, variant: str = DEFAULT_VARIANT) -> Path:
    return Path(root) / block / f"t{float(t)}" / branch_part(branch, variant)


def trained_variants(root: str | Path, block: str, t: float, branch: str) -> list[str]:
    """The variants of (block, t, branch) with a trained SAE under `root`, the primary ("") first."""
    found = (split_branch_part(path.parent.name) for path in sae_dir(root, block, t, branch).parent.glob(
        "*/sae.safetensors"))
    return sorted(variant for name, variant in found if name == branch)


def train_one(acts: ActivationSet, block: str, t: float, branch: str, out: str | Path,
              config: SaeJobConfig | None = None, progress: bool = True) -> list[SaeReport]:
    """Train, score and save the SAEs of one (block, t, branch), one per SAE type and k of `config` (the primary
    first), in one pass over its shards; a finished SAE is kept unless `retrain`.

    Training streams the shards (`config.buffer_tokens` positions in memory) and checkpoints into
    `<path>/checkpoint/` of the first SAE still to train, so an interrupted run resumes where it stopped; the
    checkpoint goes once the SAEs are saved."""
    config = config or SaeJobConfig()
    acts.check_key(block, t, branch)
    held_out = held_out_split(acts)
    reports: dict[str, SaeReport] = {}
    todo = []
    for variant, kind, k in config.saes():
        path = sae_dir(out, block, t, branch, variant)
        if (path / "metrics.json").exists():
            if not config.retrain:
                _check_k(path, kind, k, config)
                metrics = json.loads((path / "metrics.json").read_text())
                reports[variant] = SaeReport(block, float(t), branch, path, metrics,
                                             metrics.get("scored_on", held_out or "train"), variant, k, kind)
                continue
            (path / "metrics.json").unlink()  # unfinished from here: an interrupted retrain resumes without --retrain
        todo.append((variant, kind, k, path))
    if todo:
        reports.update({r.variant: r for r in _train(acts, block, t, branch, todo, held_out, config, progress)})
    return [reports[variant] for variant, _, _ in config.saes()]


def _train(acts: ActivationSet, block: str, t: float, branch: str, todo: list[tuple[str, str, int, Path]],
           held_out: str | None, config: SaeJobConfig, progress: bool) -> list[SaeReport]:
    """Train the SAEs of `todo` (variant, type, k, directory) of one key together, score and save them."""
    train_split = "train" if any(r.split == "train" for r in acts.prompts) else None
    stream = ShardStream(acts, block, t, branch, split=train_split, seed=config.seed,
                         buffer_tokens=config.buffer_tokens)
    n_latents = parse_latents(config.latents, stream.d_in)
    n_tokens = max(config.min_tokens, int(config.epochs * stream.n_tokens))
    train_config = SaeTrainConfig(lr=config.lr, batch_size=min(config.batch_size, stream.n_tokens), n_tokens=n_tokens,
                                  seed=config.seed, device=config.device, checkpoint_minutes=config.checkpoint_minutes)
    jobs = [(SaeConfig(d_in=stream.d_in, n_latents=n_latents, k=min(k, n_latents), dead_tokens=config.dead_tokens,
                       k_aux=min(256, n_latents // 2), sae_type=kind), train_config) for _, kind, k, _ in todo]
    checkpoint = todo[0][3] / CHECKPOINT_DIR
    results = train_saes(stream, jobs, checkpoint=checkpoint, progress=progress, name=f"sae {block}/{t}/{branch}")
    scored_on = held_out or "train"
    reports = []
    for (variant, kind, k, path), result in zip(todo, results):  # the held-out shards stream once per SAE
        metrics, stats = evaluate_with_stats(result.sae, acts.vectors(block, t, branch, held_out or train_split))
        metrics = {**metrics, "scored_on": scored_on, "train": result.metrics, "n_train_tokens": stream.n_tokens,
                   "sae_type": kind}
        result.sae.save_pretrained(path)
        write_metrics(result.sae, path, metrics=metrics, stats=stats)  # metrics.json last: the SAE is done
        reports.append(SaeReport(block, float(t), branch, path, metrics, scored_on, variant, k, kind))
    shutil.rmtree(checkpoint)
    return reports


def _check_k(path: Path, kind: str, k: int, config: SaeJobConfig) -> None:
    """A finished SAE kept for (`kind`, `k`) must have been trained with them: the first type's first k names the
    primary SAE."""
    saved = read_config(path)
    saved_kind = saved.get("sae_type", SaeConfig.sae_type)
    if saved["k"] != min(k, saved["n_latents"]) or saved_kind != kind:
        raise BadInputError(f"{path} holds an SAE with k={saved['k']}, but --k {','.join(map(str, config.k))} gives "
                            f"it k={k} ({saved_kind} there, {kind} by --sae-type {','.join(config.sae_type)}; the "
                            "first type's first k names each key's primary SAE, the others are named by what differs): "
                            "reorder --k or --sae-type, or pass --retrain")


def train_all(acts: ActivationSet, out: str | Path, config: SaeJobConfig | None = None, branch: str | None = None,
              progress: bool = True, executor: Executor | None = None,
              say: Callable[[str], None] | None = None) -> list[SaeReport]:
    """The SAEs (one per k) of every captured (block, t, branch), optionally of one branch only, each key a
    `train_one` on `executor` (default: here, one after another); `say` receives one line per key finished (its
    SAEs' explained variance and the worker). Returns the reports in the activation directory's key order."""
    keys = [SaeKey(*k) for k in acts.keys() if branch is None or k[2] == branch]
    if not keys:
        raise NotFoundError(f"no captured activations of branch {branch!r} in {acts.path}")
    job = _TrainJob(acts, Path(out).absolute(), config or SaeJobConfig(), progress)
    reports = {}
    for key, trained, worker in (executor or LocalExecutor()).map(job, keys, in_flight=1):
        reports[key] = [replace(r, path=sae_dir(out, *key, r.variant)) for r in trained]
        if say:
            evs = ", ".join(f"{r.metrics['explained_variance']:.3f}" + (f" ({r.variant})" if r.variant else "")
                            for r in trained)
            say(f"{key}: explained variance {evs} ({worker})")
    return [report for key in keys for report in reports[key]]


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

    def start(self, device: str | None) -> Callable[[SaeKey], tuple[SaeKey, list[SaeReport], str]]:
        if device is None:
            return partial(self.run, self.config, self.progress, "this process")
        config = replace(self.config, device=device) if self.config.device == "auto" else self.config
        worker = f"{config.device} worker {os.getpid()}@{socket.gethostname()}"
        return partial(self.run, config, False, worker)  # an actor's progress bars would go to its log only

    def run(self, config: SaeJobConfig, progress: bool, worker: str,
            key: SaeKey) -> tuple[SaeKey, list[SaeReport], str]:
        try:
            return key, train_one(self.acts, *key, self.out, config, progress), worker
        except AtlasError as err:  # the same meaning (a generic class: pickles for Ray), naming the SAE
            meaning = next(c for c in type(err).__mro__ if c.__module__ == AtlasError.__module__)
            raise meaning(f"{key}: {err.message}") from err
        except Exception as err:  # a bug: its traceback, which names the SAE too
            err.add_note(f"while training the {key}")
            raise


def load_sae(out: str | Path, block: str, t: float, branch: str, variant: str = DEFAULT_VARIANT) -> Sae:
    path = sae_dir(out, block, t, branch, variant)
    if not (path / "sae.safetensors").exists():
        raise NotFoundError(f"no SAE for {block} t={t} {branch_part(branch, variant)} in {out}; train it with "
                            "`atlas train`")
    return Sae.from_pretrained(path)


def ev_table(reports: list[SaeReport]) -> str:
    """Explained variance per block and k (rows) and t (columns), one table per branch and SAE type, as markdown."""
    lines = []
    for branch, kind in dict.fromkeys((r.branch, r.sae_type) for r in reports):
        mine = [r for r in reports if (r.branch, r.sae_type) == (branch, kind)]
        scored = ", ".join(sorted({r.scored_on for r in mine}))
        of = "" if kind == SaeConfig.sae_type else f", {kind} SAEs"
        lines += [f"Explained variance ({branch} branch{of}, held-out split: {scored})", "",
                  *ev_pivot([{"block": r.block, "t": r.t, "k": r.k,
                              "explained_variance": r.metrics["explained_variance"]} for r in mine]), ""]
    return "\n".join(lines)
