"""Joint-attention transformers: SD3's MMDiT and FLUX's double- and single-stream blocks as atlas models.

A diffusers directory whose model_index.json names `StableDiffusion3Pipeline` or `FluxPipeline` loads with no
atlas spec: the spec (hook points, steps, guidance) is read from its configs here. Text goes in as diffusers'
pipelines encode it (SD3: two CLIP encoders' penultimate layers beside T5, their pooled projections; FLUX: CLIP's
pooled output and T5), sampling uses their flow-matching Euler scheduler, with CFG for SD3 and FLUX-dev's
distilled guidance embedding (schnell has none).

Hook points are blocks by index (`transformer_blocks.12`, `single_transformer_blocks.3`); `down`, `mid`, `up`
name an early, the middle and a late block of the whole stack (FLUX: double-stream blocks first). Only the image
tokens are captured and edited: a joint-attention block returns (text tokens, image tokens) and the hook reads and
changes the image tokens' residual update; the text tokens' are excluded. A FLUX single-stream block runs on text
and image tokens concatenated and splits them again on return, so its hook sees the image part alone. FLUX packs
2 x 2 latent cells into one token: its token grid is half the latent grid on each side, as SD3's with patch 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from atlas.models.base import token_length
from atlas.models.spec import ModelSpec

if TYPE_CHECKING:
    from atlas.models.base import TextToImageModel

PIPELINES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
"""model_index.json `_class_name` -> backbone."""

COMPONENTS = {
    "sd3": {"transformer": "the MMDiT", "vae": "the VAE", "text_encoder": "CLIP ViT-L text encoder",
            "text_encoder_2": "OpenCLIP bigG text encoder", "text_encoder_3": "T5 text encoder"},
    "flux": {"transformer": "the FLUX transformer", "vae": "the VAE", "text_encoder": "CLIP ViT-L text encoder",
             "text_encoder_2": "T5 text encoder"},
}
"""The weighted components of each backbone (directory -> what it is, for the error that names a missing one)."""

TOKENIZERS = {"sd3": ("tokenizer", "tokenizer_2", "tokenizer_3"), "flux": ("tokenizer", "tokenizer_2")}
T5_TOKENS = {"sd3": 256, "flux-schnell": 256, "flux": 512}
"""T5 prompt length, as diffusers' pipelines use it (FLUX-schnell: 256)."""

DEFAULTS = {"sd3": (28, 7.0), "flux": (28, 3.5), "flux-schnell": (4, 0.0)}
"""Backbone -> (steps, guidance) of the model's own pipeline."""


def pipeline_backbone(path: Path) -> str | None:
    """`sd3` or `flux` when `path`'s model_index.json names an SD3 or FLUX pipeline, else None."""
    index = path / "model_index.json"
    if not index.is_file():
        return None
    name = json.loads(index.read_text()).get("_class_name")
    return PIPELINES.get(name) if isinstance(name, str) else None


def listed(path: Path, names: list[str]) -> list[str]:
    """The components of `names` that `path`'s model_index.json does not set to null (SD3 may leave out T5)."""
    index = json.loads((path / "model_index.json").read_text())
    return [name for name in names if name not in index or index[name][0] is not None]


def joint_spec(path: Path, backbone: str) -> ModelSpec:
    """The spec of an SD3 or FLUX directory, from its transformer's config (`transformer_spec`)."""
    return transformer_spec(path.name, json.loads((path / "transformer" / "config.json").read_text()), backbone)


def block_names(transformer_config: dict) -> list[str]:
    """Every hookable block of an SD3 or FLUX transformer, in the order they run (FLUX: double-stream first)."""
    blocks = [f"transformer_blocks.{i}" for i in range(transformer_config["num_layers"])]
    return blocks + [f"single_transformer_blocks.{i}" for i in range(transformer_config.get("num_single_layers", 0))]


def transformer_spec(name: str, transformer_config: dict, backbone: str) -> ModelSpec:
    """The spec of an SD3 or FLUX model from its transformer's config: `down`/`mid`/`up` are the blocks at 1/6, 3/6
    and 5/6 of the stack, steps and guidance the pipeline's defaults (resolution is set on loading)."""
    blocks = block_names(transformer_config)
    picks = [blocks[len(blocks) * (2 * k + 1) // 6] for k in range(3)]
    steps, guidance = DEFAULTS[_variant(backbone, transformer_config)]
    return ModelSpec(name=name, hook_points=dict(zip(("down", "mid", "up"), picks)), default_steps=steps,
                     default_guidance=guidance, backbone=backbone)


def _variant(backbone: str, transformer_config: dict) -> str:
    if backbone == "flux" and not transformer_config.get("guidance_embeds", False):
        return "flux-schnell"
    return backbone


def load_parts(path: Path, backbone: str, dtype: torch.dtype, lean: bool) -> dict:
    """The transformer, text encoders and tokenizers of an SD3 or FLUX directory, named as TextToImageModel fields."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    encoders = {"sd3": (CLIPTextModelWithProjection, CLIPTextModelWithProjection, T5EncoderModel),
                "flux": (CLIPTextModel, T5EncoderModel)}[backbone]
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    present = set(listed(path, list(names) + list(TOKENIZERS[backbone])))
    parts: dict = {}
    for name, cls in zip(names, encoders):
        parts[name] = cls.from_pretrained(path / name, torch_dtype=dtype) if name in present else None
    for name in TOKENIZERS[backbone]:
        parts[name] = AutoTokenizer.from_pretrained(path / name) if name in present else None
    denoiser = SD3Transformer2DModel if backbone == "sd3" else FluxTransformer2DModel
    parts["transformer"] = denoiser.from_pretrained(path / "transformer", torch_dtype=dtype, low_cpu_mem_usage=lean)
    return parts


def fix_shift(scheduler: object, image_tokens: int | None) -> object:
    """A flow-matching scheduler (`atlas.models.flow.FlowMatchScheduler`) with, for FLUX (`image_tokens` given), its
    schedule's shift fixed for the model's one resolution, exactly as its pipeline computes it."""
    if image_tokens is not None:
        c = scheduler.config
        slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        scheduler.mu = image_tokens * slope + c.base_shift - slope * c.base_image_seq_len
    return scheduler


def joint_model(parts: dict, vae: torch.nn.Module, scheduler: object, spec: ModelSpec, device: torch.device,
                dtype: torch.dtype, path: Path | None = None, source: str = "") -> TextToImageModel:
    """An SD3 or FLUX `TextToImageModel` from its parts (`load_parts`'s dict: transformer, text encoders,
    tokenizers), VAE (scaling and shift from its config) and flow-matching scheduler, on `device` in eval mode."""
    from atlas.models.base import TextToImageModel

    res = resolution(spec, parts["transformer"].config, vae.config)
    spec = replace(spec, resolution=res, vae_scaling_factor=float(vae.config.scaling_factor),
                   vae_shift_factor=float(vae.config.shift_factor or 0.0))
    for module in (vae, *(part for part in parts.values() if isinstance(part, torch.nn.Module))):
        module.to(device).eval()
        module.requires_grad_(False)
    scheduler = fix_shift(scheduler, image_tokens(spec, res, vae.config))
    return TextToImageModel(spec=spec, scheduler=scheduler, vae=vae, unet=None, device=device, dtype=dtype,
                            path=path, source=source, **parts)


@dataclass
class TextConditioning:
    """What an SD3 or FLUX denoiser reads of the prompts: per-token embeddings (B, L, D) and a pooled vector (B, P)."""

    tokens: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return len(self.tokens)


def _ids(tokenizer: object, prompts: list[str], length: int, device: torch.device) -> torch.Tensor:
    """Token ids padded to `length`, or to fewer when the tokenizer reads fewer (`token_length`)."""
    batch = tokenizer(list(prompts), padding="max_length", max_length=token_length(tokenizer, length), truncation=True,
                      return_tensors="pt")
    return batch["input_ids"].to(device)


def _t5(model: TextToImageModel, prompts: list[str], tokenizer: object,
        encoder: torch.nn.Module | None) -> torch.Tensor:
    """T5's token embeddings (B, L, joint width), or zeros where the directory has no T5 (as SD3's pipeline does)."""
    config = model.transformer.config
    length = T5_TOKENS[_variant(model.spec.backbone, dict(config))]
    if encoder is None:
        return torch.zeros(len(prompts), length, config.joint_attention_dim, device=model.device, dtype=model.dtype)
    return encoder(_ids(tokenizer, prompts, length, model.device))[0]


def encode_prompts(model: TextToImageModel, prompts: list[str]) -> TextConditioning:
    """Prompts -> the denoiser's text input, as diffusers' SD3 and FLUX pipelines encode it."""
    if model.spec.backbone == "flux":
        ids = _ids(model.tokenizer, prompts, model.text_encoder.config.max_position_embeddings, model.device)
        pooled = model.text_encoder(ids).pooler_output
        tokens = _t5(model, prompts, model.tokenizer_2, model.text_encoder_2)
        return TextConditioning(tokens.to(model.dtype), pooled.to(model.dtype))
    clip, pooled = [], []
    for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (model.tokenizer_2, model.text_encoder_2)):
        out = encoder(_ids(tokenizer, prompts, encoder.config.max_position_embeddings, model.device),
                      output_hidden_states=True)
        clip.append(out.hidden_states[-2])
        pooled.append(out.text_embeds)
    joint = model.transformer.config.joint_attention_dim
    clip_tokens = torch.cat(clip, dim=-1)
    clip_tokens = F.pad(clip_tokens, (0, joint - clip_tokens.shape[-1]))
    tokens = torch.cat([clip_tokens, _t5(model, prompts, model.tokenizer_3, model.text_encoder_3)], dim=1)
    return TextConditioning(tokens.to(model.dtype), torch.cat(pooled, dim=-1).to(model.dtype))


def pack(latents: torch.Tensor) -> torch.Tensor:
    """FLUX's packing: (B, C, H, W) -> (B, H/2 * W/2, 4C), one token per 2 x 2 latent patch, row-major."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack` for an (H, W) latent grid."""
    b, _, channels = tokens.shape
    c = channels // 4
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """FLUX's rotary position ids of the image tokens: (rows * cols, 3) holding (0, row, col)."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device, dtype)


def predict(model: TextToImageModel, latents: torch.Tensor, timestep: torch.Tensor | float,
            text: TextConditioning, guidance: float | None = None) -> torch.Tensor:
    """One SD3 or FLUX evaluation on latents (B, C, H, W): the flow velocity, on the same grid. `timestep` is the
    scheduler's (sigma * 1000); FLUX reads sigma, and FLUX-dev its distilled guidance `guidance`."""
    b, _, h, w = latents.shape
    timesteps = torch.as_tensor(timestep, device=latents.device, dtype=latents.dtype).reshape(-1).expand(b)
    if model.spec.backbone == "sd3":
        return model.transformer(hidden_states=latents, encoder_hidden_states=text.tokens,
                                 pooled_projections=text.pooled, timestep=timesteps, return_dict=False)[0]
    config = model.transformer.config
    embedded = (torch.full((b,), model.spec.guidance(guidance), device=latents.device, dtype=latents.dtype)
                if config.guidance_embeds else None)
    text_ids = torch.zeros(text.tokens.shape[1], 3, device=latents.device, dtype=latents.dtype)
    out = model.transformer(hidden_states=pack(latents), encoder_hidden_states=text.tokens,
                            pooled_projections=text.pooled, timestep=timesteps / 1000,
                            img_ids=image_ids(h // 2, w // 2, latents.device, latents.dtype), txt_ids=text_ids,
                            guidance=embedded, return_dict=False)[0]
    return unpack(out, h, w)


def patch_size(model: TextToImageModel) -> int:
    """Latent cells per token along each side: SD3's patch size; FLUX's 2 x 2 packing times its patch size (1)."""
    patch = int(model.transformer.config.patch_size)
    return patch * 2 if model.spec.backbone == "flux" else patch


def resolution(model_spec: ModelSpec, transformer_config: object, vae_config: object) -> int:
    """SD3 generates at its latent `sample_size` times the VAE's factor; FLUX (no sample size) at its VAE's."""
    from atlas.models.base import native_resolution

    if model_spec.backbone == "sd3":
        return native_resolution(transformer_config, vae_config)
    return int(vae_config.sample_size)


def image_tokens(model_spec: ModelSpec, res: int, vae_config: object) -> int | None:
    """FLUX's number of image tokens at resolution `res` (what its scheduler's shift depends on); None for SD3."""
    from atlas.models.base import vae_scale_factor

    if model_spec.backbone != "flux":
        return None
    side = res // vae_scale_factor(vae_config) // 2
    return side * side

