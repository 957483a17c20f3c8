"""Taggers: what grounded-sam asks Grounding DINO to find in each image.

- `prompt-nouns` (default): the prompt's noun phrases; needs no weights (see atlas.annotate.nouns).
- `open-clip`: zero-shot over a vocabulary with an open_clip model whose weights are a local file.
- `ram`: the Recognize Anything Model, as in the paper, when the `ram` package is installed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from atlas.annotate.base import AnnotatorNotAvailable
from atlas.annotate.checkpoints import hub_offline
from atlas.annotate.config import TAGGER_NAMES
from atlas.annotate.nouns import prompt_nouns
from atlas.errors import BadInputError
from atlas.models.device import pick_device
from atlas.models.loader import cached_snapshot

# The 80 COCO categories: common objects, the open-clip tagger's vocabulary unless one is given.
COCO_VOCABULARY = tuple(w.replace("-", " ") for w in (
    "person bicycle car motorcycle airplane bus train truck boat traffic-light fire-hydrant stop-sign "
    "parking-meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
    "suitcase frisbee skis snowboard sports-ball kite baseball-bat baseball-glove skateboard surfboard "
    "tennis-racket bottle wine-glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot-dog pizza donut cake chair couch potted-plant bed dining-table toilet tv laptop mouse remote keyboard "
    "cell-phone microwave oven toaster sink refrigerator book clock vase scissors teddy-bear hair-drier toothbrush"
).split())


class Tagger(Protocol):
    """Tags (short noun phrases) for each image of a batch; `prompts` are the images' prompts."""

    name: str

    def tag(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[list[str]]: ...


class PromptNounsTagger:
    """The prompt's noun phrases: the image was generated to show them."""

    name = "prompt-nouns"

    @staticmethod
    def check(weights: str | os.PathLike | None = None) -> None:
        if weights is not None:
            raise BadInputError("the prompt-nouns tagger takes no weights: leave out --tagger-weights, or choose "
                                "--tagger open-clip or ram")

    def tag(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[list[str]]:
        return [prompt_nouns(p) for p in prompts]


def _weights_file(path: str | os.PathLike | None, what: str, hint: str) -> str:
    if path is None or not Path(path).is_file():
        raise AnnotatorNotAvailable(f"{what} {path or '(none given)'} are not on this machine: {hint}")
    return str(path)


class OpenClipTagger:
    """Zero-shot multi-label tagging: the `top_k` vocabulary words most similar to the image, each kept when
    its softmax probability over the vocabulary is at least `min_prob` (Grounding DINO drops the absent ones).
    """

    name = "open-clip"

    @staticmethod
    def check(weights: str | os.PathLike | None = None, model: str = "ViT-B-32") -> str:
        """The weights file, once open_clip and the file are found on this machine (nothing is loaded)."""
        if importlib.util.find_spec("open_clip") is None:
            raise AnnotatorNotAvailable("the open-clip tagger needs open_clip: pip install open_clip_torch")
        return _weights_file(weights, f"open_clip {model} weights", "download a local open_clip checkpoint "
                             "(.bin/.pt/.safetensors) and pass its path as --tagger-weights (weights= in Python)")

    def __init__(self, model: str = "ViT-B-32", weights: str | os.PathLike | None = None,
                 vocabulary: Sequence[str] | str | os.PathLike | None = None, top_k: int = 5,
                 min_prob: float = 0.05, template: str = "a photo of a {}.", device: str | None = None) -> None:
        weights = self.check(weights, model)
        import open_clip

        if open_clip.get_model_config(model) is None:
            raise BadInputError(f"unknown open_clip model {model!r}; see open_clip.list_models()")
        self.vocabulary = _read_vocabulary(vocabulary)
        self.top_k, self.min_prob = top_k, min_prob
        self.device = pick_device(device)
        with hub_offline():
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model, pretrained=weights, device=self.device)
            tokenizer = open_clip.get_tokenizer(model)
        self.model.eval()
        with torch.no_grad():
            text = self.model.encode_text(tokenizer([template.format(w) for w in self.vocabulary]).to(self.device))
        self.text_features = torch.nn.functional.normalize(text.float(), dim=-1)

    @torch.no_grad()
    def tag(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[list[str]]:
        batch = torch.stack([self.preprocess(Image.fromarray(im)) for im in images]).to(self.device)
        features = torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1)
        probs = (self.model.logit_scale.exp() * features @ self.text_features.T).softmax(-1)
        top = probs.topk(min(self.top_k, len(self.vocabulary)), dim=-1)
        return [[self.vocabulary[j] for p, j in zip(ps.tolist(), js.tolist()) if p >= self.min_prob]
                for ps, js in zip(top.values, top.indices)]


def _read_vocabulary(vocabulary: Sequence[str] | str | os.PathLike | None) -> list[str]:
    """A list as given, a text file (one entry a line), or the COCO categories."""
    if vocabulary is None:
        return list(COCO_VOCABULARY)
    if isinstance(vocabulary, (str, os.PathLike)):
        words = Path(vocabulary).read_text().splitlines()
    else:
        words = list(vocabulary)
    words = [w.strip() for w in words if w.strip()]
    if not words:
        raise BadInputError("the open-clip tagger's vocabulary is empty")
    return words


RAM_TOKENIZER = "bert-base-uncased"


class RamTagger:
    """The Recognize Anything Model (RAM++ by default, or RAM), the paper's tagger; weights are a local .pth.

    RAM builds a `bert-base-uncased` tokenizer by name (RAM_TOKENIZER), so it must be in the Hugging Face cache.
    """

    name = "ram"

    @staticmethod
    def check(weights: str | os.PathLike | None = None, variant: str = "ram_plus") -> str:
        """The weights file, once the ram package, the file and RAM's BERT tokenizer are found on this machine."""
        if importlib.util.find_spec("ram") is None:
            raise AnnotatorNotAvailable(
                "the ram tagger needs the recognize-anything package (not on PyPI): "
                "pip install git+https://github.com/xinyu1205/recognize-anything.git")
        if variant not in ("ram_plus", "ram"):
            raise BadInputError(f"unknown RAM variant {variant!r}; expected ram_plus or ram")
        weights = _weights_file(weights, f"RAM weights ({variant})",
                                "download ram_plus_swin_large_14m.pth (or ram_swin_large_14m.pth) on a machine "
                                "with network and pass its path as --tagger-weights (weights= in Python)")
        if cached_snapshot(RAM_TOKENIZER) is None:
            raise AnnotatorNotAvailable(f"RAM builds the {RAM_TOKENIZER} tokenizer, which is not in the local Hugging "
                                        f"Face cache: download it with `hf download {RAM_TOKENIZER}` on a machine "
                                        "with network and copy ~/.cache/huggingface here")
        return weights

    def __init__(self, weights: str | os.PathLike | None = None, variant: str = "ram_plus", image_size: int = 384,
                 device: str | None = None) -> None:
        weights = self.check(weights, variant)
        import ram
        import ram.models

        self.device = pick_device(device)
        with hub_offline():
            model = getattr(ram.models, variant)(pretrained=weights, image_size=image_size, vit="swin_l")
        self.model = model.eval().to(self.device)
        self.transform = ram.get_transform(image_size=image_size)

    @torch.no_grad()
    def tag(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[list[str]]:
        batch = torch.stack([self.transform(Image.fromarray(im)) for im in images]).to(self.device)
        english, _ = self.model.generate_tag(batch)
        return [[t.strip() for t in tags.split("|") if t.strip()] for tags in english]


_TAGGERS = dict(zip(TAGGER_NAMES, (PromptNounsTagger, OpenClipTagger, RamTagger)))


def _tagger_class(name: str) -> type:
    if name not in _TAGGERS:
        raise BadInputError(f"unknown tagger {name!r}; expected one of {', '.join(TAGGER_NAMES)}")
    return _TAGGERS[name]


def get_tagger(name: str, **options: object) -> Tagger:
    """The tagger called `name`, built with `options` (its constructor's keyword arguments)."""
    return _tagger_class(name)(**options)


def check_tagger(name: str, weights: str | os.PathLike | None = None) -> None:
    """Raise what building the tagger `name` with `weights` would raise for a missing package or file, loading
    nothing."""
    _tagger_class(name).check(weights)
