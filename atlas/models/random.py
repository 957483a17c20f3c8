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
