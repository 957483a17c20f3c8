"""Capture the residual updates delta = output - input of hooked blocks while images are generated.

An activation directory holds:
    prompts.jsonl                       image_id, prompt, split, seed (fixed before any work starts)
    manifest.json                       model, keys (block, t, branch), dtype, steps, guidance
    images/000123.png                   the generated images
    shards/<block>/t<t>/<branch>/batch-000004.safetensors
                                        x (positions, d) fp16, bf16 or fp32 (--dtype), image_id int32,
                                        row int16, col int16
    done/batch-000004.json              written last: a batch is complete when its marker exists

Shards and markers are written to a temporary name and renamed, so an interrupted run leaves no
half-written file that counts; running again skips complete batches and redoes the others. The
directory may be a local path or a pyarrow filesystem URI (s3://bucket/acts; atlas.location). The
batches run on an executor (any object with `map(job, items)`, such as atlas.pipeline.executor's): in
this process, or on Ray actors that each load the model once and write their batches' images and
shards; the driver writes the done markers. Each prompt's split is a stable hash of its text
(atlas.capture.splits).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load, save

from atlas.capture.config import BRANCHES, CaptureConfig, Key
from atlas.capture.plan import CapturePlan, plan_capture
from atlas.capture.splits import split_of
from atlas.errors import BadInputError, ConflictError, NotFoundError, UnavailableError
from atlas.location import Location
from atlas.models.base import TextToImageModel
from atlas.models.hooks import Hooks, StepInfo, t_to_step
from atlas.models.loader import load_model
from atlas.models.sampler import sample_latents
from atlas.progress import bar as progress_bar
from atlas.store.ids import concept_prefix

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class PromptRecord:
    image_id: int
    prompt: str
    split: str
    seed: int


class Executor(Protocol):
    """Runs a job's items and yields their results (atlas.pipeline.executor has a local and a Ray one)."""

    def map(self, job: Any, items: Iterable) -> Iterator: ...


def run_here(job: Any, items: Iterable) -> Iterator:
    """A job's items one after another in this process (what an executor does when none is given)."""
    items = list(items)
    if items:
        worker = job.start(None)
        yield from (worker(item) for item in items)


def shard_name(block: str, t: float, branch: str, batch: int) -> str:
    return f"shards/{block}/t{float(t)}/{branch}/batch-{batch:06d}.safetensors"


def marker_name(batch: int) -> str:
    return f"done/batch-{batch:06d}.json"


def done_batches(out: Location) -> list[int]:
    """Batches whose done marker exists, i.e. whose images and shards are complete."""
    return sorted(int(name.split("-")[1].split(".")[0]) for name in out.files("done", ".json"))


def plan_prompts(prompts: list[str], seed: int) -> list[PromptRecord]:
    """Give every prompt an image id, a seed and its split (a stable hash of the text)."""
    return [PromptRecord(i, p, split_of(p), seed + i) for i, p in enumerate(prompts)]


class _Recorder:
    """A delta handler that keeps this batch's activations of the selected (block, t, branch), in the stored dtype."""

    def __init__(self, steps_to_t: dict[int, float], keys: list[Key], dtype: torch.dtype) -> None:
        self.steps_to_t, self.keys, self.dtype = steps_to_t, set(keys), dtype
        self.buffers: dict[Key, torch.Tensor] = {}

    def __call__(self, block: str, step: StepInfo, delta: torch.Tensor) -> None:
        t = self.steps_to_t[step.index]
        for branch, d in zip(BRANCHES, delta.chunk(2)):
            if (block, t, branch) in self.keys:
                stored = d.permute(0, 2, 3, 1).reshape(-1, d.shape[1]).to(self.dtype)
                if self.dtype == torch.float16 and not bool(stored.isfinite().all()) and bool(d.isfinite().all()):
                    raise BadInputError(f"{block} at t = {t:g}: activations up to {float(d.abs().max()):.3g} "
                                        "overflow fp16 storage (max 65504); capture again with --dtype bf16 or fp32")
                self.buffers[(block, t, branch)] = stored.cpu()
        return None


def delta_at(model: TextToImageModel, prompts: list[str], seeds: list[int], block: str, step: int,
             branch: str = "cond", steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise one batch; returns (final latents, the `branch` half of delta at `block` on step index `step`)."""
    model.check_branches([branch])
    seen: dict[str, torch.Tensor] = {}
    half = BRANCHES.index(branch)

    def record(_block: str, _step: StepInfo, delta: torch.Tensor) -> None:  # None: read only, the image is untouched
        seen["delta"] = delta.chunk(2)[half].clone()

    hooks = Hooks().on(block, record, steps=[step])
    latents = sample_latents(model, prompts, seeds, steps, None, hooks)
    return latents, seen["delta"]


@dataclass
class _CaptureJob:
    """The per-batch work of one capture, picklable for Ray: generate a batch, write its images and shards."""

    out: Location
    model_source: str
    keys: list[Key]
    steps_to_t: dict[int, float]
    dtype: str
    steps: int
    guidance: float
    model: TextToImageModel | None = None
    """The driver's loaded model, used in this process; it is not pickled: a Ray worker loads its own."""
    on_step: Callable[[int], None] | None = None
    """Called with the batch size after each denoising step, in this process only (progress); not pickled."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "model": None, "on_step": None}

    def start(self, device: str | None) -> Callable[[tuple[int, list[PromptRecord]]], dict]:
        if self.model is None and not self.model_source:
            raise BadInputError("Ray workers cannot load a model built in memory; save it and load it with load_model")
        return partial(self.run, self.model or load_model(self.model_source, device=device))

    def run(self, model: TextToImageModel, item: tuple[int, list[PromptRecord]]) -> dict:
        """Write batch `b`'s images and shards; returns its done marker for the driver to write."""
        b, batch = item
        recorder = _Recorder(self.steps_to_t, self.keys, TORCH_DTYPES[self.dtype])
        hooks = Hooks()
        blocks = list(dict.fromkeys(block for block, _, _ in self.keys))
        for block in blocks:
            hooks.on(block, recorder, steps=[step for step, t in self.steps_to_t.items()
                                             if any((block, t, branch) in recorder.keys for branch in BRANCHES)])
        step = partial(self.on_step, len(batch)) if self.on_step else None
        latents = sample_latents(model, [r.prompt for r in batch], [r.seed for r in batch], self.steps,
                                 self.guidance, hooks, on_step=step)
        for record, image in zip(batch, model.to_uint8(model.decode(latents))):
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            self.out.write(f"images/{record.image_id:06d}.png", png.getvalue())
        modules = {block: model.hook_module_name(block) for block in blocks}
        return write_shards(self.out, b, [r.image_id for r in batch], recorder.buffers, modules, self.dtype)


def write_shards(out: Location, b: int, image_ids: list[int], buffers: dict[Key, torch.Tensor],
                 modules: dict[str, str], dtype: str = CaptureConfig.dtype) -> dict:
    """Write batch `b`'s shard of each (block, t, branch) in `buffers`: (images x positions, d) vectors in `dtype`,
    image after image, each image's square grid row-major. Returns the batch's done marker (the driver writes
    it once every shard of the batch is there)."""
    grids: dict[str, list[int]] = {}
    for (block, t, branch), x in buffers.items():
        n_pos = x.shape[0] // len(image_ids)
        side = int(round(n_pos ** 0.5))
        grids[block] = [side, side, int(x.shape[1])]
        ids = torch.tensor(image_ids, dtype=torch.int32).repeat_interleave(n_pos)
        pos = torch.arange(n_pos).repeat(len(image_ids))
        tensors = {"x": x.to(TORCH_DTYPES[dtype]).contiguous(), "image_id": ids, "row": (pos // side).to(torch.int16),
                   "col": (pos % side).to(torch.int16)}
        meta = {"block": block, "t": str(t), "branch": branch, "module": modules[block]}
        out.write(shard_name(block, t, branch, b), save(tensors, metadata=meta))
    return {"batch": b, "image_ids": image_ids, "grids": grids}


@dataclass
class CaptureRun:
    """A capture checked and planned, nothing written yet; `run` writes it."""

    out: Location
    manifest: dict
    records: list[PromptRecord]
    todo: list[tuple[int, list[PromptRecord]]]
    """The batches without a done marker, with their numbers."""
    job: _CaptureJob
    plan: CapturePlan
    """The disk the batches still to capture need, and the free space at `out`."""

    def run(self, progress: bool = True, executor: Executor | None = None) -> Path | str:
        """Refuse when the disk cannot hold the plan, else write the manifest and every batch still to do."""
        self.plan.check()
        prepare_dir(self.out, self.manifest, self.records)
        left = sum(len(batch) for _, batch in self.todo)
        steps = self.job.steps  # the bar counts denoising steps of images: it moves within a batch
        bar = progress_bar(total=len(self.records) * steps, initial=(len(self.records) - left) * steps,
                           unit="img-step", desc=f"capture ({steps} steps per image)", disable=not progress)
        self.job.on_step = bar.update  # batches run in this process move it step by step; a Ray worker's do not
        done = bar.n
        for marker in (executor.map(self.job, self.todo) if executor is not None else run_here(self.job, self.todo)):
            self.out.write(marker_name(marker["batch"]), json.dumps(marker).encode())
            done += len(marker["image_ids"]) * steps
            bar.update(done - bar.n)
        bar.close()
        return self.out.local or self.out.uri


def prepare_capture(model: TextToImageModel, prompts: list[str], out_dir: str | Path,
                    config: CaptureConfig | None = None) -> CaptureRun:
    """Check a capture's options against the model and the directory (a capture with other settings there is
    refused), find the batches still to do and plan their disk. Reads only; `CaptureRun.run` writes."""
    config = config or CaptureConfig()
    if not prompts:
        raise BadInputError("no prompts to capture")
    out = Location(out_dir)
    keys = config.selected_keys()
    model.check_branches(branch for _, _, branch in keys)
    for block in dict.fromkeys(block for block, _, _ in keys):
        model.hook_module_name(block)
    ts = list(dict.fromkeys(t for _, t, _ in keys))
    steps, guidance = model.spec.steps(config.steps), model.spec.guidance(config.guidance)
    steps_to_t = {t_to_step(t, steps): t for t in ts}
    if len(steps_to_t) != len(ts):
        raise BadInputError(f"timesteps {', '.join(map(str, ts))} fall on the same step of {steps}; use more --steps")
    source = model.source or (str(model.path) if model.path else "")
    if source and Path(source).is_dir():
        source = str(Path(source).resolve())  # what later stages (edits, layout prediction) load the model from
    records = plan_prompts(prompts, config.seed)
    manifest = make_manifest(model.spec.name, source, config, steps, guidance, len(records), model.spec.resolution)
    done = set(done_batches(out)) if same_capture(out, manifest, records) else set()
    batches = [records[i:i + config.batch_size] for i in range(0, len(records), config.batch_size)]
    todo = [(b, batch) for b, batch in enumerate(batches) if b not in done]
    grids = json.loads(out.read(marker_name(min(done))))["grids"] if done else None
    plan = plan_capture(model, sum(len(batch) for _, batch in todo), config, out.uri, grids=grids)
    job = _CaptureJob(out, source, keys, steps_to_t, config.dtype, steps, guidance, model)
    return CaptureRun(out, manifest, records, todo, job, plan)


def capture(model: TextToImageModel, prompts: list[str], out_dir: str | Path, config: CaptureConfig | None = None,
            progress: bool = True, executor: Executor | None = None,
            say: Callable[[str], None] | None = None) -> Path | str:
    """Generate images for `prompts` and record delta at the chosen (block, t, branch) keys.

    The disk the images still to capture need is planned first (`say` receives the plan's table); a capture the
    disk cannot hold is refused before anything is written. Resumable: re-running with the same prompts and
    config continues (with either executor); a different config is refused. Returns the directory (a Path, or
    the URI of a remote one).
    """
    run = prepare_capture(model, prompts, out_dir, config)
    if say is not None:
        say(run.plan.format())
    return run.run(progress, executor)


def make_manifest(model: str, source: str, config: CaptureConfig, steps: int, guidance: float, n_images: int,
                  resolution: int) -> dict:
    """What manifest.json says of a capture: its model, options and the keys it records."""
    keys = config.selected_keys()
    blocks, ts, branches = (list(dict.fromkeys(key[i] for key in keys)) for i in range(3))
    return {"model": model, "source": source, "config": asdict(config), "steps": steps, "guidance": guidance,
            "blocks": blocks, "t": ts, "branches": branches, "keys": [list(key) for key in keys],
            "dtype": config.dtype, "n_images": n_images, "batch_size": config.batch_size, "resolution": resolution}


def same_capture(out: Location, manifest: dict, records: list[PromptRecord]) -> bool:
    """Whether `out` holds this capture already (False: it holds none); refuse a directory holding another one."""
    if not out.exists("manifest.json"):
        return False
    if with_defaults(json.loads(out.read("manifest.json"))) != manifest or out.read("prompts.jsonl").decode() != \
            _prompt_lines(records):
        raise ConflictError(f"{out} holds a capture with other prompts or settings; use a new --out directory "
                            "or the same options to resume")
    return True


def with_defaults(manifest: dict) -> dict:
    """A manifest with what a capture written before keys and dtype existed meant: fp16, every combination."""
    keys = [[b, t, br] for b in manifest["blocks"] for t in manifest["t"] for br in manifest["branches"]]
    config = {"keys": [], "dtype": "fp16", **manifest["config"]}
    return {**manifest, "keys": manifest.get("keys", keys), "dtype": manifest.get("dtype", "fp16"), "config": config}


def prepare_dir(out: Location, manifest: dict, records: list[PromptRecord]) -> None:
    """Write the manifest and the prompts of a new capture; refuse a directory holding another one."""
    if not same_capture(out, manifest, records):
        out.write("prompts.jsonl", _prompt_lines(records).encode())
        out.write("manifest.json", json.dumps(manifest, indent=2).encode())


def _prompt_lines(records: list[PromptRecord]) -> str:
    return "".join(json.dumps(asdict(r)) + "\n" for r in records)


class ActivationSet:
    """Read side of an activation directory: which (block, t, branch) exist, and their vectors."""

    def __init__(self, path: str | Path) -> None:
        self.location = Location(path)
        self.path: Path | str = self.location.local or self.location.uri
        if not self.location.exists("manifest.json"):
            raise NotFoundError(f"{self.path} is not an activation directory (no manifest.json); "
                                "make one with `atlas capture --out DIR`")
        self.manifest = with_defaults(json.loads(self.location.read("manifest.json")))
        self.prompts = [PromptRecord(**json.loads(line))
                        for line in self.location.read("prompts.jsonl").decode().splitlines()]
        self.done = done_batches(self.location)

    def marker(self, batch: int) -> dict:
        """The done marker of one batch (its image ids and the blocks' grids)."""
        return json.loads(self.location.read(marker_name(batch)))

    @property
    def dtype(self) -> torch.dtype:
        """The stored vectors' dtype."""
        return TORCH_DTYPES[self.manifest["dtype"]]

    def keys(self) -> list[Key]:
        return [(b, float(t), br) for b, t, br in self.manifest["keys"]]

    def check_key(self, block: str, t: float, branch: str) -> None:
        m = self.manifest
        if block not in m["blocks"]:
            raise NotFoundError(f"block {block!r} was not captured in {self.path}; captured: {', '.join(m['blocks'])}")
        if float(t) not in [float(x) for x in m["t"]]:
            raise NotFoundError(f"t={t} was not captured in {self.path}; captured: {', '.join(map(str, m['t']))}")
        if branch not in m["branches"]:
            raise NotFoundError(f"branch {branch!r} was not captured; captured: {', '.join(m['branches'])}")
        if (block, float(t), branch) not in self.keys():
            captured = ", ".join(concept_prefix(*key) for key in self.keys())
            raise NotFoundError(f"{concept_prefix(block, t, branch)} was not captured in {self.path}; "
                                f"captured: {captured}")

    def shards(self, block: str, t: float, branch: str) -> Iterator[dict[str, torch.Tensor]]:
        self.check_key(block, t, branch)
        for b in self.done:
            yield self.shard(block, t, branch, b)

    def shard(self, block: str, t: float, branch: str, batch: int) -> dict[str, torch.Tensor]:
        name = shard_name(block, t, branch, batch)
        try:
            return load(self.location.read(name))
        except Exception as err:  # safetensors raises several types for a damaged file
            raise self.damaged(block, t, branch, batch) from err

    def damaged(self, block: str, t: float, branch: str, batch: int) -> UnavailableError:
        """The error for a shard that cannot be read or does not hold what its done marker says."""
        name = self.location.name(shard_name(block, t, branch, batch))
        return UnavailableError(f"corrupt or missing activation shard {name}: delete its {marker_name(batch)} and "
                                "re-run the same `atlas capture` to redo it")

    def image_ids(self, split: str | None) -> set[int] | None:
        """Ids of the images in `split` (None: no filter)."""
        return None if split is None else {r.image_id for r in self.prompts if r.split == split}

    def split_shards(self, block: str, t: float, branch: str, split: str | None = None
                     ) -> Iterator[dict[str, torch.Tensor]]:
        """The shards of one (block, t, branch) in batch order, each cut to the rows of images in `split`."""
        keep = self.image_ids(split)
        for shard in self.shards(block, t, branch):
            yield shard if keep is None else keep_images(shard, keep)

    def vectors(self, block: str, t: float, branch: str, split: str | None = None) -> Iterator[torch.Tensor]:
        """The vectors x (stored dtype) of one (block, t, branch), a shard at a time, optionally of one split only."""
        for shard in self.split_shards(block, t, branch, split):
            yield shard["x"]

    def load(self, block: str, t: float, branch: str, split: str | None = None) -> dict[str, torch.Tensor]:
        """All vectors of one (block, t, branch), optionally only of images in one split."""
        parts: dict[str, list[torch.Tensor]] = {"x": [], "image_id": [], "row": [], "col": []}
        for shard in self.split_shards(block, t, branch, split):
            for key in parts:
                parts[key].append(shard[key])
        if not parts["x"]:
            raise NotFoundError(f"no finished batches in {self.path}; run `atlas capture` first")
        return {k: torch.cat(v) for k, v in parts.items()}


def keep_images(shard: dict[str, torch.Tensor], keep: set[int]) -> dict[str, torch.Tensor]:
    """The rows of a shard whose image is in `keep`."""
    mask = torch.from_numpy(np.isin(shard["image_id"].numpy(), list(keep)))
    return {key: value[mask] for key, value in shard.items()}
