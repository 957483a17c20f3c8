"""SD3-medium and FLUX.1 at their published transformer configs: on the meta device (no memory, no compute) the
parameter counts of the released models, the default hook points and the update every block hands to a capture at
1024 px; with random bf16 weights, a real-width slice of the stack captured at 1024 px. The timings at the real
width are bench/mmdit_real_size.py's."""

from __future__ import annotations

import pytest
import torch

from atlas.models.mmdit import block_names
from atlas.models.random import JOINT_KINDS, REAL_TRANSFORMERS, meta_update_shapes, real_size_model


@pytest.mark.parametrize("kind, billions, hook_points", [
    ("sd3", (2.0, 2.1), ["transformer_blocks.4", "transformer_blocks.12", "transformer_blocks.20"]),
    ("flux-dev", (11.8, 12.0), ["transformer_blocks.9", "single_transformer_blocks.9", "single_transformer_blocks.28"]),
    ("flux-schnell", (11.8, 12.0),
     ["transformer_blocks.9", "single_transformer_blocks.9", "single_transformer_blocks.28"]),
])
def test_real_size_models_hook_every_block_on_the_1024_px_token_grid(kind, billions, hook_points):
    """SD3-medium is the 2B MMDiT of 24 blocks 1536 wide; FLUX.1 the 12B transformer of 19 double- and 38
    single-stream blocks 3072 wide. At 1024 px both see a 128 x 128 latent as a 64 x 64 token grid (SD3's 2 x 2
    patches, FLUX's 2 x 2 packing), and every block's image-token update reaches the hooks on that grid."""
    config = REAL_TRANSFORMERS[kind]
    model = real_size_model(kind, device="meta")
    params = sum(p.numel() for p in model.transformer.parameters())
    assert billions[0] < params / 1e9 < billions[1]
    assert [model.spec.hook_points[b] for b in ("down", "mid", "up")] == hook_points
    assert model.spec.resolution == 1024 and model.latent_shape == (16, 128, 128) and model.token_grid == (64, 64)
    blocks = block_names(config)
    assert len(blocks) == config["num_layers"] + config.get("num_single_layers", 0)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    assert meta_update_shapes(model, blocks) == {block: (2, width, 64, 64) for block in blocks}


@pytest.mark.slow
@pytest.mark.parametrize("kind, layers, blocks", [
    ("sd3", (1, 0), ["transformer_blocks.0"]),
    ("flux-dev", (1, 1), ["transformer_blocks.0", "single_transformer_blocks.0"]),
])
def test_a_real_width_slice_captures_in_bf16(kind, layers, blocks, tmp_path):
    """One capture step of the published width (SD3's 1536, FLUX's 3072) on the CPU in bf16, at 256 px to keep it
    to seconds (1024 px is the bench's): 16 x 16 = 256 image tokens per image, stored as (tokens, width) in the
    capture's precision."""
    from dataclasses import replace

    from atlas.capture import ActivationSet, capture
    from atlas.capture.config import CaptureConfig

    model = real_size_model(kind, layers=layers)
    model.spec = replace(model.spec, resolution=256)
    assert model.dtype == torch.bfloat16 and model.hook_module_name("up") == blocks[-1]
    config = CaptureConfig(blocks=blocks, t=[1.0], branches=["cond"], steps=1, batch_size=1, dtype="fp32")
    acts = ActivationSet(capture(model, ["a dog"], tmp_path / "acts", config, progress=False))
    width = REAL_TRANSFORMERS[kind]["num_attention_heads"] * REAL_TRANSFORMERS[kind]["attention_head_dim"]
    for block in blocks:
        x = acts.load(block, 1.0, "cond")["x"]
        assert x.shape == (16 * 16, width) and x.dtype == torch.float32 and bool(x.isfinite().all())
        assert acts.load(block, 1.0, "cond")["row"].max() == 15


def test_real_size_model_names_the_kinds_it_knows():
    from atlas.errors import BadInputError

    assert sorted(REAL_TRANSFORMERS) == sorted(JOINT_KINDS)
    with pytest.raises(BadInputError, match="unknown real-size model 'sd35'; use one of sd3, flux-dev"):
        real_size_model("sd35", device="meta")
