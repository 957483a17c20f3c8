"""Scores some judges need: CLIP similarity of an image to a text (open_clip) and the LPIPS distance between two
images (lpips). Both load weights from this machine only: a missing package or file raises JudgeUnavailable with
the one line that says what to download and where.

    clip = load_clip()                            # ViT-B-32, laion2b_s34b_b79k from the Hugging Face cache
    clip.similarity([image], "snow")              # cosine similarity per image, in [-1, 1]
    load_lpips().distance(original, edited)       # 0 for identical images
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from atlas.edit.config import CLIP_MODEL, CLIP_WEIGHTS
from atlas.edit.judge import JudgeUnavailable
from atlas.errors import BadInputError
from atlas.models.device import pick_device

MIN_LPIPS_SIDE = 64
"""LPIPS's AlexNet pools an image below 32 px to nothing: smaller images are scaled up (nearest) to this side."""


class ClipScorer:
    """Cosine similarity between images and a text under a CLIP model (open_clip's encode_image / encode_text)."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor], device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model, self.preprocess, self.tokenizer = model.eval().to(self.device), preprocess, tokenizer
        self._texts: dict[str, torch.Tensor] = {}

    def text_features(self, text: str) -> torch.Tensor:
        """The unit-length embedding (1, D) of `text`."""
        if text not in self._texts:
            with torch.no_grad():
                tokens = self.tokenizer([text]).to(self.device)
                self._texts[text] = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return self._texts[text]

    @torch.no_grad()
    def similarity(self, images: Sequence[np.ndarray], text: str) -> np.ndarray:
        """Cosine similarity of each (H, W, 3) uint8 image to `text`, in [-1, 1]."""
        batch = torch.stack([self.preprocess(Image.fromarray(image)) for image in images]).to(self.device)
        features = F.normalize(self.model.encode_image(batch).float(), dim=-1)
        return (features @ self.text_features(text).T)[:, 0].cpu().numpy()


def load_clip(model: str = CLIP_MODEL, weights: str = CLIP_WEIGHTS, device: str | None = None) -> ClipScorer:
    """An open_clip model with local weights: `weights` is a checkpoint file, or a pretrained tag of `model` whose
    file is in the local Hugging Face cache (nothing is downloaded)."""
    if importlib.util.find_spec("open_clip") is None:
        raise JudgeUnavailable("the style judge needs open_clip: pip install open_clip_torch")
    import open_clip

    if open_clip.get_model_config(model) is None:
        raise BadInputError(f"unknown open_clip model {model!r}; see open_clip.list_models()")
    options: dict = {}
    path = weights
    if not Path(weights).is_file():
        tag = open_clip.get_pretrained_cfg(model, weights)
        if not tag:
            raise BadInputError(f"--clip-weights {weights!r} is neither a file nor a pretrained tag of {model}; its "
                                f"tags: {', '.join(open_clip.list_pretrained_tags_by_model(model))}")
        path = _local_weights(tag, model, weights)
        options = {"force_quick_gelu": bool(tag.get("quick_gelu")), "image_mean": tag.get("mean"),
                   "image_std": tag.get("std"), "image_interpolation": tag.get("interpolation"),
                   "image_resize_mode": tag.get("resize_mode")}
    dev = pick_device(device)
    clip, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=path, device=dev, **options)
    return ClipScorer(clip, preprocess, open_clip.get_tokenizer(model), dev)


def _local_weights(tag: dict, model: str, weights: str) -> str:
    """The file of a pretrained tag in the local Hugging Face cache (or open_clip's ~/.cache/clip for a tag that
    only has a URL)."""
    hub = tag.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found
        raise JudgeUnavailable(f"the style judge needs the open_clip {model} weights {weights}: on a machine with "
                               f"network run `hf download {repo} {names[0]}` and copy ~/.cache/huggingface here, or "
                               "pass --clip-weights PATH to a checkpoint file")
    cached = Path("~/.cache/clip").expanduser() / Path(tag["url"]).name
    if not cached.is_file():
        raise JudgeUnavailable(f"the style judge needs the open_clip {model} weights {weights}: download "
                               f"{tag['url']} into {cached.parent}/, or pass --clip-weights PATH to a checkpoint file")
    return str(cached)


class LpipsScorer:
    """The LPIPS distance between two images (0 for identical ones): how far an edit moved the image as a person
    would see it, the paper's measure of damage."""

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)

    @torch.no_grad()
    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """LPIPS between two (H, W, 3) uint8 images of one size."""
        x = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1.0
        side = min(x.shape[2:])
        if side < MIN_LPIPS_SIDE:
            x = F.interpolate(x, scale_factor=math.ceil(MIN_LPIPS_SIDE / side), mode="nearest")
        return float(self.net(x[:1], x[1:]).item())


def load_lpips(device: str | None = None) -> LpipsScorer:
    """LPIPS over AlexNet, the package's default, with torchvision's AlexNet weights from the local torch hub."""
    if importlib.util.find_spec("lpips") is None:
        raise JudgeUnavailable("LPIPS needs the lpips package: pip install lpips")
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        raise JudgeUnavailable(f"LPIPS needs torchvision's AlexNet weights: download {url} into {cached.parent}/")
    import lpips

    with warnings.catch_warnings():  # lpips builds AlexNet with torchvision's deprecated `pretrained=True`
        warnings.simplefilter("ignore")
        net = lpips.LPIPS(net="alex", verbose=False)
    return LpipsScorer(net, pick_device(device))
