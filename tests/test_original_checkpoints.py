"""Checkpoints in their authors' layouts: SAM's sam_vit_*.pth and Grounding DINO's groundingdino_swint_ogc.pth
converted once to transformers, giving the same outputs; wrong kinds refused."""

from __future__ import annotations

import re

import pytest
import torch

from atlas.annotate.base import AnnotatorNotAvailable
from atlas.annotate.grounded_sam import check_checkpoints
from atlas.annotate.original import grounding_dino_directory, sam_directory
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
    with pytest.raises(AnnotatorNotAvailable, match=r"--grounding-dino .* is a transformers SAM state dict .*; "
                                                    r"expected Grounding DINO's original checkpoint"):
        check_checkpoints(str(hf_state), str(dino))
    with pytest.raises(AnnotatorNotAvailable, match=r"--sam .* is Grounding DINO's original checkpoint"):
        check_checkpoints(str(dino), str(dino))  # Grounding DINO's file is fine as --grounding-dino, not as --sam


# transformers' GroundingDinoForObjectDetection key fragments -> Grounding DINO's (IDEA-Research's module names);
# (pattern, replacement) applied in order, a replacement None drops the key; q/k/v projections are fused after
GD_TO_ORIGINAL = [  # the Swin names of transformers 5.24 and (without `swin.`, `attention.self.*`) of 5.0
    (r"^model\.backbone\.conv_encoder\.model\.swin\.layernorm\..*", None), (r".*\.relative_position_index$", None),
    (r"^model\.backbone\.conv_encoder\.model\.hidden_states_norms\.stage(\d)",
     lambda m: f"backbone.0.norm{int(m[1]) - 1}"),
    (r"^model\.backbone\.conv_encoder\.model\.(swin\.)?embeddings\.patch_embeddings\.projection",
     "backbone.0.patch_embed.proj"),
    (r"^model\.backbone\.conv_encoder\.model\.(swin\.)?embeddings\.norm", "backbone.0.patch_embed.norm"),
    (r"^model\.backbone\.conv_encoder\.model\.(swin\.)?encoder\.", "backbone.0."),
    (r"^(backbone\.0\..*)layernorm_before", r"\1norm1"), (r"^(backbone\.0\..*)layernorm_after", r"\1norm2"),
    (r"^(backbone\.0\..*)attention\.(o_proj|output\.dense)", r"\1attn.proj"),
    (r"^(backbone\.0\..*)intermediate\.dense", r"\1mlp.fc1"), (r"^(backbone\.0\..*)\.output\.dense", r"\1.mlp.fc2"),
    (r"^(backbone\.0\..*)attention\.(relative_position_bias|self)\.relative_position_bias_table",
     r"\1attn.relative_position_bias_table"),
    (r"^(backbone\.0\..*)attention\.(?:self\.)?(q|k|v)\w*", r"\1attn.qkv.\2"),
    (r"^model\.text_backbone\.", "bert."), (r"^model\.text_projection", "feat_map"),
    (r"^model\.input_proj_vision", "input_proj"), (r"^model\.level_embed", "transformer.level_embed"),
    (r"^model\.query_position_embeddings", "transformer.tgt_embed"),
    (r"^model\.enc_output", "transformer.enc_output"),
    (r"^model\.encoder_output_bbox_embed", "transformer.enc_out_bbox_embed"),
    (r"^model\.encoder\.layers\.(\d+)\.deformable_layer\.self_attn_layer_norm", r"transformer.encoder.layers.\1.norm1"),
    (r"^model\.encoder\.layers\.(\d+)\.deformable_layer\.final_layer_norm", r"transformer.encoder.layers.\1.norm2"),
    (r"^model\.encoder\.layers\.(\d+)\.deformable_layer\.fc(\d)", r"transformer.encoder.layers.\1.linear\2"),
    (r"^model\.encoder\.layers\.(\d+)\.deformable_layer\.", r"transformer.encoder.layers.\1."),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.layer_norm_before",
     r"transformer.encoder.text_layers.\1.norm1"),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.layer_norm_after",
     r"transformer.encoder.text_layers.\1.norm2"),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.fc(\d)", r"transformer.encoder.text_layers.\1.linear\2"),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.self_attn\.(query|key|value)\.",
     r"transformer.encoder.text_layers.\1.self_attn.in_proj.\2."),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.", r"transformer.encoder.text_layers.\1."),
    (r"^model\.encoder\.layers\.(\d+)\.fusion_layer\.", r"transformer.encoder.fusion_layers.\1."),
    (r"vision_param", "gamma_v"), (r"text_param", "gamma_l"), (r"layer_norm_vision", "layer_norm_v"),
    (r"layer_norm_text", "layer_norm_l"), (r"attn\.(values_|out_)?vision_proj", r"attn.\1v_proj"),
    (r"attn\.(values_|out_)?text_proj", r"attn.\1l_proj"),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_text_layer_norm", r"transformer.decoder.layers.\1.catext_norm"),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_text\.(query|key|value)\.",
     r"transformer.decoder.layers.\1.ca_text.in_proj.\2."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_text\.", r"transformer.decoder.layers.\1.ca_text."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm", r"transformer.decoder.layers.\1.norm1"),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.", r"transformer.decoder.layers.\1.cross_attn."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn_layer_norm", r"transformer.decoder.layers.\1.norm2"),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.(query|key|value)\.",
     r"transformer.decoder.layers.\1.self_attn.in_proj.\2."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm", r"transformer.decoder.layers.\1.norm3"),
    (r"^model\.decoder\.layers\.(\d+)\.fc(\d)", r"transformer.decoder.layers.\1.linear\2"),
    (r"^model\.decoder\.layers\.", "transformer.decoder.layers."),
    (r"^model\.decoder\.layer_norm", "transformer.decoder.norm"),
    (r"^model\.decoder\.reference_points_head", "transformer.decoder.ref_point_head"),
    (r"^model\.decoder\.bbox_embed", "transformer.decoder.bbox_embed"),
]
_FUSED = re.compile(r"(.*)\.(?:in_proj\.(query|key|value)|qkv\.(q|k|v))\.(weight|bias)$")


def _grounding_dino_original_layout(state):
    out, fused = {}, {}
    for key, value in state.items():
        for pattern, repl in GD_TO_ORIGINAL:
            if repl is None and re.match(pattern, key):
                key = None
                break
            key = re.sub(pattern, repl, key) if repl is not None else key
        if key is None:
            continue
        match = _FUSED.match(key)
        if match:  # nn.MultiheadAttention's in_proj_weight / Swin's qkv: query, key, value stacked
            name = f"{match[1]}.in_proj_{match[4]}" if match[2] else f"{match[1]}.qkv.{match[4]}"
            fused.setdefault(name, {})[match[2] or match[3]] = value
        else:
            out[key] = value
    for name, parts in fused.items():
        out[name] = torch.cat([parts[k] for k in (("query", "key", "value") if "in_proj" in name else "qkv")])
    extra = {"bert.embeddings.position_ids": torch.arange(64)[None], "bert.pooler.dense.weight": torch.zeros(64, 64),
             "backbone.0.layers.0.blocks.0.attn.relative_position_index": torch.zeros(16, 16, dtype=torch.long)}
    return {**out, **extra}


def test_grounding_dinos_original_checkpoint_is_converted_once_and_detects_as_the_original(tmp_path):
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "red", "circle", "square"]
    tokenizer_dir = tmp_path / "bert-tokenizer"
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tokenizer_dir)
    # widths that follow the original's head rules: BERT heads of 64, transformer heads of 32
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=4,
                                   image_size=64, out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=len(words), hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                               intermediate_size=32, max_position_embeddings=64),
        d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=48,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=3, num_queries=10)
    reference = GroundingDinoForObjectDetection(config).eval()
    state = _grounding_dino_original_layout(reference.state_dict())
    assert {"backbone.0.layers.0.blocks.0.attn.qkv.weight", "backbone.0.norm1.weight", "feat_map.weight",
            "transformer.encoder.text_layers.0.self_attn.in_proj_weight", "transformer.encoder.fusion_layers.0.gamma_v",
            "transformer.decoder.layers.1.ca_text.in_proj_bias", "transformer.decoder.layers.0.catext_norm.weight",
            "transformer.tgt_embed.weight", "transformer.enc_out_bbox_embed.layers.0.weight",
            "bbox_embed.0.layers.0.weight", "bert.embeddings.word_embeddings.weight"} <= set(state)
    original = tmp_path / "groundingdino_swint_ogc.pth"
    torch.save({"model": state, "optimizer": {}, "epoch": 1}, original)

    converted = grounding_dino_directory(str(original), tokenizer=str(tokenizer_dir))
    assert converted == str(tmp_path / "groundingdino_swint_ogc-transformers")
    written = (tmp_path / "groundingdino_swint_ogc-transformers" / "config.json").stat().st_mtime_ns
    assert grounding_dino_directory(str(original)) == converted  # cached: not converted again
    assert (tmp_path / "groundingdino_swint_ogc-transformers" / "config.json").stat().st_mtime_ns == written
    loaded = GroundingDinoForObjectDetection.from_pretrained(converted).eval()
    processor = GroundingDinoProcessor.from_pretrained(converted)
    inputs = processor.tokenizer(["red circle . square ."], return_tensors="pt")
    image = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        want = reference(pixel_values=image, **inputs)
        got = loaded(pixel_values=image, **inputs)
    assert torch.equal(want.logits, got.logits) and torch.equal(want.pred_boxes, got.pred_boxes)


def test_a_grounding_dino_checkpoint_without_its_tokenizer_says_what_to_fetch(tmp_path):
    dino = tmp_path / "groundingdino_swint_ogc.pth"
    torch.save({"model": {"backbone.0.patch_embed.proj.weight": torch.zeros(1),
                          "transformer.encoder.layers.0.norm1.weight": torch.zeros(1)}}, dino)
    with pytest.raises(AnnotatorNotAvailable, match=r"needs the tokenizer .*not-a-tokenizer.* `hf download"):
        grounding_dino_directory(str(dino), tokenizer=str(tmp_path / "not-a-tokenizer"))
    assert not (tmp_path / "groundingdino_swint_ogc-transformers").exists()
