"""Online mode: train the SAEs while the images are generated, with a bounded shuffle buffer on disk instead of
the dense activation cache (1.8 TB for the paper's 200k SD v1.4 images).

    train_online(model, prompts, "held-out", "saes", CaptureConfig(blocks=["mid"]), SaeJobConfig(),
                 OnlineConfig(buffer_gb=4))

The prompts are cut into batches of `CaptureConfig.batch_size` images and generated with the seeds and splits
`atlas capture` gives them (image i: seed + i), recording every (block, t, branch). As batch b lands:

- its images of the kept splits (dictionary and test by default) go to an activation directory: the files
  `atlas capture` writes, for those images only. The test images score the SAEs at the end exactly as
  `atlas train` scores them, and encode, link and report read the directory as usual.
- each key's train-split positions go to the buffer, OUT/online/buffer/, one file per (key, batch) in a seeded
  random order. The buffer holds the last S batches, S being what `buffer_gb` holds of full batches, so its
  files never take more than the cap; the oldest batch leaves when a new one comes.
- round b trains every SAE on a share of each batch in the buffer, shuffled together and cut into SAE batches
  (the rows left over start the next round's).

Each position is read as often as `atlas train` reads it from the full cache. Training takes
n_tokens = max(min_tokens, epochs x N) tokens for N train positions, as `train_one` does; batch b, holding n_b
of the positions, gives n_tokens x n_b // N of them, read cyclically in its stored order, an S-th in each of the
S rounds it spends in the buffer (S - 1 rounds after the last batch drain it). So every position is read the
floor or the ceiling of n_tokens / N times, the learning-rate schedule and the dead-latent rule see the same
length, and only the mixing differs: an SAE batch mixes the positions of at most S batches of images.

Resumable: a checkpoint (every SAE's weights, Adam state and dead-latent counters, the positions left over and
the next round) is written every `checkpoint_minutes`, at the end of the round in which SIGINT or SIGTERM
arrives, and at the end. Running again resumes; the batches its buffer needs and does not find on disk are
generated again (same seeds: the same positions), so it ends with the SAEs of an uninterrupted run on the same
device. The SAEs are written as `atlas train` writes them (OUT/<block>/t<t>/<branch>/), then OUT/online/ goes.

Encode: codes exist only for images whose activations exist. `atlas encode --activations HELD --saes OUT` puts
the kept images (a fifth of the prompts by default) and their codes in an atlas, which link and report use as
usual; the training images are not in it. For an atlas of every image, capture them with `atlas capture` (the
full cache, for as long as encode takes), encode, and delete the activations.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from atlas.capture import ActivationSet
from atlas.capture.config import CaptureConfig
from atlas.capture.record import (
    BRANCHES,
    make_manifest,
    marker_name,
    plan_prompts,
    prepare_dir,
    shard_name,
    write_shards,
)
from atlas.errors import BadInputError, ConflictError
from atlas.files import atomic_write
from atlas.location import Location
from atlas.models.base import TextToImageModel
from atlas.models.device import pick_device
from atlas.models.hooks import Hooks, StepInfo, t_to_step
from atlas.models.sampler import sample_latents
from atlas.pipeline.config import SaeJobConfig
from atlas.pipeline.online_config import OnlineConfig
from atlas.pipeline.train import HELD_OUT_SPLITS, SaeReport, sae_dir
from atlas.progress import bar as progress_bar
from atlas.sae import Sae, SaeConfig, SaeTrainConfig, evaluate_with_stats, write_metrics
from atlas.sae.config import parse_latents
from atlas.sae.train import _load_checkpoint, _Run, _StopSignals, permutation

Key = tuple[str, float, str]
WORK_DIR = "online"
"""Inside the SAE directory: the buffer, the checkpoint and the run's settings, removed once the SAEs are saved."""
STORED = torch.float16
"""The activations' precision in the buffer and the kept directory, as `atlas capture` stores them."""
HEADER_BYTES = 256
"""A buffer file's safetensors header, at most: its length (8 bytes) and one tensor's dtype, shape and offsets."""
INDEX_BYTES = 8
"""What a capture stores with every position besides its vector: image_id (int32), row and col (int16)."""


@dataclass(frozen=True)
class OnlineRound:
    """What `on_round` hears after each training round."""

    round: int
    rounds: int
    buffered_batches: int
    """Batches of images whose positions are in the buffer now."""
    buffer_bytes: int
    """Bytes of the buffer's files now."""
    cap_bytes: int


@dataclass
class _KeyState:
    """One SAE in training: its run (weights, Adam, dead-latent counters, log) and its place in its token sequence."""

    run: _Run
    total_steps: int
    step: int = 0
    tokens: int = 0
    carry: Tensor | None = None
    """Positions of the last round that did not fill an SAE batch; they start the next round's."""


@dataclass
class _Layout:
    """What one image gives each key: positions (rows x columns of its grid) and width; known from one batch."""

    positions: dict[Key, int] = field(default_factory=dict)
    width: dict[Key, int] = field(default_factory=dict)

    def to_json(self) -> list:
        return [[*key, self.positions[key], self.width[key]] for key in self.positions]

    @classmethod
    def from_json(cls, rows: list) -> _Layout:
        layout = cls()
        for block, t, branch, positions, width in rows:
            layout.positions[(block, float(t), branch)] = positions
            layout.width[(block, float(t), branch)] = width
        return layout


def format_bytes(n: float) -> str:
    """Bytes in decimal units: 2.1 GB, 1.9 TB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def train_online(model: TextToImageModel, prompts: list[str], acts_dir: str | Path, out: str | Path,
                 capture_config: CaptureConfig | None = None, config: SaeJobConfig | None = None,
                 online: OnlineConfig | None = None, progress: bool = True, say: Callable[[str], None] | None = None,
                 on_round: Callable[[OnlineRound], None] | None = None) -> list[SaeReport]:
    """Generate images for `prompts` and train one SAE per captured (block, t, branch) from a shuffle buffer of at
    most `online.buffer_gb` on disk; keep the held-out images in `acts_dir` and score the SAEs on its test split.

    `say` hears the buffer's size against the full cache's once the first batch shows the activations' sizes;
    `on_round` hears after every round. Returns the reports in key order, as `train_all` does. Running again
    with the same arguments resumes; finished SAEs are kept unless `config.retrain`."""
    run = _OnlineRun(model, prompts, acts_dir, Path(out), capture_config or CaptureConfig(), config or SaeJobConfig(),
                     online or OnlineConfig(), say or (lambda line: None))
    if run.train_keys:
        run.train(progress, on_round)
    run.keep_the_rest()
    return run.finish()


class _OnlineRun:
    """One online run: its prompts, batches, kept directory and buffer; `train` runs the rounds."""

    def __init__(self, model: TextToImageModel, prompts: list[str], acts_dir: str | Path, out: Path,
                 capture: CaptureConfig, config: SaeJobConfig, online: OnlineConfig,
                 say: Callable[[str], None]) -> None:
        self.model, self.out, self.capture, self.config, self.online = model, out, capture, config, online
        self.say = say
        if not prompts:
            raise BadInputError("no prompts to generate")
        if capture.keys or capture.dtype != "fp16":
            raise BadInputError("train-online records fp16 activations of every --blocks x --t x --branches; "
                                "--keys and --dtype are options of `atlas capture`")
        if len(config.k) != 1:
            raise BadInputError(f"online training trains one SAE per key: give one --k, not "
                                f"{','.join(map(str, config.k))}")
        if len(config.sae_type) != 1:
            raise BadInputError(f"online training trains one SAE per key: give one --sae-type, not "
                                f"{','.join(config.sae_type)}")
        self.blocks, self.branches = list(capture.blocks), list(capture.branches)
        self.ts = [float(t) for t in capture.t]
        if not (self.blocks and self.ts and self.branches):
            raise BadInputError("online training needs at least one block, one t and one branch")
        for branch in self.branches:
            if branch not in BRANCHES:
                raise BadInputError(f"unknown branch {branch!r}; use cond, uncond or both")
        model.check_branches(self.branches)
        self.modules = {block: model.hook_module_name(block) for block in self.blocks}
        self.steps, self.guidance = model.spec.steps(capture.steps), model.spec.guidance(capture.guidance)
        self.steps_to_t = {t_to_step(t, self.steps): t for t in self.ts}
        if len(self.steps_to_t) != len(self.ts):
            raise BadInputError(f"timesteps {capture.t} fall on the same step of {self.steps}; use more --steps")
        self.keys: list[Key] = [(b, t, br) for b in self.blocks for t in self.ts for br in self.branches]

        records = plan_prompts(prompts, capture.seed)
        kept = [r for r in records if r.split in online.keep]
        kept = kept[:online.keep_images] if online.keep_images else kept
        if not any(r.split == "train" for r in records):
            raise BadInputError(f"none of the {len(records)} prompts falls in the train split (80 % do, by a hash of "
                                "the text): give more prompts")
        if not kept:
            raise BadInputError(f"none of the {len(records)} prompts falls in the kept splits ({', '.join(online.keep)}"
                                ": 10 % each, by a hash of the text), which score the SAEs: give more prompts")
        self.n_images = len(records)
        self.kept_ids = {r.image_id for r in kept}
        self.held_out = next(s for s in HELD_OUT_SPLITS if any(r.split == s for r in kept))
        needed = [r for r in records if r.split == "train" or r.image_id in self.kept_ids]
        self.batches = [needed[i:i + capture.batch_size] for i in range(0, len(needed), capture.batch_size)]
        self.train_images = [sum(r.split == "train" for r in batch) for batch in self.batches]

        self.kept_dir = Location(acts_dir)
        source = model.source or (str(model.path) if model.path else "")
        if source and Path(source).is_dir():
            source = str(Path(source).resolve())
        manifest = {**make_manifest(model.spec.name, source, capture, self.steps, self.guidance, len(kept),
                                    model.spec.resolution),
                    "online": {"n_prompts": len(records), "keep": online.keep, "keep_images": online.keep_images}}
        self.work = out / WORK_DIR
        self.settings = {"model": model.spec.name, "prompts": hashlib.sha1("\n".join(prompts).encode()).hexdigest(),
                         "capture": asdict(capture), "online": asdict(online),
                         "sae": {k: v for k, v in asdict(config).items()
                                 if k not in ("device", "checkpoint_minutes", "retrain", "buffer_tokens")}}
        resumed = self._resumed_keys()  # both checks before anything is written
        prepare_dir(self.kept_dir, manifest, kept)
        if config.retrain:
            for key in self.keys:
                (sae_dir(out, *key) / "metrics.json").unlink(missing_ok=True)
        self.train_keys = resumed if resumed is not None else self._start()
        self.device = pick_device(config.device)
        self.bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.states: dict[Key, _KeyState] = {}
        self._pending: dict[int, dict[Key, Tensor]] = {}
        """Activations of a batch generated before the buffer could take them (the first one, to learn sizes)."""

    def _resumed_keys(self) -> list[Key] | None:
        """The keys of the interrupted run in the work directory (None: there is none); refuses another run's."""
        path = self.work / "run.json"
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        if {k: v for k, v in saved.items() if k != "keys"} != self.settings:
            raise ConflictError(f"{self.work} holds an online run with other prompts or settings: give the same "
                                f"options to resume it, or delete {self.work} to start over")
        return [(b, float(t), br) for b, t, br in saved["keys"]]

    def _start(self) -> list[Key]:
        """The keys without a finished SAE, recorded in the work directory for a resumed run to train the same."""
        keys = [key for key in self.keys if not (sae_dir(self.out, *key) / "metrics.json").exists()]
        if keys:
            self.work.mkdir(parents=True, exist_ok=True)
            text = json.dumps({**self.settings, "keys": keys})
            atomic_write(self.work / "run.json", lambda tmp: tmp.write_text(text))
        return keys

    # --- generation ---------------------------------------------------------------------------------------------

    def _generate(self, b: int) -> dict[Key, Tensor]:
        """Denoise batch `b`: every key's activations, (images x positions, width), image after image. Its kept
        images go to the kept directory unless they are there already."""
        batch = self.batches[b]
        buffers: dict[Key, Tensor] = {}

        def record(block: str, step: StepInfo, delta: Tensor) -> None:  # None: read only, the image is untouched
            t = self.steps_to_t[step.index]
            for branch, half in zip(BRANCHES, delta.chunk(2)):
                if branch in self.branches:
                    buffers[(block, t, branch)] = half.permute(0, 2, 3, 1).reshape(-1, half.shape[1]).to(STORED).cpu()

        hooks = Hooks()
        for block in self.blocks:
            hooks.on(block, record, steps=self.steps_to_t)
        latents = sample_latents(self.model, [r.prompt for r in batch], [r.seed for r in batch], self.steps,
                                 self.guidance, hooks)
        rows = [m for m, r in enumerate(batch) if r.image_id in self.kept_ids]
        if rows and not self.kept_dir.exists(marker_name(b)):
            for m, image in zip(rows, self.model.to_uint8(self.model.decode(latents[rows]))):
                png = io.BytesIO()
                Image.fromarray(image).save(png, format="PNG")
                self.kept_dir.write(f"images/{batch[m].image_id:06d}.png", png.getvalue())
            kept = {key: _images(x, len(batch), rows) for key, x in buffers.items()}
            marker = write_shards(self.kept_dir, b, [batch[m].image_id for m in rows], kept, self.modules)
            self.kept_dir.write(marker_name(b), json.dumps(marker).encode())
        return buffers

    def keep_the_rest(self) -> None:
        """Generate the batches whose kept images are still missing from the kept directory (training did not need
        them: it was finished, or resumed past them after the directory lost them)."""
        for b, batch in enumerate(self.batches):
            if any(r.image_id in self.kept_ids for r in batch) and not self.kept_dir.exists(marker_name(b)):
                self._generate(b)

    def _layout(self) -> _Layout:
        path = self.work / "layout.json"
        if path.exists():
            return _Layout.from_json(json.loads(path.read_text()))
        buffers = self._pending[0] = self._generate(0)
        n = len(self.batches[0])
        layout = _Layout({key: x.shape[0] // n for key, x in buffers.items()},
                         {key: x.shape[1] for key, x in buffers.items()})
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(layout.to_json())))
        return layout

    # --- the buffer ---------------------------------------------------------------------------------------------

    def _slot(self, key: Key, b: int) -> Path:
        return self.work / "buffer" / shard_name(*key, b)

    def _rows(self, key: Key, b: int) -> int:
        """Train-split positions of `key` in batch `b`."""
        return self.train_images[b] * self.layout.positions[key]

    def _ensure(self, b: int) -> None:
        """Put batch `b`'s train positions of every key in training into the buffer, generating it if needed."""
        missing = [key for key in self.train_keys if self._rows(key, b) and not self._slot(key, b).exists()]
        if not missing:
            self._pending.pop(b, None)
            return
        buffers = self._pending.pop(b, None) or self._generate(b)
        batch = self.batches[b]
        rows = [m for m, r in enumerate(batch) if r.split == "train"]
        for key in missing:
            x = _images(buffers[key], len(batch), rows)
            x = x[permutation(x.shape[0], self.config.seed, 0, self.keys.index(key), b)].contiguous()
            path = self._slot(key, b)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp, x=x: save_file({"x": x}, str(tmp)))

    def _drop(self, keep: range) -> None:
        """Delete the buffer's files of batches outside `keep`."""
        for path in (self.work / "buffer").rglob("batch-*.safetensors"):
            if int(path.stem.split("-")[1]) not in keep:
                path.unlink()

    def buffer_bytes(self) -> int:
        return sum(path.stat().st_size for path in (self.work / "buffer").rglob("*") if path.is_file())

    def _read(self, key: Key, b: int, start: int, stop: int) -> Tensor:
        """Positions [start, stop) of batch `b`'s endless cyclic sequence for `key` (its stored order, repeated)."""
        n = self._rows(key, b)
        parts = []
        with safe_open(str(self._slot(key, b)), framework="pt") as f:
            rows = f.get_slice("x")
            while start < stop:
                first = start % n
                last = min(n, first + stop - start)
                parts.append(rows[first:last])
                start += last - first
        return torch.cat(parts)

    # --- training -----------------------------------------------------------------------------------------------

    def _plan(self) -> None:
        """Sizes, buffer slots and every SAE's token budget, once the layout is known."""
        self.layout = self._layout()
        itemsize = torch.finfo(STORED).bits // 8
        size = self.capture.batch_size
        slot_bytes = sum(size * self.layout.positions[k] * self.layout.width[k] * itemsize + HEADER_BYTES
                         for k in self.train_keys)
        cap = self.online.buffer_bytes
        if slot_bytes > cap:
            raise BadInputError(f"--buffer-gb {self.online.buffer_gb:g} holds no batch: the train positions of one "
                                f"batch of {size} images take {format_bytes(slot_bytes)} for {len(self.train_keys)} "
                                f"SAEs; give --buffer-gb {math.ceil(slot_bytes / 1e7) / 100:g} or more, or fewer "
                                "--images-per-batch")
        self.slots = min(len(self.batches), cap // slot_bytes)
        self.rounds = len(self.batches) + self.slots - 1
        self.cap = cap
        per_image = sum(self.layout.positions[k] * (self.layout.width[k] * itemsize + INDEX_BYTES) for k in self.keys)
        self.shares: dict[Key, list[int]] = {}
        self.n_train: dict[Key, int] = {}
        reads = []
        for key in self.train_keys:
            n = [self._rows(key, b) for b in range(len(self.batches))]
            self.n_train[key] = total = sum(n)
            n_tokens = max(self.config.min_tokens, int(self.config.epochs * total))
            self.shares[key] = [n_tokens * n_b // total for n_b in n]
            reads.append(sum(self.shares[key]) / total)
        self.say(f"online: buffer of {self.slots} batches of {size} images, at most "
                 f"{format_bytes(self.slots * slot_bytes)} on disk (capped at --buffer-gb {self.online.buffer_gb:g}), "
                 "instead of "
                 f"{format_bytes(per_image * self.n_images)} for the full cache of {self.n_images} images; "
                 f"{len(self.kept_ids)} held-out images kept in {self.kept_dir} "
                 f"({format_bytes(per_image * len(self.kept_ids))}); each training position is read "
                 f"{min(reads):.3g}{f' to {max(reads):.3g}' if max(reads) > min(reads) * 1.01 else ''} times")

    def _resident(self, j: int) -> range:
        """The batches in the buffer during round `j`."""
        return range(max(0, j - self.slots + 1), min(j, len(self.batches) - 1) + 1)

    def _make_states(self) -> dict[Key, _KeyState]:
        states = {}
        for key in self.train_keys:
            d = self.layout.width[key]
            n_latents = parse_latents(self.config.latents, d)
            sae_config = SaeConfig(d_in=d, n_latents=n_latents, k=min(self.config.k[0], n_latents),
                                   dead_tokens=self.config.dead_tokens, k_aux=min(256, n_latents // 2),
                                   sae_type=self.config.sae_type[0])
            total = sum(self.shares[key])
            batch_size = min(self.config.batch_size, self.n_train[key])
            train_config = SaeTrainConfig(lr=self.config.lr, batch_size=batch_size, n_tokens=total,
                                          seed=self.config.seed, device=self.config.device,
                                          checkpoint_minutes=self.config.checkpoint_minutes)
            sae = Sae(sae_config, device=self.device, generator=torch.Generator().manual_seed(self.config.seed))
            states[key] = _KeyState(_Run(sae, train_config, total, self.device, self.bf16),
                                    max(1, total // batch_size))
        return states

    def train(self, progress: bool, on_round: Callable[[OnlineRound], None] | None) -> None:
        """Run the rounds still to run (all of them, or those after the checkpoint)."""
        self._plan()
        self.states = states = self._make_states()
        path = self.work / "checkpoint.pt"
        data = {**self.settings, "keys": [list(k) for k in self.train_keys], "layout": self.layout.to_json(),
                "slots": self.slots}
        first, seconds = 0, 0.0
        if path.exists():
            saved = _load_checkpoint(path, self.device, data, [s.run for s in states.values()])
            first, seconds = saved["round"], saved["seconds"]
            for state, position in zip(states.values(), saved["positions"]):
                state.step, state.tokens, state.carry = position["step"], position["tokens"], position["carry"]
        self._drop(self._resident(first))
        start = time.perf_counter()
        self.seconds = lambda: seconds + time.perf_counter() - start

        def save(next_round: int) -> None:
            state = {"data": data, "round": next_round, "seconds": self.seconds(),
                     "saes": [s.run.state() for s in states.values()],
                     "positions": [{"step": s.step, "tokens": s.tokens, "carry": s.carry} for s in states.values()]}
            atomic_write(path, lambda tmp: torch.save(state, tmp))

        bar = progress_bar(total=self.rounds, initial=first, unit="round", desc="online", disable=not progress)
        last_save = time.perf_counter()
        with _StopSignals(True) as stop:
            for j in range(first, self.rounds):
                for b in self._resident(j):
                    self._ensure(b)
                for key, state in states.items():
                    self._train_round(key, state, j)
                if on_round is not None:  # the buffer at its fullest in this round
                    on_round(OnlineRound(j, self.rounds, len(self._resident(j)), self.buffer_bytes(), self.cap))
                self._drop(self._resident(j + 1))
                bar.update(1)
                history = next(iter(states.values())).run.history
                if history:
                    bar.set_postfix(fvu=f"{history[-1]['fvu']:.4f}")
                if stop.signum is not None or time.perf_counter() - last_save > self.config.checkpoint_minutes * 60:
                    save(j + 1)
                    last_save = time.perf_counter()
                    if stop.signum is not None:
                        bar.close()
                        stop.deliver()
        bar.close()
        save(self.rounds)

    def _train_round(self, key: Key, state: _KeyState, j: int) -> None:
        """Step `key`'s SAE on its share of every batch in the buffer during round `j`, shuffled together."""
        parts = [] if state.carry is None else [state.carry]
        mixed = []
        for b in self._resident(j):
            age, share = j - b, self.shares[key][b]
            start, stop = share * age // self.slots, share * (age + 1) // self.slots
            if stop > start:
                mixed.append(self._read(key, b, start, stop))
        if mixed:
            rows = torch.cat(mixed)
            parts.append(rows[permutation(rows.shape[0], self.config.seed, 1, self.keys.index(key), j)])
        if not parts:
            return
        rows = torch.cat(parts)
        size = state.run.cfg.batch_size
        full = rows.shape[0] // size * size
        for i in range(0, full, size):
            self._step(state, rows[i:i + size])
        state.carry = rows[full:].clone()

    def _step(self, state: _KeyState, batch: Tensor) -> None:
        run = state.run
        if state.step == 0:
            run.sae.init_bias(batch)
        x = batch.to(device=self.device, dtype=torch.float32, non_blocking=True)
        state.step += 1
        state.tokens += x.shape[0]
        run.step(x, state.step, state.total_steps)
        if state.step % run.cfg.log_every == 0 or state.step == state.total_steps:
            run.log(state.step, state.tokens, self.seconds())

    # --- the end ------------------------------------------------------------------------------------------------

    def finish(self) -> list[SaeReport]:
        """Score the SAEs trained now on the held-out images, write them as `atlas train` does, and drop the work
        directory; the reports of every key, in key order."""
        acts = ActivationSet(self.kept_dir.local or self.kept_dir.uri)
        reports = []
        for key in self.keys:
            path = sae_dir(self.out, *key)
            state = self.states.get(key)
            if state is None:
                metrics = json.loads((path / "metrics.json").read_text())
                reports.append(SaeReport(*key, path, metrics, metrics.get("scored_on", self.held_out), "",
                                         self.config.k[0], self.config.sae_type[0]))
                continue
            run = state.run
            if run.window_steps:
                run.log(state.step, state.tokens, self.seconds())
            seconds, last = self.seconds(), run.history[-1]
            trained = {"fvu": last["fvu"], "auxk_loss": last["auxk_loss"], "l0": last["l0"],
                       "dead_fraction": run.tracker.dead_fraction(), "steps": state.step, "n_tokens": state.tokens,
                       "seconds": seconds, "tokens_per_s": state.tokens / seconds if seconds > 0 else math.nan,
                       "device": str(self.device), "bf16_autocast": self.bf16}
            scores, stats = evaluate_with_stats(run.sae, acts.vectors(*key, self.held_out))
            metrics = {**scores, "scored_on": self.held_out, "train": trained, "n_train_tokens": self.n_train[key],
                       "online": {"buffer_batches": self.slots, "buffer_cap_bytes": self.cap,
                                  "reads_per_position": state.tokens / self.n_train[key]},
                       "sae_type": self.config.sae_type[0]}
            run.sae.save_pretrained(path)
            write_metrics(run.sae, path, metrics=metrics, stats=stats)  # metrics.json last: the SAE is done
            reports.append(SaeReport(*key, path, metrics, self.held_out, "", self.config.k[0], self.config.sae_type[0]))
        shutil.rmtree(self.work, ignore_errors=True)
        return reports


def _images(x: Tensor, n_images: int, rows: list[int]) -> Tensor:
    """The positions of images `rows` (indices into the batch) of a batch's (images x positions, width) tensor."""
    return x.view(n_images, -1, x.shape[1])[rows].reshape(-1, x.shape[1])
