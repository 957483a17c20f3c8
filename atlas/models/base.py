"""A loaded text-to-image model: tokenizer, text encoder, denoiser (UNet or DiT), scheduler, for latent models a VAE."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from atlas.errors import BadInputError
from atlas.models.spec import DENOISERS, ModelSpec

if TYPE_CHECKING:
    from atlas.models.mmdit import TextConditioning

JOINT = ("sd3", "flux")
"""Backbones of joint-attention blocks, which return (text tokens, image tokens) (`atlas.models.mmdit`)."""


def token_length(tokenizer: object, length: int) -> int:
    """`length` tokens, or fewer when `tokenizer` reads fewer (its `model_max_length`)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return length if limit is None or limit > length else int(limit)


@dataclass
class TextToImageModel:
    """The diffusers/transformers parts of one model plus the `ModelSpec` that says how to use them.

    Pixel-space models (the shapes model) have `vae=None`; their latents are the image in [-1, 1],
    folded by `pixel_unshuffle`. The denoiser is `unet` or, for a transformer backbone (`dit`, `sd3`,
    `flux`), `transformer` (as diffusers' pipelines name them); `predict` calls either. SD3 and FLUX also
    have second (and SD3 third) text encoders and tokenizers. Everything here is differentiable torch; the
    sampler lives in `atlas.models.sampler`.
    """

    spec: ModelSpec
    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module | None
    scheduler: object
    vae: torch.nn.Module | None = None
    transformer: torch.nn.Module | None = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    path: Path | None = None
    source: str = ""
    """What `load_model` was given (sd14, shapes, a path), so another process (a Ray worker) loads the same model."""
    tokenizer_2: object = None
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_3: object = None
    text_encoder_3: torch.nn.Module | None = None

    @property
    def max_length(self) -> int:
        return token_length(self.tokenizer, self.text_encoder.config.max_position_embeddings)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        res = self.spec.resolution
        if self.vae is not None:
            factor = vae_scale_factor(self.vae.config)
            return (self.vae.config.latent_channels, res // factor, res // factor)
        f = self.spec.pixel_unshuffle
        return (3 * f * f, res // f, res // f)

    @property
    def denoiser_name(self) -> str:
        """`unet` or `transformer`: the denoiser's attribute here and its directory on disk."""
        return DENOISERS[self.spec.backbone]

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self.denoiser_name)

    @property
    def token_grid(self) -> tuple[int, int] | None:
        """A transformer's image-token grid (H / patch, W / patch); None for a UNet, whose blocks keep their own
        grids. FLUX's patch is its 2 x 2 packing."""
        if self.spec.backbone == "unet":
            return None
        from atlas.models.mmdit import patch_size

        _, h, w = self.latent_shape
        patch = patch_size(self) if self.spec.backbone in JOINT else self.transformer.config.patch_size
        return (h // patch, w // patch)

    @property
    def image_slot(self) -> int:
        """Where a hooked block's output holds the image tokens: 1 in a joint-attention block's (text, image)."""
        return 1 if self.spec.backbone in JOINT else 0

    def hook_module_name(self, block: str) -> str:
        """Resolve an alias (`down`, `mid`, `up`) or a module name to a module name, or raise."""
        name = self.spec.hook_points.get(block, block)
        modules = dict(self.denoiser.named_modules())
        if name not in modules:
            valid = ", ".join(sorted(self.spec.hook_points))
            raise BadInputError(f"unknown block {block!r} for model {self.spec.name}; use one of {valid} "
                                "or a module name of its denoiser (UNet or DiT)")
        return name

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length,
                               truncation=True, return_tensors="pt")
        return batch["input_ids"].to(self.device)

    def encode_text(self, prompts: list[str]) -> torch.Tensor | TextConditioning:
        """The denoiser's text input: per-token embeddings (B, L, D) for its cross-attention, or for SD3 and FLUX
        a `TextConditioning` (token embeddings and pooled vectors). Only `predict` reads it."""
        if self.spec.backbone in JOINT:
            from atlas.models.mmdit import encode_prompts

            return encode_prompts(self, prompts)
        return self.text_encoder(self.tokenize(prompts))[0].to(self.dtype)

    def denoiser_input(self, latents: torch.Tensor) -> torch.Tensor:
        if not self.spec.coord_channels:
            return latents
        b, _, h, w = latents.shape
        ys = torch.linspace(-1, 1, h, device=latents.device, dtype=latents.dtype)
        xs = torch.linspace(-1, 1, w, device=latents.device, dtype=latents.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))
        return torch.cat([latents, grid.expand(b, 2, h, w)], dim=1)

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor | int, text: torch.Tensor | TextConditioning,
                guidance: float | None = None) -> torch.Tensor:
        """One denoiser evaluation: the model output (epsilon or v per the scheduler's prediction type; a flow
        velocity for SD3 and FLUX). `guidance` matters to FLUX-dev only (its distilled guidance embedding)."""
        sample = self.denoiser_input(latents)
        if self.spec.backbone in JOINT:
            from atlas.models.mmdit import predict

            return predict(self, sample, timestep, text, guidance)
        if self.spec.backbone == "unet":
            return self.unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(len(sample))
        return self.transformer(sample, encoder_hidden_states=text, timestep=timesteps, return_dict=False)[0]

    def check_branches(self, branches: Iterable[str]) -> None:
        """Refuse the uncond branch on a model without classifier-free guidance (FLUX): its sampler runs the cond
        half alone, so there is no uncond update to read."""
        if not self.spec.cfg and "uncond" in branches:
            raise BadInputError(f"model {self.spec.name} ({self.spec.backbone}) samples without classifier-free "
                                "guidance, so it has no uncond branch: use cond")

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
        """Combine the [uncond, cond] predictions: classifier-free guidance at scale `guidance`; FLUX takes the cond
        prediction alone (its guidance, if any, went into `predict`; its samplers run no uncond pass)."""
        if not self.spec.cfg:
            return cond
        return uncond + guidance * (cond - uncond)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) -> latents."""
        if self.vae is not None:
            latent = self.vae.encode(images.to(self.dtype)).latent_dist.mean
            return (latent - self.spec.vae_shift_factor) * self.spec.vae_scaling_factor
        f = self.spec.pixel_unshuffle
        return F.pixel_unshuffle(images, f) if f > 1 else images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1], (B, 3, H, W)."""
        if self.vae is not None:
            latents = latents / self.spec.vae_scaling_factor + self.spec.vae_shift_factor
            return self.vae.decode(latents, return_dict=False)[0]
        f = self.spec.pixel_unshuffle
        return F.pixel_shuffle(latents, f) if f > 1 else latents

    def to_uint8(self, images: torch.Tensor) -> np.ndarray:
        """Images in [-1, 1] (B, 3, H, W) -> uint8 (B, H, W, 3)."""
        arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return arr.permute(0, 2, 3, 1).cpu().numpy()

    def save_pretrained(self, directory: str | Path, half: bool = False) -> None:
        """Write every component in diffusers layout (safetensors), plus the atlas spec."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer", "tokenizer_2", "tokenizer_3", "scheduler"):
            if getattr(self, name) is not None:
                getattr(self, name).save_pretrained(directory / name)
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer", "vae"):
            module = getattr(self, name)
            if module is None:
                continue
            if half:
                module = _half_copy(module)
            module.save_pretrained(directory / name, safe_serialization=True)
        self.spec.save(directory)
        if self.vae is None:
            write_pipeline_index(directory, self)


PIPELINE_FILE = "pipeline_shapes.py"
"""The diffusers pipeline of pixel-space models (shipped in data/shapes), copied beside every such export so that
`DiffusionPipeline.from_pretrained(directory, trust_remote_code=True)` loads it with diffusers alone."""


def write_pipeline_index(directory: Path, model: TextToImageModel) -> None:
    """model_index.json naming ShapesPipeline (in `PIPELINE_FILE`, copied here) and each component's class."""
    import json
    import shutil

    import atlas.data

    source = Path(atlas.data.__file__).parent / "shapes" / PIPELINE_FILE
    if source.resolve() != (directory / PIPELINE_FILE).resolve():
        shutil.copyfile(source, directory / PIPELINE_FILE)
    parts = {name: getattr(model, name) for name in ("text_encoder", "tokenizer", "scheduler", model.denoiser_name)}
    index = {"_class_name": [PIPELINE_FILE.removesuffix(".py"), "ShapesPipeline"],
             "_diffusers_version": _diffusers_version(),
             **{name: [_library(part), type(part).__name__] for name, part in sorted(parts.items())},
             "pixel_unshuffle": model.spec.pixel_unshuffle, "coord_channels": model.spec.coord_channels,
             "default_steps": model.spec.default_steps, "default_guidance": model.spec.default_guidance}
    (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _library(part: object) -> str:
    return type(part).__module__.split(".")[0]


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def vae_scale_factor(vae_config: object) -> int:
    """Pixels per latent cell along each side: the VAE halves the image once per block after the first."""
    return 2 ** (len(vae_config.block_out_channels) - 1)


def native_resolution(denoiser_config: object, vae_config: object) -> int:
    """The image side a latent model generates at: its denoiser's latent `sample_size` times the VAE's scale
    factor (a VAE's own `sample_size` is the image size it was trained on, not the model's)."""
    size = denoiser_config.sample_size
    return int(size[0] if isinstance(size, (list, tuple)) else size) * vae_scale_factor(vae_config)


def _half_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).to(torch.float16)
