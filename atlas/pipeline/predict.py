"""`atlas predict-layout`: one prompt's layout predicted from an early step, beside where the object ends up.

It composes stages (the model, the atlas's SAE, the layout predictors, the annotator the atlas was built
with), so it lives on the pipeline floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atlas.annotate.run import COVERAGE
from atlas.capture import delta_at
from atlas.dictionary.run import DICTIONARY_SPLITS, annotation_source, dictionary_cells
from atlas.errors import NotFoundError
from atlas.grids import iou, mask_to_grid
from atlas.layout.score import (
    LayoutConfig,
    fit_threshold,
    label_masks,
    label_vectors,
    make_predictor,
    scored_masks,
)
from atlas.models import load_model, t_to_step
from atlas.models.text import TextEmbedder
from atlas.pipeline.presets import recorded_annotator
from atlas.sae import Sae
from atlas.store import Atlas


@dataclass
class PromptLayout:
    """One prompt's predicted mask (from the step at t) beside the mask the annotator finds in the final image."""

    image: np.ndarray  # (H, W, 3) uint8 final image
    predicted: np.ndarray  # (gh, gw) bool
    annotated: np.ndarray  # (gh, gw) bool
    iou: float
    threshold: float  # the one used


def predict_prompt(atlas: Atlas, prompt: str, label: str, t: float = 1.0, block: str = "up", seed: int = 0,
                   config: LayoutConfig | None = None, embedder: TextEmbedder | None = None,
                   branch: str = "cond") -> PromptLayout:
    """Generate `prompt`, read its codes at (block, t) of `branch` through the atlas's (primary) SAE, predict where
    `label` goes."""
    config = config or LayoutConfig()
    embedder = embedder or TextEmbedder()
    sae_info = next((s for s in atlas.saes() if (s.block, s.t, s.branch, s.variant) == (block, float(t), branch, "")),
                    None)
    if sae_info is None:
        have = ", ".join(s.name for s in atlas.saes())
        raise NotFoundError(f"no SAE of block {block!r} at t={t} on the {branch} branch; this atlas has {have}")
    if label not in atlas.labels():
        atlas.concepts(label=label)  # raises UnknownLabelError with close labels
    model = load_model(atlas.model()["source"])
    steps = model.spec.default_steps
    latents, half = delta_at(model, [prompt], [seed], block, t_to_step(t, steps), branch, steps)
    image = model.to_uint8(model.decode(latents))[0]
    delta = half[0].permute(1, 2, 0).reshape(-1, half.shape[1]).float()
    sae = Sae.from_pretrained(atlas.file_path(sae_info.path))
    with torch.no_grad():
        out = sae.encode(delta)
    grid = (sae_info.grid_h, sae_info.grid_w)
    latents = out.top_indices.numpy().reshape(*grid, -1)
    values = out.top_acts.numpy().reshape(*grid, -1)
    vectors = label_vectors(atlas, embedder)
    source = annotation_source(atlas)
    dict_cells = dictionary_cells(atlas, source, DICTIONARY_SPLITS)
    dictionary_codes = atlas.sae_codes(sae_info.id, DICTIONARY_SPLITS)
    predict = make_predictor(atlas, sae_info, config.method, vectors, dictionary_codes, dict_cells)
    train = scored_masks(label_masks(dict_cells, grid), config.include_backgrounds)
    threshold = fit_threshold(dictionary_codes, train, predict, sae_info, config.method, config.threshold)
    predicted = predict(latents, values, label, threshold)
    found = recorded_annotator(source, atlas.root).annotate([image], [prompt])[0]
    masks = [o.mask for o in found if o.label == label]
    annotated = mask_to_grid(np.any(masks, axis=0), grid, COVERAGE) if masks else np.zeros(grid, bool)
    return PromptLayout(image, predicted, annotated, iou(predicted, annotated), threshold)
