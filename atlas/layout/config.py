"""Options of layout prediction; free of heavy imports, the CLI reads it at startup."""

from __future__ import annotations

from dataclasses import dataclass

from atlas.errors import BadInputError

METHODS = ("weighted", "top-concept", "top-labelled")
SIMILARITIES = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
THRESHOLDS = {
    "top-concept": SIMILARITIES,  # cosine similarity
    "top-labelled": SIMILARITIES,
    "weighted": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),  # fraction of the image's best score
}


@dataclass
class LayoutConfig:
    """Options of layout prediction."""

    method: str = "weighted"
    """'weighted': every active concept adds evidence for the label, weighted by how well it matched the label's
    objects on the dictionary images; 'top-concept': the paper's rule, each position's top concept votes with its
    label embedding (an unlabelled top concept predicts nothing); 'top-labelled': a more generous vote, by each
    position's most active concept that has a label."""
    threshold: float | None = None
    """weighted: the fraction of the image's best score a position needs; top-concept and top-labelled: the cosine
    similarity to the label its concept's embedding needs (None: per SAE, the value of THRESHOLDS that scores best
    on the dictionary images)."""
    include_backgrounds: bool = False
    """Also score background labels (style), not only objects."""

    def __post_init__(self) -> None:
        check_method(self.method)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise BadInputError(f"unknown layout method {method!r}; choose one of {', '.join(METHODS)}")
