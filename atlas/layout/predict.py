"""Layout prediction on one image: where a label's object will be, from the codes of an early step."""

from __future__ import annotations

import numpy as np


def predict_layout(latents: np.ndarray, values: np.ndarray, concept_vectors: np.ndarray, target: np.ndarray,
                   threshold: float = 0.9, labelled_only: bool = False) -> np.ndarray:
    """Predicted mask of a target label on one image's grid, from its codes at an early step.

    `latents`, `values`: (H, W, k) top-k codes per position. `concept_vectors`: (n_latents, e) unit
    label embeddings of the concepts (zero rows for concepts without a label). At each position the
    top concept (the most active of its codes: the paper's rule) votes, or with `labelled_only` the most
    active concept that has a label; the position is predicted when the voter's label embedding has a cosine
    similarity to `target` above `threshold`. An unlabelled top concept predicts nothing there.
    """
    labelled = np.abs(concept_vectors).sum(1) > 0
    usable = (labelled[latents] if labelled_only else True) & (values > 0)
    best = np.where(usable, values, -np.inf).argmax(-1)
    top = np.take_along_axis(latents, best[..., None], -1)[..., 0]
    has = usable.any(-1) & labelled[top]
    sim = concept_vectors[top] @ target
    return has & (sim > threshold)


def weighted_layout(latents: np.ndarray, values: np.ndarray, weights: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Predicted mask of a target label from the evidence of every active concept, not only the top one.

    `latents`, `values`: (H, W, k) top-k codes per position. `weights`: (n_latents,) how well each
    concept's maps matched the label's objects on the dictionary images (its mean IoU there, 0 for
    concepts that never overlapped one). A position's score is the sum of its codes' values times
    their weights; positions scoring above `fraction` of the image's best score are predicted. Early
    concepts rarely pass the paper's IoU > 0.5 rule and fire wider than the objects, so the top-concept
    vote leaves most of an object unclaimed; their summed weak evidence still peaks where it will be.
    """
    score = (values * weights[latents]).sum(-1)
    top = score.max(initial=0.0)
    return score > fraction * top if top > 0 else np.zeros(score.shape, bool)
