"""Options of linking concepts to labels (`atlas link`); free of heavy imports, the CLI reads it at startup."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LinkConfig:
    """Options of `atlas link`."""

    threshold: float = 0.1
    """A position is 'on' in a latent's map when its activation exceeds this fraction of the map's maximum."""
    iou: float = 0.5
    """IoU above which a latent's map matches an object (the paper's rule)."""
    min_hits: int = 2
    """Objects a latent must match before it earns their label."""


DICTIONARY_DIR = "dictionary"
"""Under an atlas: the dictionary's files beside the catalog's concept_labels."""
ATTRIBUTE_LINKS = "attribute_links.parquet"
"""Under dictionary/: the (concept, attribute label) pairs that pass the rule, with the label's kind."""
GUESSES = "guesses.parquet"
"""Under dictionary/: for each concept with no passing link, the images it fires on and its best label below the
rule."""
