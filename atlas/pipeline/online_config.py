"""Options of online SAE training (`atlas train-online`, atlas.pipeline.online).

Kept free of heavy imports: the CLI builds its options from it at startup."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from atlas.errors import BadInputError

KEEPABLE = ("dictionary", "test")
"""The splits online mode can keep: the held-out ones (the train split is what it does not store)."""


@dataclass
class OnlineConfig:
    """Options of `atlas train-online`: SAEs trained while the images are generated, without the dense cache of
    the training images' activations."""

    buffer_gb: float = 4.0
    """Disk for the shuffle buffer, in GB (10^9 bytes): the train-split positions of the last few batches of
    images, of every (block, t, branch), read mixed; each new batch replaces the oldest. More disk mixes more
    images into each SAE batch, nearer to training from the full cache."""
    keep: list[str] = field(default_factory=lambda: list(KEEPABLE))
    """Held-out splits whose images (PNGs and activations) stay in --activations, an activation directory: its
    test images score the SAEs, and `atlas encode`, `link` (dictionary images) and `report` (test images) read it
    as they read one written by `atlas capture`."""
    keep_images: int = 0
    """Keep at most this many images, the first ones of the kept splits (0: all of them, a fifth of the prompts
    with both splits)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.buffer_gb) and self.buffer_gb > 0):
            raise BadInputError(f"--buffer-gb must be a positive number of GB, got {self.buffer_gb}")
        unknown = [split for split in self.keep if split not in KEEPABLE]
        if unknown or not self.keep:
            raise BadInputError(f"--keep takes {' and/or '.join(KEEPABLE)} (the held-out splits), got "
                                f"{','.join(self.keep) or 'nothing'}")
        if self.keep_images < 0:
            raise BadInputError(f"--keep-images must be 0 (all) or more, got {self.keep_images}")

    @property
    def buffer_bytes(self) -> int:
        return int(self.buffer_gb * 1e9)
