"""Options of a capture: which hook points, timesteps and CFG halves to record.

Kept free of heavy imports: the CLI builds its options from it at startup."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CaptureConfig:
    """Options of `atlas capture`."""

    blocks: list[str] = field(default_factory=lambda: ["down", "mid", "up"])
    """Hook points: aliases (down, mid, up) or UNet module names."""
    t: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.0])
    """Timesteps to record; t = 1.0 is the first denoising step (pure noise)."""
    branches: list[str] = field(default_factory=lambda: ["cond", "uncond"])
    """CFG halves to record: cond, uncond (both: the two)."""
    steps: int = 0
    """DDIM steps (0 = the model's default)."""
    guidance: float | None = None
    """Classifier-free guidance scale (unset: the model's own default)."""
    seed: int = 0
    """Image i is generated with seed + i."""
    batch_size: int = 32
    """Images per batch; one shard per (block, t, branch) and batch, so memory stays bounded."""


@dataclass
class StreamConfig:
    """How training reads an activation directory (atlas.capture.stream)."""

    buffer_tokens: int = 1 << 20
    """Positions held in memory and shuffled together while streaming shards to SAE training (fp16: positions x
    width x 2 bytes); a shard must fit, and memory stays the same whatever the number of positions."""
