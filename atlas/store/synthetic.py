"""Synthetic atlases with known codes: for the store's tests and its scale benchmark.

Latents follow a Zipf-like law (p ~ (rank + 20) ** -0.8 over shuffled latent ids), k distinct ones
per grid position, drawn independently per position; values are positive (a log-normal scale per
latent times an exponential). Independence makes this a pessimistic case for compression: real
codes are spatially coherent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from atlas.store import Atlas


def zipf_probabilities(rng: np.random.Generator, n_latents: int, exponent: float = 0.8,
                       offset: float = 20.0) -> np.ndarray:
    p = 1.0 / (np.arange(n_latents) + offset) ** exponent
    return rng.permutation(p / p.sum())


def synth_codes(rng: np.random.Generator, p: np.ndarray, scale: np.ndarray, first_image: int, n_images: int,
                grid: tuple[int, int], k: int) -> tuple[np.ndarray, ...]:
    """(image_id, row, col, latent, value) of n_images images: k distinct latents per position."""
    positions = grid[0] * grid[1]
    latents = rng.choice(len(p), size=(n_images * positions, k), p=p)
    while True:
        latents.sort(axis=1)
        duplicate = np.zeros(latents.shape, bool)
        duplicate[:, 1:] = latents[:, 1:] == latents[:, :-1]
        if not duplicate.any():
            break
        latents[duplicate] = rng.choice(len(p), size=int(duplicate.sum()), p=p)
    values = scale[latents] * rng.exponential(1.0, latents.shape) + 0.01
    image = np.repeat(np.arange(first_image, first_image + n_images, dtype=np.int32), positions * k)
    position = np.tile(np.repeat(np.arange(positions), k), n_images)
    return (image, position // grid[1], position % grid[1], latents.reshape(-1),
            values.reshape(-1).astype(np.float32))


@dataclass
class Synthetic:
    """What was written: codes per SAE id (concatenated arrays) and decoders per SAE id."""

    codes: dict[int, tuple[np.ndarray, ...]] = field(default_factory=dict)
    decoders: dict[int, np.ndarray] = field(default_factory=dict)
    image_ids: list[int] = field(default_factory=list)


def build(path: str | Path, n_images: int = 50, blocks: tuple[str, ...] = ("mid", "up"),
          times: tuple[float, ...] = (1.0, 0.0), n_latents: int = 64, d: int = 16, k: int = 4,
          grid: tuple[int, int] = (4, 4), batch_images: int = 16, seed: int = 0,
          threads: int | None = None) -> tuple[Atlas, Synthetic]:
    """A finished atlas, open for reading (codes finalized, indexes built, concept stats), and the truth it was
    built from."""
    from atlas.store import Atlas

    rng = np.random.default_rng(seed)
    atlas = Atlas.create(path, model_name="synthetic", threads=threads)
    truth = Synthetic()
    with atlas.writer() as writer:
        rows = writer.catalog
        prompts = rows.add_prompts([(f"prompt {i}", "train" if i % 5 else "test") for i in range(n_images)])
        truth.image_ids = rows.add_images([dict(prompt_id=p, seed=i, guidance=7.5, steps=20,
                                                path=f"images/{i:06d}.png") for i, p in enumerate(prompts)])
        for block in blocks:
            for t in times:
                decoder = rng.standard_normal((n_latents, d)).astype(np.float32)
                sae_id = rows.add_sae(block, t, "cond", k, n_latents, d, {"fvu": 0.1}, None, grid=grid,
                                      decoder=decoder)
                p, scale = zipf_probabilities(rng, n_latents), rng.lognormal(0.0, 0.5, n_latents)
                parts = [synth_codes(rng, p, scale, first, min(batch_images, n_images - first), grid, k)
                         for first in range(0, n_images, batch_images)]
                for part in parts:
                    writer.codes.write(sae_id, *part)
                truth.codes[sae_id] = tuple(np.concatenate(column) for column in zip(*parts))
                truth.decoders[sae_id] = decoder
                counts = np.bincount(truth.codes[sae_id][3], minlength=n_latents)
                rows.add_concepts(sae_id, counts / (n_images * grid[0] * grid[1]), scale,
                                  np.linalg.norm(decoder, axis=1))
        writer.codes.finalize()
    return atlas, truth
