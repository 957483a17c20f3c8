"""What the atlas needs to know about a text-to-image model beyond its diffusers components."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from atlas.errors import BadInputError

SPEC_FILE = "atlas_model.json"
DENOISERS = {"unet": "unet", "dit": "transformer", "sd3": "transformer", "flux": "transformer"}
"""Backbone -> the diffusers component that holds its denoiser: its directory and `TextToImageModel` attribute."""


@dataclass
class ModelSpec:
    """Hook-point aliases, sampling defaults and the latent <-> pixel mapping of one model.

    `backbone` names the denoiser: `unet` (UNet2DConditionModel, in `unet/`), `dit` (a PixArt-style
    PixArtTransformer2DModel, in `transformer/`), `sd3` (SD3's MMDiT, SD3Transformer2DModel) or `flux`
    (FluxTransformer2DModel, double- then single-stream blocks); the last two are read from a diffusers
    directory's model_index.json (`atlas.models.mmdit`). `hook_points` maps the aliases `down`, `mid`, `up`
    to module names inside the denoiser; any other module name of a `Transformer2DModel` (UNet) or
    transformer block (`transformer_blocks.N`, `single_transformer_blocks.N` for FLUX) can be used
    directly. Pixel-space models have no VAE: `pixel_unshuffle` > 1 folds f x f pixel patches into
    channels (a lossless stand-in for a VAE), and `coord_channels` appends x/y coordinate planes to the
    denoiser's input. Latents are `(vae latents - vae_shift_factor) * vae_scaling_factor`.
    """

    name: str
    hook_points: dict[str, str]
    default_steps: int = 50
    default_guidance: float = 7.5
    resolution: int = 512
    pixel_unshuffle: int = 1
    coord_channels: bool = False
    vae_scaling_factor: float = 0.18215
    vae_shift_factor: float = 0.0
    backbone: str = "unet"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backbone not in DENOISERS:
            raise BadInputError(f"unknown backbone {self.backbone!r} in model spec {self.name}; use one of "
                             f"{', '.join(DENOISERS)}")

    @property
    def cfg(self) -> bool:
        """Whether the uncond half of the sampler's batch steers the image (classifier-free guidance). FLUX's does
        not: dev embeds its distilled guidance in the cond pass, schnell has none, so FLUX has no uncond branch to
        capture."""
        return self.backbone != "flux"

    def guidance(self, guidance: float | None = None) -> float:
        """The guidance to use: `guidance`, or this model's default when it is None (the one place that says so).
        It is the CFG scale, except for FLUX, which reads it as its distilled guidance embedding (and schnell not at
        all)."""
        return self.default_guidance if guidance is None else float(guidance)

    def steps(self, steps: int | None = None) -> int:
        """Sampler steps to use: `steps`, or this model's default when it is None or 0."""
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
