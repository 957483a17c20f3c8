"""Options of `atlas export`, kept free of heavy imports so that `atlas --help` stays instant."""

from __future__ import annotations

from dataclasses import dataclass

from atlas.errors import BadInputError


@dataclass
class ExportConfig:
    """What `atlas export` writes."""

    top_images: int = 10
    """Top images kept per concept in the Neuronpedia records (by the concept's largest value in the image)."""

    def __post_init__(self) -> None:
        if self.top_images < 1:
            raise BadInputError(f"--top-images must be at least 1, got {self.top_images}")
