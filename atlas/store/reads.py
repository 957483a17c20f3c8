"""What an atlas's reads return (concepts, image hits, neighbours) and how links between concepts and labels
rank, for every query that orders them (atlas.store.atlas.Atlas, the web atlas).
"""

from __future__ import annotations

from dataclasses import dataclass

LINK_SCORE = "mean_iou DESC NULLS LAST, hit_rate DESC NULLS LAST, support DESC NULLS LAST"
"""How well a concept predicts a label, best first: the order of links everywhere, before a tie-breaking id."""
LINK_RANK = f"{LINK_SCORE}, sae_id, latent"
"""Links ranked down to a unique concept, so equal IoUs always pick the same one."""
BEST_CONCEPT_SQL = f"first(concept_id ORDER BY {LINK_RANK})"
"""A label's best concept, as an aggregate over `concept_labels` rows grouped by label."""


@dataclass(frozen=True)
class ConceptInfo:
    """One concept; the label fields are set when it was found through a label."""

    concept_id: str
    sae_id: int
    block: str
    t: float
    branch: str
    latent: int
    variant: str = ""
    frequency: float | None = None
    mean_activation: float | None = None
    decoder_norm: float | None = None
    best_label: str | None = None
    name: str | None = None
    note: str | None = None
    label: str | None = None
    mean_iou: float | None = None
    hit_rate: float | None = None
    precision: float | None = None
    recall: float | None = None
    support: int | None = None


@dataclass(frozen=True)
class ImageHit:
    """An image where a concept fires: its largest value, at which cell, and on how many cells."""

    image_id: int
    activation: float
    n_positions: int
    row: int
    col: int
    path: str | None
    prompt: str | None


@dataclass(frozen=True)
class Neighbor:
    concept_id: str
    score: float
    sae_id: int
    latent: int
    block: str
    t: float
    branch: str
    variant: str = ""
