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
FOLLOW_LINEAGE_SQL = """
WITH RECURSIVE
  down(sae_id, latent, score, hops) AS (
    SELECT child_sae_id, child_latent, score, 1 FROM snapshot.lineage
    WHERE parent_sae_id = $sae AND parent_latent = $latent
    UNION ALL
    SELECT l.child_sae_id, l.child_latent, least(d.score, l.score), d.hops + 1 FROM down d JOIN snapshot.lineage l
      ON l.parent_sae_id = d.sae_id AND l.parent_latent = d.latent),
  up(sae_id, latent, score, hops) AS (
    SELECT parent_sae_id, parent_latent, score, 1 FROM snapshot.lineage
    WHERE child_sae_id = $sae AND child_latent = $latent
    UNION ALL
    SELECT l.parent_sae_id, l.parent_latent, least(u.score, l.score), u.hops + 1 FROM up u JOIN snapshot.lineage l
      ON l.child_sae_id = u.sae_id AND l.child_latent = u.latent),
  reached AS (SELECT sae_id, latent, max(score) AS score FROM (SELECT * FROM down UNION ALL SELECT * FROM up)
              GROUP BY ALL)
SELECT c.concept_id, r.score, r.sae_id, r.latent, c.block, c.t, c.branch, c.variant FROM reached r
JOIN concepts c USING (sae_id, latent) WHERE $t IS NULL OR c.t = $t ORDER BY r.score DESC, c.t DESC, r.latent LIMIT $k
"""
"""The concepts a concept ($sae, $latent) descends from or into by lineage links, over any number of timesteps,
each scored by the weakest link of its best path (only those at $t unless it is NULL), best first."""


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
    """The image file, an absolute path."""
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
