"""Options of a capture: which hook points, timesteps and CFG halves to record, and at which precision.

Kept free of heavy imports: the CLI builds its options from it at startup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from atlas.errors import BadInputError

BRANCHES = ("uncond", "cond")  # the order of the CFG batch
BRANCH_ALIASES = {"both": ("cond", "uncond")}
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
"""Stored precisions of the activations and the bytes of one number."""

Key = tuple[str, float, str]
"""(block, t, branch): what one shard directory, and one SAE, holds."""


@dataclass
class CaptureConfig:
    """Options of `atlas capture`."""

    blocks: list[str] = field(default_factory=lambda: ["down", "mid", "up"])
    """Hook points: aliases (down, mid, up) or UNet module names."""
    t: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.0])
    """Timesteps to record; t = 1.0 is the first denoising step (pure noise)."""
    branches: list[str] = field(default_factory=lambda: ["cond", "uncond"])
    """CFG halves to record: cond, uncond (both: the two)."""
    keys: list[str] = field(default_factory=list)
    """Record only these (block, t, branch), spelled as SAE names: mid/1.0 (the cond branch), up/0.0/uncond,
    down/0.5/both; replaces --blocks, --t and --branches (empty: every combination of those)."""
    dtype: str = "fp16"
    """Stored precision of the activations: fp16, bf16 (2 bytes, fp32's range) or fp32 (4 bytes)."""
    steps: int = 0
    """DDIM steps (0 = the model's default)."""
    guidance: float | None = None
    """Classifier-free guidance scale (unset: the model's own default)."""
    seed: int = 0
    """Image i is generated with seed + i."""
    batch_size: int = 32
    """Images per batch; one shard per (block, t, branch) and batch, so memory stays bounded."""

    def selected_keys(self) -> list[Key]:
        """The (block, t, branch) to record: --keys when given, else every combination of blocks, t and branches.
        Raises a one-line error for a malformed key, an unknown branch, an unknown dtype or an empty selection."""
        if self.dtype not in DTYPE_BYTES:
            raise BadInputError(f"unknown dtype {self.dtype!r}; use {', '.join(DTYPE_BYTES)}")
        if self.keys:
            keys = [key for text in self.keys for key in parse_key(text)]
        else:
            for branch in self.branches:
                _branches(branch)
            keys = [(b, float(t), br) for b in self.blocks for t in self.t for br in self.branches]
        if not keys:
            raise BadInputError("capture needs at least one block, one t and one branch")
        return list(dict.fromkeys(keys))


def cond_only(branches: list[str], model: str, say: Callable[[str], None]) -> list[str]:
    """The default `branches` on model `model` without classifier-free guidance (FLUX): cond alone, with a note to
    `say` when that drops uncond (there is no uncond pass to read). Branches the user named stay as named: an uncond
    among them is refused in one line (`TextToImageModel.check_branches`)."""
    if "uncond" not in branches:
        return branches
    say(f"note: no uncond branch: --model {model} samples without classifier-free guidance (its uncond pass steers "
        "no image), so only cond is captured")
    return ["cond"]


def parse_key(text: str) -> list[Key]:
    """`mid/1.0` (cond), `up/0.0/uncond` or `down/0.5/both` -> its (block, t, branch) keys."""
    parts = str(text).strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise BadInputError(f"key {text!r} is not block/t or block/t/branch (e.g. mid/1.0 or up/0.0/uncond)")
    block, t_text, *branch = parts
    try:
        t = float(t_text)
    except ValueError:
        raise BadInputError(f"key {text!r}: t {t_text!r} is not a number (e.g. mid/1.0)") from None
    if not 0.0 <= t <= 1.0:
        raise BadInputError(f"key {text!r}: t must lie in [0, 1] (1.0 is the first step)")
    return [(block, t, br) for br in _branches(branch[0] if branch else "cond")]


def _branches(name: str) -> tuple[str, ...]:
    if name in BRANCH_ALIASES:
        return BRANCH_ALIASES[name]
    if name not in BRANCHES:
        raise BadInputError(f"unknown branch {name!r}; use cond, uncond or both")
    return (name,)


@dataclass
class StreamConfig:
    """How training reads an activation directory (atlas.capture.stream)."""

    buffer_tokens: int = 1 << 20
    """Positions held in memory and shuffled together while streaming shards to SAE training (positions x width x
    the stored dtype's bytes, 2 for fp16 and bf16); a shard must fit, and memory stays the same whatever the number
    of positions."""
