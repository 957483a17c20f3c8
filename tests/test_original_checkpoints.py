"""Checkpoints in their authors' layouts: SAM's sam_vit_*.pth converted once to transformers; wrong kinds refused."""

from __future__ import annotations

import re

import pytest
import torch

from atlas.annotate.base import AnnotatorNotAvailable
from atlas.annotate.grounded_sam import check_checkpoints
from atlas.annotate.original import sam_directory
from atlas.annotate.random import write_random_sam

# transformers' SamModel key fragments -> segment-anything's (its module names), to write a file in SAM's own layout
TO_ORIGINAL = [
    (r"^shared_image_embedding\..*", None),
    (r"vision_encoder\.", "image_encoder."), (r"\.layers\.(\d+)\.layer_norm(\d)", r".layers.\1.norm\2"),
    (r"image_encoder\.layers\.", "image_encoder.blocks."), (r"patch_embed\.projection", "patch_embed.proj"),
    (r"neck\.conv1", "neck.0"), (r"neck\.layer_norm1", "neck.1"), (r"neck\.conv2", "neck.2"),
    (r"neck\.layer_norm2", "neck.3"), (r"shared_embedding\.positional_embedding",
                                       "pe_layer.positional_encoding_gaussian_matrix"),
    (r"point_embed\.", "point_embeddings."), (r"mask_embed\.conv1", "mask_downscaling.0"),
    (r"mask_embed\.layer_norm1", "mask_downscaling.1"), (r"mask_embed\.conv2", "mask_downscaling.3"),
    (r"mask_embed\.layer_norm2", "mask_downscaling.4"), (r"mask_embed\.conv3", "mask_downscaling.6"),
    (r"layer_norm_final_attn", "norm_final_attn"), (r"upscale_conv1", "output_upscaling.0"),
    (r"upscale_layer_norm", "output_upscaling.1"), (r"upscale_conv2", "output_upscaling.3"),
    (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.0", r"\1.layers.1"),
    (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.proj_in", r"\1.layers.0"),
    (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.proj_out", r"\1.layers.2"),
]


def _original_layout(state):
    out = {}
    for key, value in state.items():
        for pattern, repl in TO_ORIGINAL:
            if repl is None and re.match(pattern, key):
                key = None
                break
            key = re.sub(pattern, repl, key) if repl is not None else key
        if key is not None:
            out[key] = value
    return {**out, "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)}


@pytest.fixture(scope="module")
def tiny_sam_8_heads(tmp_path_factory):
    from transformers import SamModel

    path = write_random_sam(tmp_path_factory.mktemp("sam-hf"), decoder_heads=8)  # SAM's decoder has 8 heads
    return SamModel.from_pretrained(path).eval()


def test_sams_original_checkpoint_is_converted_once_and_segments_as_the_original(tiny_sam_8_heads, tmp_path):
    from transformers import SamModel

    original = tmp_path / "sam_vit_t_0000.pth"
    state = _original_layout(tiny_sam_8_heads.state_dict())
    assert {"image_encoder.blocks.0.norm1.weight", "mask_decoder.transformer.norm_final_attn.weight",
            "mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"} <= set(state)
    torch.save(state, original)
    converted = sam_directory(str(original))
    assert converted == str(tmp_path / "sam_vit_t_0000-transformers")
    written = (tmp_path / "sam_vit_t_0000-transformers" / "config.json").stat().st_mtime_ns
    assert sam_directory(str(original)) == converted  # cached: not converted again
    assert (tmp_path / "sam_vit_t_0000-transformers" / "config.json").stat().st_mtime_ns == written
    loaded = SamModel.from_pretrained(converted).eval()
    image = torch.randn(1, 3, 128, 128)
    boxes = torch.tensor([[[10.0, 20.0, 90.0, 100.0]]])
    with torch.no_grad():
        want = tiny_sam_8_heads(pixel_values=image, input_boxes=boxes, multimask_output=False).pred_masks
        got = loaded(pixel_values=image, input_boxes=boxes, multimask_output=False).pred_masks
    assert torch.equal(want, got)


def test_a_checkpoint_of_the_wrong_kind_names_what_it_is_and_what_is_expected(tiny_sam_8_heads, tmp_path):
    hf_state = tmp_path / "sam_state_dict.pth"
    torch.save(tiny_sam_8_heads.state_dict(), hf_state)
    with pytest.raises(AnnotatorNotAvailable, match=r"--sam .* is a transformers SAM state dict .*; expected SAM's "
                                                    r"original checkpoint"):
        sam_directory(str(hf_state))
    dino = tmp_path / "groundingdino_swint_ogc.pth"
    torch.save({"model": {"backbone.0.patch_embed.proj.weight": torch.zeros(1),
                          "transformer.encoder.layers.0.norm1.weight": torch.zeros(1)}}, dino)
    with pytest.raises(AnnotatorNotAvailable, match=r"--sam .* is Grounding DINO's original checkpoint"):
        sam_directory(str(dino))
    with pytest.raises(AnnotatorNotAvailable, match=r"--grounding-dino .* is Grounding DINO's original checkpoint "
                                                    r".*; expected a transformers Grounding DINO directory"):
        check_checkpoints(str(dino), str(hf_state))
