"""`atlas search TEXT`: concepts for a word, by label, by meaning, or (before any labels exist) by activation.

1. TEXT is a linked label: concepts ranked by how well they predict its masks.
2. Otherwise, unless TEXT looks like a misspelt label (then the error names it), the linked label
   closest in meaning (sentence embeddings) stands in when it is close enough: "kitten" finds "cat".
3. An atlas without labels yet: TEXT is generated as a prompt, its residual update at the block and t
   is averaged over positions, and concepts are ranked by decoder cosine to it (FAISS).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from atlas.models.text import TextEmbedder
from atlas.store import Atlas, ConceptInfo, InvalidInputError, Neighbor, NoLabelsError, UnknownLabelError

MAX_TEXT = 200
"""Labels are a few words; longer text is refused before any model loads to embed it."""
MEANING_THRESHOLD = 0.5  # cosine (MiniLM) below which no label is taken as a stand-in
TYPO_CUTOFF = 0.85  # difflib ratio above which the text is taken for a misspelt label


@dataclass
class SearchResult:
    query: str
    via: str  # "label", "meaning" or "prompt activation"
    label: str | None
    similarity: float | None
    concepts: list[ConceptInfo | Neighbor]


def closest_label(text: str, labels: list[str], embedder: TextEmbedder) -> tuple[str, float]:
    vectors = embedder.embed([text, *labels])
    sims = vectors[1:] @ vectors[0]
    best = int(np.argmax(sims))
    return labels[best], float(sims[best])


def search_concepts(atlas: Atlas, text: str, t: float | None = None, block: str | None = None,
                    branch: str = "cond", k: int = 10, embedder: TextEmbedder | None = None,
                    variant: str | None = None, sae_k: int | None = None) -> SearchResult:
    """The `k` concepts that fit TEXT best, among the primary SAEs of `branch` unless `variant` (e.g. "k20") or
    `sae_k` (the SAEs' k) picks others; `t` and `block` narrow them further."""
    saes = {"t": t, "block": block, "branch": branch, "variant": variant, "sae_k": sae_k}
    if not text.strip():
        raise InvalidInputError("empty search text: give a label, e.g. 'red circle'")
    if len(text) > MAX_TEXT:
        raise InvalidInputError(f"search text of {len(text):,} characters: give a label of at most {MAX_TEXT}")
    try:
        return SearchResult(text, "label", text, 1.0, atlas.concepts(label=text, limit=k, **saes))
    except NoLabelsError as no_labels:
        from atlas.models import ModelNotFoundError

        try:
            found = by_prompt_activation(atlas, text, block or "mid", 1.0 if t is None else t, branch, k, variant,
                                         sae_k)
        except ModelNotFoundError:
            raise no_labels from None  # nothing to generate the prompt with: say how to get labels instead
        return SearchResult(text, "prompt activation", None, None, found)
    except UnknownLabelError:
        labels = atlas.labels()
        if difflib.get_close_matches(text, labels, n=1, cutoff=TYPO_CUTOFF):
            raise  # a typo: the error names the label meant, rather than silently searching another
        label, similarity = closest_label(text, labels, embedder or TextEmbedder())
        if similarity < MEANING_THRESHOLD:
            raise
        return SearchResult(text, "meaning", label, similarity, atlas.concepts(label=label, limit=k, **saes))


def by_prompt_activation(atlas: Atlas, text: str, block: str, t: float, branch: str, k: int,
                         variant: str | None = None, sae_k: int | None = None) -> list[Neighbor]:
    """Concepts whose decoder direction is closest to TEXT's mean residual update at (block, t)."""
    from atlas.capture import delta_at
    from atlas.models import load_model, t_to_step

    model = load_model(atlas.model()["source"])
    steps = model.spec.default_steps
    _, delta = delta_at(model, [text], [0], block, t_to_step(t, steps), branch, steps)
    vector = delta[0].float().mean(dim=(1, 2)).numpy()
    return atlas.search_vector(vector / max(float(np.linalg.norm(vector)), 1e-12), block, t=t, k=k, branch=branch,
                               variant=variant, sae_k=sae_k)
