"""What a capture will write, known before it starts: the bytes per image of each (block, t, branch), the total
for the images still to capture, and the free space at the output. `capture` refuses a plan the disk cannot hold
before it writes anything.

    plan = plan_capture(model, 10_000, CaptureConfig(keys=["mid/1.0"], dtype="bf16"), "acts")
    print(plan.format())
    plan.check()        # UnavailableError when the disk cannot hold it

Each block's grid (h, w, d) comes from one forward pass of the denoiser at batch 1, hooked at the blocks, or, when a
capture resumes, from a done marker. The pass runs on fake tensors (shapes only, no arithmetic), so planning costs no
compute even for a 12B transformer on a CPU; a model whose forward needs real values gets a real pass instead.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from atlas.capture.config import DTYPE_BYTES, CaptureConfig
from atlas.errors import UnavailableError
from atlas.location import Location
from atlas.models.base import TextToImageModel
from atlas.models.hooks import Hooks, StepInfo
from atlas.store.ids import concept_prefix

INDEX_BYTES = 8
"""Stored with every position besides its vector: image_id (int32), row and col (int16)."""
SHARD_HEADER_BYTES = 1024
"""A shard's safetensors header (tensor names, shapes, metadata), at most."""
MARKER_BYTES = 1024
"""A batch's done marker, besides its image ids."""
SPARE = 0.05
"""Fraction of the free space a capture leaves free."""


@dataclass(frozen=True)
class PlanRow:
    """One (block, t, branch) of a capture: its grid and what one image's shard rows take."""

    block: str
    t: float
    branch: str
    grid: tuple[int, int, int]
    """Rows, columns and width d of the block's activations."""
    bytes_per_image: int

    @property
    def name(self) -> str:
        """The key as --keys spells it (also its SAE's name): mid/1.0, up/0.0/uncond."""
        return concept_prefix(self.block, self.t, self.branch)


@dataclass
class CapturePlan:
    """The disk a capture of `n_images` images needs, key by key, and the free space where it writes."""

    rows: list[PlanRow]
    n_images: int
    dtype: str
    other_bytes_per_image: int
    """The image's PNG (at most its raw pixels) and its share of the shard headers and done marker of its batch."""
    where: str
    free_bytes: int | None
    """Free space on the output's disk (None: unknown, as on object storage)."""

    @property
    def bytes_per_image(self) -> int:
        return sum(row.bytes_per_image for row in self.rows) + self.other_bytes_per_image

    @property
    def total_bytes(self) -> int:
        return self.n_images * self.bytes_per_image

    @property
    def fits(self) -> bool:
        """The disk holds the capture with SPARE of its free space left over (or its free space is unknown)."""
        return self.free_bytes is None or self.total_bytes <= self.free_bytes * (1 - SPARE)

    def check(self) -> None:
        """Raise a one-line UnavailableError when the disk cannot hold the capture."""
        if not self.fits:
            raise UnavailableError(
                f"capture needs {format_bytes(self.total_bytes)} at {self.where} but {format_bytes(self.free_bytes)} "
                f"are free (a capture leaves {SPARE:.0%} spare): capture fewer images, fewer keys (--keys), a smaller "
                "--dtype, or another output directory")

    def format(self) -> str:
        """A short table: one line per key, then the images' own bytes, then the total against the free space."""
        n = self.n_images
        lines = [f"capture plan: {n:,} images to capture, {self.dtype}, at {self.where}",
                 f"  {'key':<24} {'grid (h x w x d)':<18} {'per image':>10} {'total':>10}"]
        lines += [f"  {row.name:<24} {'x'.join(map(str, row.grid)):<18} {format_bytes(row.bytes_per_image):>10} "
                  f"{format_bytes(n * row.bytes_per_image):>10}" for row in self.rows]
        lines.append(f"  {'images, headers, markers':<43} {format_bytes(self.other_bytes_per_image):>10} "
                     f"{format_bytes(n * self.other_bytes_per_image):>10}")
        free = "free space unknown" if self.free_bytes is None else f"{format_bytes(self.free_bytes)} free"
        verdict = "" if self.fits else ": does not fit"
        lines.append(f"  {'total':<43} {format_bytes(self.bytes_per_image):>10} "
                     f"{format_bytes(self.total_bytes):>10} of {free}{verdict}")
        return "\n".join(lines)


def format_bytes(n: int) -> str:
    """Decimal units with three significant digits: 640 B, 34.8 KB, 1.8 TB."""
    value, power = float(n), 0
    while value >= 999.5 and power < 4:
        value, power = value / 1000, power + 1
    if power == 0:
        return f"{int(n)} B"
    return f"{value:.3g} {' KMGT'[power]}B" if value < 999.5 else f"{value:,.0f} TB"


def plan_capture(model: TextToImageModel, n_images: int, config: CaptureConfig | None = None,
                 out_dir: str | Path | None = None, free_bytes: int | None = None,
                 grids: dict[str, tuple[int, int, int]] | None = None) -> CapturePlan:
    """The plan of capturing `n_images` images with `config` into `out_dir`. The free space is measured at
    `out_dir` (its nearest existing parent) unless `free_bytes` is given; without either it is unknown. Each
    block's grid is measured by a forward pass (`block_grids`) unless `grids` gives it (a done marker's)."""
    config = config or CaptureConfig()
    keys = config.selected_keys()
    grids = {block: tuple(grid) for block, grid in grids.items()} if grids else \
        block_grids(model, list(dict.fromkeys(block for block, _, _ in keys)))
    number = DTYPE_BYTES[config.dtype]
    rows = [PlanRow(block, t, branch, grids[block], grids[block][0] * grids[block][1] *
                    (grids[block][2] * number + INDEX_BYTES)) for block, t, branch in keys]
    res = model.spec.resolution
    batch = min(config.batch_size, n_images) or config.batch_size
    other = res * (3 * res + 1) + 16 + math.ceil((len(keys) * SHARD_HEADER_BYTES + MARKER_BYTES) / batch)
    where = Location(out_dir) if out_dir is not None else None
    if free_bytes is None and where is not None:
        free_bytes = disk_free(where)
    return CapturePlan(rows, n_images, config.dtype, other, str(where) if where else "(no directory)", free_bytes)


def disk_free(where: Location) -> int | None:
    """Free bytes on the disk of a local directory (its nearest existing parent when it does not exist yet)."""
    path = where.local
    if path is None:
        return None
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def block_grids(model: TextToImageModel, blocks: list[str]) -> dict[str, tuple[int, int, int]]:
    """Each block's (rows, cols, d), from one forward pass of the denoiser at batch 1 (a DiT's on its token grid):
    on fake tensors when the model's forward allows it (shapes without arithmetic), else a real one."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            return _forward_grids(model, blocks)
    except Exception:  # an op without a shape rule, or one that needs values: measure on real tensors
        return _forward_grids(model, blocks)


@torch.no_grad()
def _forward_grids(model: TextToImageModel, blocks: list[str]) -> dict[str, tuple[int, int, int]]:
    grids: dict[str, tuple[int, int, int]] = {}

    def note(block: str, _step: StepInfo, delta: torch.Tensor) -> None:
        grids[block] = (int(delta.shape[2]), int(delta.shape[3]), int(delta.shape[1]))

    hooks = Hooks()
    for block in blocks:
        hooks.on(block, note)
    handles = hooks.attach(model)
    timestep = int(model.scheduler.config.num_train_timesteps) - 1
    hooks.step = StepInfo(0, 1, timestep)
    try:
        latents = torch.zeros(1, *model.latent_shape, device=model.device, dtype=model.dtype)
        model.predict(latents, timestep, model.encode_text([""]))
    finally:
        for handle in handles:
            handle.remove()
    return grids
