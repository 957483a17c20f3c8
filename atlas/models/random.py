"""Stable Diffusion v1.4-architecture model directories with random weights, for machines without the weights.

`write_random_sd(path, "sd14")` writes what `CompVis/stable-diffusion-v1-4` holds, in the same diffusers layout
(unet/, vae/, text_encoder/, tokenizer/, scheduler/), at the exact architecture: UNet with 320/640/1280/1280
channels and 768-wide cross-attention on 64 x 64 latents, the 4-channel VAE (512 px images), CLIP ViT-L/14's
text encoder (12 layers, 768 wide, 77 tokens). Only the weights are random, so every size, grid, shard and byte
count the pipeline produces is the real one; the images are noise. `"tiny"` is the same architecture with every
width shrunk, for tests. The tokenizer is a byte-level CLIP tokenizer without merges (one token per character):
the real vocabulary cannot be downloaded, and for random weights any tokenization is as good.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from atlas.errors import BadInputError

if TYPE_CHECKING:
    from atlas.models.base import TextToImageModel


@dataclass(frozen=True)
class RandomSdSize:
    """Widths of one random SD v1-architecture model."""

    unet_channels: tuple[int, ...]
    cross_attention: int
    attention_head_dim: int
    sample_size: int
    """Latent side (the image side is 8x this with the 4-level VAE)."""
    vae_channels: tuple[int, ...]
    text_width: int
    text_layers: int
    text_heads: int
    text_ffn: int
    max_tokens: int
    norm_groups: int = 32


SIZES = {
    "sd14": RandomSdSize(unet_channels=(320, 640, 1280, 1280), cross_attention=768, attention_head_dim=8,
                         sample_size=64, vae_channels=(128, 256, 512, 512), text_width=768, text_layers=12,
                         text_heads=12, text_ffn=3072, max_tokens=77),
    "tiny": RandomSdSize(unet_channels=(32, 32, 64, 64), cross_attention=32, attention_head_dim=4, sample_size=8,
                         vae_channels=(16, 16, 16, 16), text_width=32, text_layers=2, text_heads=4, text_ffn=64,
                         max_tokens=16, norm_groups=8),
}
CLIP_VOCAB_SIZE = 49408  # CLIP ViT-L/14's: the text encoder's embedding table has its real size


def _byte_vocab() -> dict[str, int]:
    """Every byte as GPT-2/CLIP's printable character, alone and word-final, plus CLIP's two special tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def write_random_sd(path: str | Path, size: str = "sd14", seed: int = 0, half: bool = True) -> Path:
    """Write an SD v1.4-architecture diffusers directory with random weights to `path` (fp16 files with `half`,
    as the released checkpoints' fp16 variant); returns the path."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if size not in SIZES:
        raise BadInputError(f"unknown random SD size {size!r}; use one of {', '.join(SIZES)}")
    s = SIZES[size]
    diffusers_logging.set_verbosity_error()  # casting a fresh model to fp16 warns about modules it does not have
    out = Path(path)
    torch.manual_seed(seed)
    dtype = torch.float16 if half else torch.float32
    levels = len(s.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=s.sample_size, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=s.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=s.cross_attention, attention_head_dim=s.attention_head_dim, norm_num_groups=s.norm_groups)
    unet.to(dtype).save_pretrained(out / "unet")
    del unet
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=s.vae_channels,
                        down_block_types=("DownEncoderBlock2D",) * len(s.vae_channels),
                        up_block_types=("UpDecoderBlock2D",) * len(s.vae_channels), layers_per_block=2,
                        norm_num_groups=s.norm_groups, sample_size=s.sample_size * 2 ** (len(s.vae_channels) - 1))
    vae.to(dtype).save_pretrained(out / "vae")
    del vae
    vocab = _byte_vocab()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE if size == "sd14" else len(vocab),
                                        hidden_size=s.text_width, intermediate_size=s.text_ffn,
                                        num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads,
                                        max_position_embeddings=s.max_tokens, hidden_act="quick_gelu",
                                        projection_dim=s.text_width, bos_token_id=vocab["<|startoftext|>"],
                                        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    text.to(dtype).save_pretrained(out / "text_encoder")
    del text
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=s.max_tokens, pad_token="<|endoftext|>") \
        .save_pretrained(out / "tokenizer")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(out / "scheduler")
    return out


JOINT_KINDS = ("sd3", "flux-dev", "flux-schnell")
"""Tiny random joint-attention models `write_random_joint` writes: SD3's MMDiT, FLUX with and without the distilled
guidance embedding."""


def _t5_tokenizer(max_tokens: int) -> object:
    """A T5 (unigram) tokenizer of single characters: no vocabulary file can be downloaded, and random weights make
    any tokenization as good."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + [chr(c) for c in range(ord("!"), ord("~") + 1)]
    return T5Tokenizer(vocab=[(piece, 0.0 if i < 3 else -1.0) for i, piece in enumerate(pieces)], extra_ids=0,
                       model_max_length=max_tokens)


TINY_TRANSFORMERS = {
    "sd3": {"sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 3,
            "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 64, "caption_projection_dim": 16,
            "pooled_projection_dim": 64, "pos_embed_max_size": 8},
    **{kind: {"patch_size": 1, "in_channels": 16, "num_layers": 1, "num_single_layers": 2, "attention_head_dim": 8,
              "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
              "guidance_embeds": kind == "flux-dev", "axes_dims_rope": (4, 2, 2)}
       for kind in ("flux-dev", "flux-schnell")},
}
"""The transformers of `write_random_joint`'s tiny models: three blocks (FLUX: one double- and two single-stream),
16 wide, on an 8 x 8 latent of 4 channels."""

REAL_TRANSFORMERS = {
    "sd3": {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
            "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
            "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 192},
    **{kind: {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
              "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
              "pooled_projection_dim": 768, "guidance_embeds": kind == "flux-dev", "axes_dims_rope": (16, 56, 56)}
       for kind in ("flux-dev", "flux-schnell")},
}
"""The published transformer/config.json of stabilityai/stable-diffusion-3-medium-diffusers (MMDiT, 24 blocks 1536
wide, 2B parameters, 128 x 128 latents of 16 channels in 2 x 2 patches) and black-forest-labs/FLUX.1-dev and
FLUX.1-schnell (19 double- and 38 single-stream blocks 3072 wide, 12B parameters, 2 x 2 packed latent cells of 16
channels; schnell without the guidance embedding)."""


@dataclass(frozen=True)
class JointSize:
    """The widths around a random SD3 / FLUX transformer: its stand-in text encoders (what the transformer reads of
    them: CLIP widths and pooled sizes, T5's width, token counts) and its VAE (latent channels, 2x per level)."""

    clip_widths: tuple[int, ...]
    """One CLIP text encoder per entry, projecting to its own width (SD3: CLIP ViT-L, OpenCLIP bigG; FLUX: ViT-L)."""
    t5_width: int
    clip_tokens: int
    t5_tokens: int
    latent_channels: int
    vae_channels: tuple[int, ...]
    image_size: int
    vae_groups: int = 8


TINY_SIZES = {"sd3": JointSize((32, 32), 64, 16, 16, 4, (16, 16, 16), 32),
              "flux": JointSize((32,), 32, 16, 16, 4, (16, 16, 16), 32)}
REAL_SIZES = {"sd3": JointSize((768, 1280), 4096, 77, 256, 16, (16, 16, 16, 16), 1024),
              "flux": JointSize((768,), 4096, 77, 512, 16, (16, 16, 16, 16), 1024)}
"""Real widths, token counts and latent grids (1024 px, 8 px per latent cell) with two-layer CLIP and one-layer T5
stand-ins and a 16-channel VAE: what `real_size_model` runs around a real-size transformer (the VAE on the meta
device: SD3's and FLUX's own, 128 / 256 / 512 / 512 channels)."""
REAL_VAE_CHANNELS = (128, 256, 512, 512)


def _backbone(kind: str) -> str:
    return "sd3" if kind == "sd3" else "flux"


def random_joint_parts(kind: str, transformer: dict, size: JointSize) -> dict:
    """Random components of an SD3 (`sd3`) or FLUX (`flux-dev`, `flux-schnell`) pipeline, named as its constructor's
    arguments: the transformer of config `transformer`, CLIP encoders two layers and T5 one layer deep with character
    tokenizers, the VAE (SD3's or FLUX's scaling and shift) and the flow-matching scheduler of the released model."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
    )

    if kind not in JOINT_KINDS:
        raise BadInputError(f"unknown random joint-attention model {kind!r}; use one of {', '.join(JOINT_KINDS)}")
    vocab, sd3 = _byte_vocab(), kind == "sd3"
    parts: dict[str, object] = {}
    names = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")]
    for (encoder, tokenizer), width in zip(names, size.clip_widths):
        config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=size.clip_tokens,
                                projection_dim=width, bos_token_id=vocab["<|startoftext|>"],
                                eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
        parts[encoder] = (CLIPTextModelWithProjection if sd3 else CLIPTextModel)(config)
        parts[tokenizer] = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=size.clip_tokens,
                                         pad_token="<|endoftext|>")
    t5_tokenizer = _t5_tokenizer(size.t5_tokens)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=size.t5_width, d_kv=8,
                                 d_ff=min(2 * size.t5_width, 512), num_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8))
    parts.update({"text_encoder_3": t5, "tokenizer_3": t5_tokenizer} if sd3 else
                 {"text_encoder_2": t5, "tokenizer_2": t5_tokenizer})
    levels = len(size.vae_channels)
    parts["vae"] = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=size.latent_channels, block_out_channels=size.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=1 if size.vae_channels != REAL_VAE_CHANNELS else 2, norm_num_groups=size.vae_groups,
        sample_size=size.image_size, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=1.5305 if sd3 else 0.3611, shift_factor=0.0609 if sd3 else 0.1159)
    parts["transformer"] = (SD3Transformer2DModel if sd3 else FluxTransformer2DModel)(**transformer)
    parts["scheduler"] = (
        FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                        max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
        if kind == "flux-dev" else FlowMatchEulerDiscreteScheduler(shift=3.0 if sd3 else 1.0))
    return parts


def write_random_joint(path: str | Path, kind: str = "sd3", seed: int = 0) -> Path:
    """Write a tiny SD3 (`sd3`) or FLUX (`flux-dev`, `flux-schnell`) diffusers directory with random weights, saved
    by diffusers' own pipeline class (model_index.json and every component as the released models have them):
    `TINY_TRANSFORMERS`' transformer, 4 latent channels on an 8 x 8 latent (32 px), CLIP encoders two layers and T5
    one layer deep, character tokenizers of 16 tokens. Returns the path."""
    import torch
    from diffusers import FluxPipeline, StableDiffusion3Pipeline
    from transformers.utils import logging

    logging.disable_progress_bar()
    if kind not in JOINT_KINDS:
        raise BadInputError(f"unknown random joint-attention model {kind!r}; use one of {', '.join(JOINT_KINDS)}")
    torch.manual_seed(seed)
    parts = random_joint_parts(kind, TINY_TRANSFORMERS[kind], TINY_SIZES[_backbone(kind)])
    pipe = (StableDiffusion3Pipeline if kind == "sd3" else FluxPipeline)(**parts)
    out = Path(path)
    pipe.save_pretrained(out)
    return out


def real_size_model(kind: str, device: str = "cpu", dtype: str = "bf16", layers: tuple[int, int] | None = None,
                    seed: int = 0) -> TextToImageModel:
    """An SD3-medium (`sd3`) or FLUX.1 (`flux-dev`, `flux-schnell`) model at its published transformer config
    (`REAL_TRANSFORMERS`), random weights in `dtype`, ready to sample at 1024 px, built in memory (nothing written).
    `layers` = (double-stream, single-stream) blocks keeps a real-width slice of the stack (SD3: the first number).
    The text encoders and the VAE are narrow stand-ins with the real output widths, token counts and latent grid
    (`REAL_SIZES`); on `device="meta"` (no memory, no compute: shapes only) the VAE is the real one too."""
    import torch

    from atlas.models.device import pick_dtype
    from atlas.models.flow import FlowMatchScheduler
    from atlas.models.mmdit import joint_model, transformer_spec

    if kind not in JOINT_KINDS:
        raise BadInputError(f"unknown real-size model {kind!r}; use one of {', '.join(JOINT_KINDS)}")
    config = dict(REAL_TRANSFORMERS[kind])
    if layers is not None:
        config["num_layers"] = layers[0]
        if kind != "sd3":
            config["num_single_layers"] = layers[1]
    size = REAL_SIZES[_backbone(kind)]
    if device == "meta":
        size = replace(size, vae_channels=REAL_VAE_CHANNELS, vae_groups=32)
    dt, default = pick_dtype(torch.device(device), dtype), torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dt)  # built in its precision: a 2B transformer is never held in fp32
    try:
        with torch.device(device):
            parts = random_joint_parts(kind, config, size)
    finally:
        torch.set_default_dtype(default)
    vae, scheduler = parts.pop("vae"), FlowMatchScheduler.from_config(parts.pop("scheduler").config)
    spec = transformer_spec(kind, config, _backbone(kind))
    return joint_model(parts, vae, scheduler, spec, torch.device(device), dt, source=kind)


def meta_update_shapes(model: TextToImageModel, blocks: list[str]) -> dict[str, tuple[int, ...]]:
    """The residual update each of `blocks` hands to the atlas's hooks, (2, width, rows, cols) for the batch [uncond,
    cond], found by running one denoiser call of a model on the meta device (`real_size_model(device="meta")`)."""
    import torch

    from atlas.models.hooks import Hooks, StepInfo

    seen: dict[str, tuple[int, ...]] = {}
    hooks = Hooks()
    for block in blocks:
        hooks.on(block, lambda name, step, delta: seen.setdefault(name, tuple(delta.shape)) and None)
    handles = hooks.attach(model)
    hooks.step = StepInfo(0, 1, 1000)
    try:
        with torch.no_grad():
            text = model.encode_text(["", "a dog"])
            latents = torch.empty(2, *model.latent_shape, device=model.device, dtype=model.dtype)
            model.predict(latents, 1000.0, text)
    finally:
        for handle in handles:
            handle.remove()
    return seen
