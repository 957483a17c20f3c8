"""Checkpoints in their authors' own layouts: SAM's `sam_vit_{b,l,h}_*.pth` (segment-anything) is converted once to
the transformers layout, into `<file stem>-transformers/` beside it, and loaded from there afterwards.

The conversion renames the keys (segment-anything's module names -> transformers' SamModel) and reads the sizes
from the tensors' shapes (ViT width, depth, heads from the relative position tables, windowed vs global blocks).
A file of another kind (Grounding DINO's original groundingdino_swint_ogc.pth, a transformers state dict, anything
else) is refused with what was found and what is expected.
"""

from __future__ import annotations

import re
import shutil
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
                   "mask_decoder.* tensors) or a transformers SAM directory / Hugging Face id"}


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
        return "SAM's original checkpoint"
    if any(k.startswith("vision_encoder.") for k in keys) and any(k.startswith("mask_decoder.") for k in keys):
        return "a transformers SAM state dict (save it with save_pretrained and pass its directory)"
    if any(k.startswith("backbone.0.") for k in keys) and any(k.startswith("transformer.") for k in keys):
        return "Grounding DINO's original checkpoint (groundingdino_*.pth)"
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
    kind = checkpoint_kind(read_state(path))
    if kind != "SAM's original checkpoint":
        raise AnnotatorNotAvailable(f"--sam {path} is {kind}; expected {EXPECTED['sam']}")


def sam_directory(name_or_path: str) -> str:
    """What transformers should load for `--sam`: the argument itself, unless it is a checkpoint file; SAM's original
    one is converted (once) into `<stem>-transformers/` beside it and that directory is returned."""
    path = Path(name_or_path)
    if not path.is_file():
        return name_or_path
    out = path.with_name(f"{path.stem}-transformers")
    if (out / "config.json").is_file():
        return str(out)
    check_sam_file(path)
    state = read_state(path)
    from transformers import SamImageProcessor, SamModel, SamProcessor

    logger.info(f"converting SAM's original checkpoint {path} to the transformers layout in {out} (done once)")
    config = sam_config(state)
    model = SamModel(config)
    model.load_state_dict(sam_keys(state), strict=True)
    size = config.vision_config.image_size
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    SamProcessor(SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size})
                 ).save_pretrained(tmp)
    tmp.rename(out)
    return str(out)


def refuse_grounding_dino_file(name_or_path: str) -> None:
    """A checkpoint file given as --grounding-dino: say what it is and what is expected (a directory or an id)."""
    path = Path(name_or_path)
    if path.is_file():
        raise AnnotatorNotAvailable(
            f"--grounding-dino {path} is {checkpoint_kind(read_state(path))}; expected a transformers Grounding DINO "
            "directory or Hugging Face id (IDEA-Research/grounding-dino-tiny is groundingdino_swint_ogc.pth "
            "converted)")
