"""Options of `atlas export`, kept free of heavy imports so that `atlas --help` stays instant."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExportConfig:
    """What `atlas export` writes."""

    top_images: int = 10
    """Top images kept per concept in the Neuronpedia records (by the concept's largest value in the image)."""
