"""Which prompt words drive a concept: drop each word of an image's caption, denoise again from the same seed up to
the concept's timestep (no further), and measure the concept's peak activation (its SAE's top-k code, as stored)
without it.

The full caption's activation is measured the same way, so the changes compare like with like."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from atlas.capture.config import BRANCHES
from atlas.errors import BadInputError, NotFoundError
from atlas.models import Hooks, load_model, t_to_step
from atlas.models.sampler import sample_latents
from atlas.sae import Sae
from atlas.store import Atlas

if TYPE_CHECKING:
    from atlas.models import TextToImageModel

MAX_WORDS = 24
"""Captions longer than this are refused: each word costs one denoising run."""


class _Reached(Exception):
    """Raised by the hook once the concept's step is recorded: the steps after it are not needed."""


def delta_until(model: TextToImageModel, prompts: list[str], seeds: list[int], block: str, step: int, branch: str,
                steps: int) -> torch.Tensor:
    """The `branch` half of delta at `block` on step index `step`, denoising no further than that step."""
    model.check_branches([branch])
    seen: dict[str, torch.Tensor] = {}

    def record(_block: str, _step: object, delta: torch.Tensor) -> None:
        seen["delta"] = delta.chunk(2)[BRANCHES.index(branch)].clone()
        raise _Reached

    try:
        sample_latents(model, prompts, seeds, steps, None, Hooks().on(block, record, steps=[step]))
    except _Reached:
        pass
    return seen["delta"]


@dataclass(frozen=True)
class WordEffect:
    word: str
    activation: float
    """The concept's peak activation with this word dropped."""
    change: float
    """activation minus the full caption's: negative when the word drives the concept."""


@dataclass(frozen=True)
class Attribution:
    concept_id: str
    image_id: int
    prompt: str
    activation: float
    """The concept's peak activation on the full caption."""
    words: list[WordEffect]


def word_attribution(atlas: Atlas, concept: str, image_id: int,
                     load: Callable[[str], TextToImageModel] = load_model) -> Attribution:
    """Drop each word of image `image_id`'s caption in turn and measure concept `concept` at its block and t."""
    sae_info, latent = atlas.resolve(concept)
    rows = atlas.query("SELECT prompt, seed FROM images WHERE id = ?", [int(image_id)]).to_pylist()
    if not rows or not rows[0]["prompt"]:
        raise NotFoundError(f"image {image_id} does not exist or has no caption")
    prompt, seed = rows[0]["prompt"], int(rows[0]["seed"] or 0)
    words = prompt.split()
    if len(words) > MAX_WORDS:
        raise BadInputError(f"the caption of image {image_id} has {len(words)} words; word attribution takes at "
                            f"most {MAX_WORDS}")
    prompts = [prompt] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
    model = load(atlas.model()["source"])
    steps = model.spec.default_steps
    half = delta_until(model, prompts, [seed] * len(prompts), sae_info.block, t_to_step(sae_info.t, steps),
                       sae_info.branch, steps)
    sae = Sae.from_pretrained(atlas.file_path(sae_info.path))
    with torch.no_grad():
        out = sae.encode(half.permute(0, 2, 3, 1).reshape(-1, half.shape[1]).float())
    value = (out.top_acts * (out.top_indices == latent)).sum(1).reshape(len(prompts), -1).amax(1).tolist()
    return Attribution(str(atlas.concept(concept).concept_id), int(image_id), prompt, value[0],
                       [WordEffect(w, v, v - value[0]) for w, v in zip(words, value[1:])])
