"""Options of `atlas evolve` (and of the build's evolve stage); free of heavy imports, the CLI reads it at startup."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvolveConfig:
    """Options of `atlas evolve`."""

    max_images: int = 0
    """Images whose activations every SAE encodes at every captured step, taken in capture batches (0: all)."""
    active_fraction: float = 0.05
    """A concept is active at a step when it fires on at least this share of the images."""
    links: int = 3
    """Lineage links kept per concept in each direction: its best children and its best parents."""
    min_cosine: float = 0.0
    """Decoder cosine a lineage link needs at least."""
    min_coactivation: float = 0.05
    """Coactivation (cosine of the two concepts' activation maps on the same images and positions) a lineage link
    needs at least."""
