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

from dataclasses import dataclass
from pathlib import Path

from atlas.errors import BadInputError


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


def write_random_joint(path: str | Path, kind: str = "sd3", seed: int = 0) -> Path:
    """Write a tiny SD3 (`sd3`) or FLUX (`flux-dev`, `flux-schnell`) diffusers directory with random weights, saved
    by diffusers' own pipeline class (model_index.json and every component as the released models have them): three
    transformer blocks (FLUX: one double- and two single-stream), 4 latent channels on an 8 x 8 latent (32 px), CLIP
    encoders two layers and T5 one layer deep, character tokenizers of 16 tokens. Returns the path."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
    )
    from transformers.utils import logging

    logging.disable_progress_bar()
    if kind not in JOINT_KINDS:
        raise BadInputError(f"unknown random joint-attention model {kind!r}; use one of {', '.join(JOINT_KINDS)}")
    torch.manual_seed(seed)
    vocab, width, tokens = _byte_vocab(), 32, 16

    def clip(cls: type, projection: int) -> torch.nn.Module:
        return cls(CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                                  num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=tokens,
                                  projection_dim=projection, bos_token_id=vocab["<|startoftext|>"],
                                  eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))

    def tokenizer() -> object:
        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=tokens, pad_token="<|endoftext|>")

    t5_width = 2 * width if kind == "sd3" else width
    t5 = T5EncoderModel(T5Config(vocab_size=len(_t5_tokenizer(tokens)), d_model=t5_width, d_kv=8, d_ff=2 * t5_width,
                                 num_layers=1, num_heads=2, relative_attention_num_buckets=8))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        norm_num_groups=8, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                        scaling_factor=1.5305 if kind == "sd3" else 0.3611,
                        shift_factor=0.0609 if kind == "sd3" else 0.1159)
    if kind == "sd3":
        transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=t5_width,
                                            caption_projection_dim=16, pooled_projection_dim=2 * width,
                                            pos_embed_max_size=8)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
            text_encoder=clip(CLIPTextModelWithProjection, width), tokenizer=tokenizer(),
            text_encoder_2=clip(CLIPTextModelWithProjection, width), tokenizer_2=tokenizer(),
            text_encoder_3=t5, tokenizer_3=_t5_tokenizer(tokens))
    else:
        dev = kind == "flux-dev"
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                             attention_head_dim=8, num_attention_heads=2, joint_attention_dim=t5_width,
                                             pooled_projection_dim=width, guidance_embeds=dev, axes_dims_rope=(4, 2, 2))
        scheduler = (FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                     max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
                     if dev else FlowMatchEulerDiscreteScheduler(shift=1.0))
        pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, tokenizer=tokenizer(),
                            text_encoder=clip(CLIPTextModel, width), text_encoder_2=t5,
                            tokenizer_2=_t5_tokenizer(tokens))
    out = Path(path)
    pipe.save_pretrained(out)
    return out
