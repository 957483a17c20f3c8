"""Checkpoints in their authors' own layouts: SAM's `sam_vit_{b,l,h}_*.pth` (segment-anything) and Grounding DINO's
`groundingdino_swint_ogc.pth` (IDEA-Research) are converted once to the transformers layout, into
`<file stem>-transformers/` beside them, and loaded from there afterwards.

The conversions rename the keys (the authors' module names -> transformers' SamModel / GroundingDinoForObjectDetection,
splitting fused q/k/v projections) and read the sizes from the tensors' shapes (SAM: ViT width, depth, heads from
the relative position tables, windowed vs global blocks; Grounding DINO: Swin widths, depths, heads and window,
BERT and transformer sizes). A file of another kind (SAM's given as Grounding DINO's or the other way round, a
transformers state dict, anything else) is refused with what was found and what is expected.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

from atlas.annotate.base import AnnotatorNotAvailable
from atlas.progress import logger

SAM_RENAMES = (
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"),
    ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"),
    ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"),
    ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("image_encoder", "vision_encoder"),
    ("neck.0", "neck.conv1"),
    ("neck.1", "neck.layer_norm1"),
    ("neck.2", "neck.conv2"),
    ("neck.3", "neck.layer_norm2"),
    ("patch_embed.proj", "patch_embed.projection"),
    (".norm", ".layer_norm"),
    ("blocks", "layers"),
)
"""segment-anything's key fragments -> transformers' SamModel's, applied in this order."""
_HYPERNETWORK = re.compile(r"(.*output_hypernetworks_mlps\.\d+\.)layers\.(\d+)(.*)")
_HYPERNETWORK_LAYERS = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}
EXPECTED = {"sam": "SAM's original checkpoint (sam_vit_b/l/h_*.pth: image_encoder.*, prompt_encoder.*, "
                   "mask_decoder.* tensors) or a transformers SAM directory / Hugging Face id",
            "grounding_dino": "Grounding DINO's original checkpoint (groundingdino_swint_ogc.pth: backbone.0.*, "
                              "transformer.*, bert.* tensors) or a transformers Grounding DINO directory / Hugging "
                              "Face id"}
SAM_KIND = "SAM's original checkpoint"
GROUNDING_DINO_KIND = "Grounding DINO's original checkpoint (groundingdino_*.pth)"
GROUNDING_DINO_TOKENIZER = "bert-base-uncased"


def read_state(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        raise AnnotatorNotAvailable(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__})") from None
    return state.get("model", state) if isinstance(state, dict) else {}


def checkpoint_kind(state: dict) -> str:
    """What a state dict's keys say it is, in words."""
    keys = list(state)
    if any(k.startswith("image_encoder.") for k in keys) and any(k.startswith("mask_decoder.") for k in keys):
        return SAM_KIND
    if any(k.startswith("vision_encoder.") for k in keys) and any(k.startswith("mask_decoder.") for k in keys):
        return "a transformers SAM state dict (save it with save_pretrained and pass its directory)"
    if any(k.startswith("backbone.0.") for k in keys) and any(k.startswith("transformer.") for k in keys):
        return GROUNDING_DINO_KIND
    return f"an unknown checkpoint (keys {', '.join(keys[:3]) or 'none'} ...)"


def sam_keys(state: dict) -> dict:
    """segment-anything's state dict with transformers' key names."""
    out = {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        for old, new in SAM_RENAMES:
            key = key.replace(old, new)
        match = _HYPERNETWORK.match(key)
        if match:
            key = match[1] + _HYPERNETWORK_LAYERS[match[2]] + match[3]
        out[key] = value
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    return out


def sam_config(state: dict) -> object:
    """A SamConfig with the sizes the tensors have (the mask decoder's 8 heads are SAM's, shapes do not show them)."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    def count(pattern: str) -> int:
        return len({m[1] for k in state if (m := re.match(pattern, k))})

    depth = count(r"image_encoder\.blocks\.(\d+)\.")
    rel = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    patch = state["image_encoder.patch_embed.proj.weight"]
    grid = state["image_encoder.pos_embed"].shape[1]
    width, head_dim = patch.shape[0], rel[0].shape[1]
    global_blocks = [i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1]
    windowed = [r.shape[0] for r in rel if r.shape[0] != 2 * grid - 1]
    image_size = grid * patch.shape[-1]
    hidden = state["mask_decoder.iou_token.weight"].shape[1]
    vision = SamVisionConfig(
        hidden_size=width, output_channels=state["image_encoder.neck.0.weight"].shape[0], num_hidden_layers=depth,
        num_attention_heads=width // head_dim, image_size=image_size, patch_size=patch.shape[-1],
        window_size=(windowed[0] + 1) // 2 if windowed else 14, global_attn_indexes=global_blocks,
        mlp_dim=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0],
        num_pos_feats=state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1])
    prompt = SamPromptEncoderConfig(hidden_size=hidden, image_size=image_size, patch_size=patch.shape[-1],
                                    mask_input_channels=state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
                                    num_point_embeddings=count(r"prompt_encoder\.point_embeddings\.(\d+)\."))
    decoder = SamMaskDecoderConfig(
        hidden_size=hidden, mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        num_hidden_layers=count(r"mask_decoder\.transformer\.layers\.(\d+)\."),
        num_multimask_outputs=state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        iou_head_depth=count(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0])
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def check_sam_file(path: Path) -> None:
    """Refuse a `--sam` checkpoint file that is not SAM's original checkpoint, saying what it is."""
    _check_kind(path, read_state(path), "--sam", SAM_KIND, EXPECTED["sam"])


def _check_kind(path: Path, state: dict, flag: str, kind: str, expected: str) -> None:
    found = checkpoint_kind(state)
    if found != kind:
        raise AnnotatorNotAvailable(f"{flag} {path} is {found}; expected {expected}")


def converted_directory(name_or_path: str, flag: str, kind: str, expected: str,
                        convert: Callable[[Path, dict, Path], None]) -> str:
    """What transformers should load for `flag`: the argument itself, unless it is a checkpoint file; one of `kind`
    is converted (once) by `convert(file, state dict, directory)` into `<stem>-transformers/` beside it and that
    directory is returned; another kind is refused naming what it is and what is `expected`."""
    path = Path(name_or_path)
    if not path.is_file():
        return name_or_path
    out = path.with_name(f"{path.stem}-transformers")
    if (out / "config.json").is_file():
        return str(out)
    state = read_state(path)
    _check_kind(path, state, flag, kind, expected)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    convert(path, state, tmp)
    logger.info(f"converted {kind} {path} to the transformers layout in {out} (done once)")
    tmp.rename(out)
    return str(out)


def sam_directory(name_or_path: str) -> str:
    """What transformers should load for `--sam` (see `converted_directory`): SAM's original checkpoint converted."""
    return converted_directory(name_or_path, "--sam", SAM_KIND, EXPECTED["sam"], _convert_sam)


def _convert_sam(path: Path, state: dict, out: Path) -> None:
    from transformers import SamImageProcessor, SamModel, SamProcessor

    config = sam_config(state)
    model = SamModel(config)
    model.load_state_dict(sam_keys(state), strict=True)
    size = config.vision_config.image_size
    model.save_pretrained(out)
    SamProcessor(SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size})
                 ).save_pretrained(out)


_SWIN = "model.backbone.conv_encoder.model."
GROUNDING_DINO_SECTIONS = (
    (r"backbone\.0\.patch_embed\.proj\.", _SWIN + "swin.embeddings.patch_embeddings.projection.", {}),
    (r"backbone\.0\.patch_embed\.norm\.", _SWIN + "swin.embeddings.norm.", {}),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.", _SWIN + "swin.encoder.layers.{0}.blocks.{1}.",
     {"norm1.": "layernorm_before.", "norm2.": "layernorm_after.", "mlp.": "mlp.", "attn.proj.": "attention.o_proj.",
      "attn.qkv.": "attention.{q,k,v}_proj.",
      "attn.relative_position_bias_table": "attention.relative_position_bias.relative_position_bias_table",
      "attn.relative_position_index": None}),
    (r"backbone\.0\.layers\.(\d+)\.downsample\.", _SWIN + "swin.encoder.layers.{0}.downsample.", {}),
    (r"backbone\.0\.norm(\d+)\.", _SWIN + "hidden_states_norms.stage{1}.", {}),
    (r"bert\.pooler\.", None, {}),
    (r"bert\.embeddings\.position_ids", None, {}),
    (r"bert\.", "model.text_backbone.", {}),
    (r"feat_map\.", "model.text_projection.", {}),
    (r"input_proj\.", "model.input_proj_vision.", {}),
    (r"transformer\.level_embed", "model.level_embed", {}),
    (r"transformer\.tgt_embed\.", "model.query_position_embeddings.", {}),
    (r"transformer\.enc_output\.", "model.enc_output.", {}),
    (r"transformer\.enc_output_norm\.", "model.enc_output_norm.", {}),
    (r"transformer\.enc_out_bbox_embed\.", "model.encoder_output_bbox_embed.", {}),
    (r"transformer\.encoder\.layers\.(\d+)\.", "model.encoder.layers.{0}.deformable_layer.",
     {"self_attn.": "self_attn.", "norm1.": "self_attn_layer_norm.", "linear1.": "fc1.", "linear2.": "fc2.",
      "norm2.": "final_layer_norm."}),
    (r"transformer\.encoder\.text_layers\.(\d+)\.", "model.encoder.layers.{0}.text_enhancer_layer.",
     {"self_attn.in_proj_": "self_attn.{query,key,value}.", "self_attn.out_proj.": "self_attn.out_proj.",
      "linear1.": "fc1.", "linear2.": "fc2.", "norm1.": "layer_norm_before.", "norm2.": "layer_norm_after."}),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.", "model.encoder.layers.{0}.fusion_layer.",
     {"gamma_v": "vision_param", "gamma_l": "text_param", "layer_norm_v.": "layer_norm_vision.",
      "layer_norm_l.": "layer_norm_text.", "attn.v_proj.": "attn.vision_proj.", "attn.l_proj.": "attn.text_proj.",
      "attn.values_v_proj.": "attn.values_vision_proj.", "attn.values_l_proj.": "attn.values_text_proj.",
      "attn.out_v_proj.": "attn.out_vision_proj.", "attn.out_l_proj.": "attn.out_text_proj."}),
    (r"transformer\.decoder\.layers\.(\d+)\.", "model.decoder.layers.{0}.",
     {"cross_attn.": "encoder_attn.", "norm1.": "encoder_attn_layer_norm.",
      "ca_text.in_proj_": "encoder_attn_text.{query,key,value}.", "ca_text.out_proj.": "encoder_attn_text.out_proj.",
      "catext_norm.": "encoder_attn_text_layer_norm.", "self_attn.in_proj_": "self_attn.{query,key,value}.",
      "self_attn.out_proj.": "self_attn.out_proj.", "norm2.": "self_attn_layer_norm.", "linear1.": "fc1.",
      "linear2.": "fc2.", "norm3.": "final_layer_norm."}),
    (r"transformer\.decoder\.norm\.", "model.decoder.layer_norm.", {}),
    (r"transformer\.decoder\.ref_point_head\.", "model.decoder.reference_points_head.", {}),
    (r"transformer\.decoder\.bbox_embed\.", "model.decoder.bbox_embed.", {}),
    (r"bbox_embed\.", "bbox_embed.", {}),
)
"""Grounding DINO's original key prefixes (regular expressions; groups are layer numbers) -> transformers'
GroundingDinoForObjectDetection's ({k} is group k, {n + k} group k plus one, for n groups), each with its renames of
what follows the prefix (none: kept). A target None
drops the key (buffers transformers recomputes, BERT's unused pooler); `{q,k,v}` / `{query,key,value}` splits a fused
projection (Swin's qkv, nn.MultiheadAttention's in_proj_weight/bias) into three, in that order."""
SWIN_EARLIER = (("attention.q_proj.", "attention.self.query."), ("attention.k_proj.", "attention.self.key."),
                ("attention.v_proj.", "attention.self.value."), ("attention.o_proj.", "attention.output.dense."),
                ("attention.relative_position_bias.relative_position_bias_table",
                 "attention.self.relative_position_bias_table"),
                ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."))
"""The Swin backbone's names in earlier transformers 5 releases (5.0 among them, without the `swin.` level), for the
names above: used where the installed transformers' model has them."""
_SPLIT = re.compile(r"\{(\w+),(\w+),(\w+)\}")
GROUNDING_DINO_HEAD_DIM = {"text": 64, "attention": 32}
"""Head counts are not in the tensors' shapes: Grounding DINO's BERT (bert-base) has 64-wide heads, its transformer
8 heads of d_model 256 (32 wide), and 4 sampling points per head and level."""


def grounding_dino_keys(state: dict) -> dict:
    """Grounding DINO's original state dict (groundingdino_swint_ogc.pth's `model`) with transformers' key names;
    raises AnnotatorNotAvailable naming keys it does not know."""
    out, unknown = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        found = next(((m, target, renames) for pattern, target, renames in GROUNDING_DINO_SECTIONS
                      if (m := re.match(pattern, key))), None)
        if found is None:
            unknown.append(key)
            continue
        match, target, renames = found
        if target is None:
            continue
        numbers = [int(n) for n in match.groups()]
        prefix = target.format(*numbers, *(n + 1 for n in numbers))
        rest = key[match.end():]
        renamed = next(((old, new) for old, new in renames.items() if rest.startswith(old)), None)
        if renamed is not None:
            if renamed[1] is None:
                continue
            rest = renamed[1] + rest[len(renamed[0]):]
        fused = _SPLIT.search(rest)
        if fused:
            for name, part in zip(fused.groups(), value.chunk(3, dim=0)):
                out[prefix + rest[:fused.start()] + name + rest[fused.end():]] = part.clone()
        else:
            out[prefix + rest] = value
    if unknown:
        raise AnnotatorNotAvailable(f"Grounding DINO checkpoint has keys this conversion does not know "
                                    f"({', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}); expected "
                                    f"{EXPECTED['grounding_dino']}")
    return out


def fit_swin_names(converted: dict, expected: set[str]) -> dict:
    """`converted` (grounding_dino_keys) with the Swin backbone's keys the installed model lacks renamed to their
    earlier names (SWIN_EARLIER)."""
    out = {}
    for key, value in converted.items():
        if key not in expected and key.startswith(_SWIN):
            rest = key[len(_SWIN):].removeprefix("swin.")
            for new, old in SWIN_EARLIER:
                rest = rest.replace(new, old)
            key = _SWIN + rest
        out[key] = value
    return out


def grounding_dino_config(state: dict) -> object:
    """A GroundingDinoConfig with the sizes the tensors of an original checkpoint have (head counts: see
    GROUNDING_DINO_HEAD_DIM)."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    def count(pattern: str) -> int:
        return len({m[1] for k in state if (m := re.match(pattern, k))})

    def layers(prefix: str) -> int:
        return count(re.escape(prefix) + r"(\d+)\.")

    stages = layers("backbone.0.layers.")
    patch = state["backbone.0.patch_embed.proj.weight"]
    tables = [state[f"backbone.0.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(stages)]
    out_norms = sorted(int(m[1]) for k in state if (m := re.match(r"backbone\.0\.norm(\d+)\.weight$", k)))
    swin = SwinConfig(embed_dim=patch.shape[0], patch_size=patch.shape[-1],
                      depths=[layers(f"backbone.0.layers.{i}.blocks.") for i in range(stages)],
                      num_heads=[t.shape[1] for t in tables], window_size=(round(tables[0].shape[0] ** 0.5) + 1) // 2,
                      out_indices=[i + 1 for i in out_norms])
    words = state["bert.embeddings.word_embeddings.weight"]
    bert = BertConfig(vocab_size=words.shape[0], hidden_size=words.shape[1],
                      num_hidden_layers=layers("bert.encoder.layer."),
                      num_attention_heads=max(1, words.shape[1] // GROUNDING_DINO_HEAD_DIM["text"]),
                      intermediate_size=state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
                      max_position_embeddings=state["bert.embeddings.position_embeddings.weight"].shape[0],
                      type_vocab_size=state["bert.embeddings.token_type_embeddings.weight"].shape[0])
    levels, d_model = state["transformer.level_embed"].shape
    heads = max(1, d_model // GROUNDING_DINO_HEAD_DIM["attention"])

    def points(prefix: str) -> int:
        return state[prefix + "attention_weights.weight"].shape[0] // (levels * heads)

    return GroundingDinoConfig(
        backbone_config=swin, text_config=bert, d_model=d_model, num_feature_levels=levels,
        num_queries=state["transformer.tgt_embed.weight"].shape[0],
        encoder_layers=layers("transformer.encoder.layers."), decoder_layers=layers("transformer.decoder.layers."),
        encoder_ffn_dim=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        decoder_ffn_dim=state["transformer.decoder.layers.0.linear1.weight"].shape[0],
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_n_points=points("transformer.encoder.layers.0.self_attn."),
        decoder_n_points=points("transformer.decoder.layers.0.cross_attn."))


def check_grounding_dino_file(path: Path) -> None:
    """Refuse a `--grounding-dino` checkpoint file that is not Grounding DINO's original checkpoint, saying what it
    is."""
    _check_kind(path, read_state(path), "--grounding-dino", GROUNDING_DINO_KIND, EXPECTED["grounding_dino"])


def grounding_dino_directory(name_or_path: str, tokenizer: str = GROUNDING_DINO_TOKENIZER) -> str:
    """What transformers should load for `--grounding-dino` (see `converted_directory`): Grounding DINO's original
    checkpoint converted, with a processor whose tokenizer is `tokenizer` (BERT's, which the original loads by name:
    from the local Hugging Face cache)."""
    return converted_directory(name_or_path, "--grounding-dino", GROUNDING_DINO_KIND, EXPECTED["grounding_dino"],
                               partial(_convert_grounding_dino, tokenizer=tokenizer))


def _convert_grounding_dino(path: Path, state: dict, out: Path, tokenizer: str) -> None:
    from transformers import (
        AutoTokenizer,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    try:
        words = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    except (OSError, ValueError) as err:
        raise AnnotatorNotAvailable(f"converting {path} needs the tokenizer {tokenizer} (Grounding DINO's BERT), which "
                                    f"is not on this machine ({str(err).splitlines()[0][:100]}): download it once with "
                                    f"`hf download {tokenizer}`") from None
    model = GroundingDinoForObjectDetection(grounding_dino_config(state))
    converted = fit_swin_names(grounding_dino_keys(state), set(model.state_dict()))
    missing, unexpected = model.load_state_dict(converted, strict=False)
    # the model's own: a final Swin norm the backbone path skips, the relative position indexes (fixed tables)
    unused = [k for k in missing if not (k.startswith(_SWIN + "swin.layernorm.") or
                                         k.endswith(".relative_position_index"))]
    if unused or unexpected:
        raise AnnotatorNotAvailable(f"{path} does not fit the Grounding DINO its shapes describe (missing "
                                    f"{', '.join(unused[:3]) or 'nothing'}; unexpected "
                                    f"{', '.join(unexpected[:3]) or 'nothing'}); expected "
                                    f"{EXPECTED['grounding_dino']}")
    model.save_pretrained(out)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=words).save_pretrained(out)
