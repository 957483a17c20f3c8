"""What the atlas needs to know about a text-to-image model beyond its diffusers components."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPEC_FILE = "atlas_model.json"


@dataclass
class ModelSpec:
    """Hook-point aliases, sampling defaults and the latent <-> pixel mapping of one model.

    `hook_points` maps the aliases `down`, `mid`, `up` to module names inside the UNet; any
    other module name of a `Transformer2DModel` can be used directly. Pixel-space models have no
    VAE: `pixel_unshuffle` > 1 folds f x f pixel patches into channels (a lossless stand-in for a
    VAE), and `coord_channels` appends x/y coordinate planes to the UNet input.
    """

    name: str
    hook_points: dict[str, str]
    default_steps: int = 50
    default_guidance: float = 7.5
    resolution: int = 512
    pixel_unshuffle: int = 1
    coord_channels: bool = False
    vae_scaling_factor: float = 0.18215
    extra: dict = field(default_factory=dict)

    def guidance(self, guidance: float | None = None) -> float:
        """The CFG scale to use: `guidance`, or this model's default when it is None (the one place that says so)."""
        return self.default_guidance if guidance is None else float(guidance)

    def steps(self, steps: int | None = None) -> int:
        """DDIM steps to use: `steps`, or this model's default when it is None or 0."""
        return int(steps) if steps else self.default_steps

    def save(self, directory: str | Path) -> None:
        Path(directory, SPEC_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ModelSpec:
        return cls(**json.loads(Path(directory, SPEC_FILE).read_text()))


SD14_SPEC = ModelSpec(
    name="sd14",
    hook_points={
        "down": "down_blocks.2.attentions.1",
        "mid": "mid_block.attentions.0",
        "up": "up_blocks.1.attentions.0",
    },
    default_steps=50,
    default_guidance=7.5,
    resolution=512,
)
