"""The shapes world's diffusion transformer: a PixArt-style DiT in place of the UNet, for the same world.

Same tokenizer and CLIP text encoder, same pixel space (the 32 x 32 image folded 2 x 2 into a 12 x 16 x 16
latent, x/y coordinate planes appended), same schedules and v-prediction as the UNet shapes model; only the
denoiser differs. diffusers' PixArtTransformer2DModel patchifies the latent into image tokens, runs
`transformer_blocks` (adaLN-single timestep modulation, self-attention, cross-attention to the text projected by
PixArt's caption MLP, feed-forward) and unpatchifies. Every block works on the same token grid, so the hook
points are blocks by index: `down`, `mid` and `up` name an early, the middle and a late block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffusers import PixArtTransformer2DModel

from atlas.errors import BadInputError

if TYPE_CHECKING:
    from atlas.shapes.model import ShapesModelConfig


def dit_hook_points(depth: int) -> dict[str, str]:
    """`down`, `mid`, `up` -> blocks a quarter, half and three quarters of the way through (1, 3, 4 of 6)."""
    return {alias: f"transformer_blocks.{min(depth - 1, depth * quarter // 4)}"
            for alias, quarter in (("down", 1), ("mid", 2), ("up", 3))}


# The default size (ShapesModelConfig: patch 2, width 192, 6 blocks of 6 heads, 3.95M parameters) is the one of
# these that trains fastest on one CPU thread at batch 32, measured beside the UNet (3.14M, 1.27-1.37 steps/s):
# width 192 x 6 blocks 0.83-0.87 steps/s; 160 x 8 blocks (3.59M) 0.84; 256 x 4 (4.87M) 0.78; 192 x 8 (5.14M) 0.63;
# patch 1 (a 16 x 16 grid of 256 tokens) at width 128 x 8 blocks (2.30M) 0.30. Patch 2 gives the 8 x 8 grid of
# the UNet's down and up hook points, so layouts and regions compare block for block; 6 blocks leave distinct
# early, middle and late hook points at the cost of depth per step.
def build_dit(config: ShapesModelConfig) -> PixArtTransformer2DModel:
    """A randomly initialised DiT of `config`'s sizes for the shapes latent (coordinate planes in, v out)."""
    f = config.pixel_unshuffle
    if config.dit_width % config.dit_heads:
        raise BadInputError(f"DiT width {config.dit_width} is not a multiple of its {config.dit_heads} heads")
    return PixArtTransformer2DModel(
        num_attention_heads=config.dit_heads,
        attention_head_dim=config.dit_width // config.dit_heads,
        in_channels=3 * f * f + 2,
        out_channels=3 * f * f,
        num_layers=config.dit_depth,
        sample_size=config.resolution // f,
        patch_size=config.patch_size,
        cross_attention_dim=config.dit_width,
        caption_channels=config.text_width,
        use_additional_conditions=False,
    )
