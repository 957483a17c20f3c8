"""The shapes model: a tiny text-to-image diffusion model made of the same diffusers parts as SD v1.4.

UNet2DConditionModel with CrossAttnDownBlock2D / UNetMidBlock2DCrossAttn / CrossAttnUpBlock2D, a
CLIP text transformer, and a word-level tokenizer. It works in pixel space: a 32 x 32 image is
folded 2 x 2 into a 12 x 16 x 16 "latent" (lossless), with x/y coordinate planes appended so that
"left" and "top" are easy to learn. The hooked grids are 8 x 8 (down, up) and 4 x 4 (mid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from atlas.errors import BadInputError
from atlas.models.base import TextToImageModel
from atlas.models.spec import ModelSpec
from atlas.shapes.dit import build_dit, dit_hook_points
from atlas.shapes.world import COLORS, POSITIONS, SHAPES, STYLES

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
MAX_LENGTH = 32


@dataclass
class ShapesModelConfig:
    """Sizes of the shapes model. The defaults are those of the shipped weights."""

    resolution: int = 32
    pixel_unshuffle: int = 2
    channels: tuple[int, int, int] = (32, 64, 128)
    text_width: int = 128
    text_layers: int = 3
    attention_heads: int = 8
    schedule: str = "zero-snr"
    """Noise schedule: zero-snr (cosine rescaled to zero terminal SNR, trailing steps; the shipped weights) or sd
    (Stable Diffusion v1's scaled-linear betas and leading steps, whose first step still sees some signal)."""
    frozen_text_encoder: bool = False
    """The text encoder keeps its seeded random initialisation; only the UNet is trained."""
    fine_cross_attention: bool = False
    """Cross-attention at the 16 x 16 level too (down_blocks.0, up_blocks.2), not only at 8 x 8 and 4 x 4."""
    attention_depth: int = 1
    """Transformer layers (self-attention, cross-attention, feed-forward) in each attention block."""
    backbone: str = "unet"
    """unet (the sizes above; the shipped weights) or dit (a PixArt-style diffusion transformer, the sizes below;
    see atlas.shapes.dit)."""
    patch_size: int = 2
    """DiT: latent pixels per image token side (2 turns the 16 x 16 latent into an 8 x 8 token grid)."""
    dit_width: int = 192
    """DiT: hidden size of every transformer block."""
    dit_depth: int = 6
    """DiT: transformer blocks (self-attention, cross-attention to the text, feed-forward, each adaLN-modulated by
    the timestep)."""
    dit_heads: int = 6
    """DiT: attention heads (head size dit_width / dit_heads)."""


SHAPES_HOOK_POINTS = {
    "down": "down_blocks.1.attentions.0",
    "mid": "mid_block.attentions.0",
    "up": "up_blocks.1.attentions.0",
}


def vocabulary() -> list[str]:
    words = {"a", "an", "the", "and", "on", "at", "of", "in", "with", "background", ","}
    words |= set(SHAPES) | set(COLORS) | set(STYLES)
    for position in POSITIONS:
        words |= set(position.split())
    return [PAD, UNK, BOS, EOS, *sorted(words)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the shapes world's words; anything else becomes <unk>."""
    vocab = {word: i for i, word in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=MAX_LENGTH)


def build_text_encoder(config: ShapesModelConfig, tokenizer: PreTrainedTokenizerFast) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_width, intermediate_size=4 * config.text_width,
        num_hidden_layers=config.text_layers, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def build_unet(config: ShapesModelConfig) -> UNet2DConditionModel:
    f = config.pixel_unshuffle
    fine = "CrossAttnDownBlock2D" if config.fine_cross_attention else "DownBlock2D"
    return UNet2DConditionModel(
        sample_size=config.resolution // f,
        in_channels=3 * f * f + 2,
        out_channels=3 * f * f,
        # Cross-attention where the hooks are (8 x 8 and the 4 x 4 mid block); at 16 x 16 only with
        # fine_cross_attention, since attention over 256 positions makes a CPU training step 1.7x slower.
        down_block_types=(fine, "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", fine.replace("Down", "Up")),
        block_out_channels=config.channels,
        layers_per_block=1,
        cross_attention_dim=config.text_width,
        attention_head_dim=config.attention_heads,
        transformer_layers_per_block=config.attention_depth,
        norm_num_groups=32,
    )


SCHEDULES = ("zero-snr", "sd")


def scheduler_config(schedule: str = "zero-snr") -> dict:
    """v-prediction on either schedule. zero-snr: the first step is pure noise (alphas_cumprod = 0), so it
    cannot see the layout its seed will produce; sd: SD v1.4's betas and spacing (alphas_cumprod about 0.006
    at the first of 20 steps), as the paper's first-step findings assume."""
    if schedule not in SCHEDULES:
        raise BadInputError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    common = dict(num_train_timesteps=1000, prediction_type="v_prediction", clip_sample=False)
    if schedule == "sd":
        return dict(common, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False)
    return dict(common, beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True, timestep_spacing="trailing")


def training_scheduler(schedule: str = "zero-snr") -> DDPMScheduler:
    config = scheduler_config(schedule)
    config.pop("set_alpha_to_one", None)  # a DDIM-only option
    return DDPMScheduler(**config)


def new_shapes_model(config: ShapesModelConfig | None = None, seed: int = 0) -> TextToImageModel:
    """A randomly initialised shapes model (the starting point of `atlas shapes train`). Either backbone draws the
    same text encoder from the same seed: it is built first."""
    config = config or ShapesModelConfig()
    dit = config.backbone == "dit"
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(config, tokenizer)
    spec = ModelSpec(name="shapes-dit" if dit else "shapes",
                     hook_points=dit_hook_points(config.dit_depth) if dit else dict(SHAPES_HOOK_POINTS),
                     default_steps=20, default_guidance=3.0, resolution=config.resolution,
                     pixel_unshuffle=config.pixel_unshuffle, coord_channels=True, backbone=config.backbone)
    return TextToImageModel(spec=spec, tokenizer=tokenizer, text_encoder=text_encoder,
                            unet=None if dit else build_unet(config), transformer=build_dit(config) if dit else None,
                            scheduler=DDIMScheduler(**scheduler_config(config.schedule)))
