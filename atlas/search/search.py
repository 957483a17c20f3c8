"""`atlas search TEXT` (and the web's search): concepts for a word, by label, name, meaning, or activation.

1. TEXT is a linked label: concepts ranked by how well they predict its masks.
2. TEXT is a concept's name (given by a person, any case): those concepts.
3. Otherwise, unless TEXT looks like a misspelt label (then the error names it), the labels and concept
   names (people's and the dictionary's roll-up names) closest in meaning (sentence embeddings) are listed
   with their similarity; the closest stands in when it is close enough ("kitten" finds "cat"), and below
   MEANING_THRESHOLD the answer is that nothing is close (naming the nearest), never an unrelated label.
4. An atlas without labels yet: TEXT is generated as a prompt, its residual update at the block and t
   is averaged over positions, and concepts are ranked by decoder cosine to it (FAISS).

A concept id (mid/1.0/412) is not searched: `resolve_text` says which concept it names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from atlas.errors import NotFoundError
from atlas.models.text import TextEmbedder
from atlas.store import Atlas, ConceptInfo, InvalidInputError, Neighbor, NoLabelsError, UnknownLabelError
from atlas.store.errors import BadConceptIdError
from atlas.store.ids import parse_concept_id
from atlas.store.reads import BEST_CONCEPT_SQL

Embed = Callable[[list[str]], np.ndarray]
"""Unit-norm sentence embeddings of texts (TextEmbedder.embed, or a server's cached one)."""

MAX_TEXT = 200
"""Labels are a few words; longer text is refused before any model loads to embed it."""
MEANING_THRESHOLD = 0.5  # cosine (MiniLM) below which no label is taken as a stand-in
TYPO_CUTOFF = 0.85  # difflib ratio above which the text is taken for a misspelt label


@dataclass
class Match:
    """A label or a concept name close in meaning to a search text."""

    text: str
    kind: str  # "label", "name" (a person's) or "dictionary name" (rolled up from the concept's labels)
    similarity: float
    concept_id: str | None  # a name's concept; a label's best concept


@dataclass
class Resolution:
    """What a search text names: a concept (its id), else the labels and names closest in meaning."""

    query: str
    concept: str | None = None
    matches: list[Match] = field(default_factory=list)
    """At least MEANING_THRESHOLD similar, best first (a text containing the query verbatim before the rest)."""
    nearest: Match | None = None
    """The closest of all, also when nothing is close enough."""


@dataclass
class SearchResult:
    query: str
    via: str  # "label", "name", "meaning" or "prompt activation"
    label: str | None
    similarity: float | None
    concepts: list[ConceptInfo | Neighbor]
    matches: list[Match] = field(default_factory=list)


def concept_id_of(text: str) -> str | None:
    """The concept id TEXT spells (mid/1.0/412), None when it is not one."""
    if "/" not in text:
        return None
    try:
        return str(parse_concept_id(text.strip()))
    except BadConceptIdError:
        return None


def named_concepts(atlas: Atlas) -> list[tuple[str, str, str]]:
    """(name, kind, concept_id) of every named concept: the names people gave, then the dictionary's roll-up names
    of the concepts of primary SAEs that have links (to object or attribute labels)."""
    from atlas.dictionary.names import atlas_concept_names, attribute_linked

    given = [(r["name"], "name", r["concept_id"]) for r in atlas.query(
        "SELECT concept_id, name FROM concepts WHERE name IS NOT NULL ORDER BY concept_id").to_pylist()]
    linked = atlas.query("SELECT DISTINCT concept_id FROM concept_labels WHERE variant = '' ORDER BY concept_id")
    rolled = atlas_concept_names(atlas, sorted({*linked["concept_id"].to_pylist(), *attribute_linked(atlas)}))
    return given + [(name, "dictionary name", cid) for cid, name in rolled.items() if name]


def resolve_text(atlas: Atlas, text: str, embed: Embed | None = None, k: int = 10) -> Resolution:
    """What TEXT names in the atlas: a concept id goes to its concept; any other text to the labels and concept
    names closest in meaning, with their similarity (a name shared by several concepts: its best-linked one; a
    dictionary name is as close as the lesser of its whole and its stem, "triangle" of "triangle (any colour)", so
    neither its qualifier, which is close to any colour, nor a bare stem, 'red' for 'red disc', matches alone)."""
    from atlas.dictionary.names import name_stem

    text = text.strip()
    concept = concept_id_of(text)
    if concept is not None:
        return Resolution(text, concept=atlas.concept(concept).concept_id)
    best = {r["label"]: r["concept_id"] for r in atlas.query(
        f"SELECT label, {BEST_CONCEPT_SQL} AS concept_id FROM concept_labels GROUP BY label").to_pylist()}
    candidates = [(label, "label", best.get(label)) for label in atlas.labels()]
    seen: set[tuple[str, str]] = set()
    for name, kind, cid in named_concepts(atlas):
        if (name.lower(), kind) not in seen and name not in best:
            seen.add((name.lower(), kind))
            candidates.append((name, kind, cid))
    if not candidates:
        return Resolution(text)
    embed = embed or TextEmbedder().embed
    query = embed([text])[0]
    stems = embed([name_stem(c[0]) if c[1] == "dictionary name" else c[0] for c in candidates]) @ query
    scores = np.minimum(embed([c[0] for c in candidates]) @ query, stems)
    contains = np.array([text.lower() in c[0].lower() for c in candidates])
    order = np.lexsort((-scores, ~contains))
    found = [Match(candidates[i][0], candidates[i][1], float(scores[i]), candidates[i][2]) for i in order]
    close = [m for m in found if m.similarity >= MEANING_THRESHOLD or text.lower() in m.text.lower()]
    return Resolution(text, matches=close[:k], nearest=max(found, key=lambda m: m.similarity))


def nothing_close(resolution: Resolution) -> NotFoundError:
    """The error of a search that found nothing close in meaning, naming the nearest label or name."""
    near = resolution.nearest
    nearest = f"; the nearest is the {near.kind} {near.text!r} (similarity {near.similarity:.2f})" if near else ""
    return NotFoundError(f"nothing in this atlas is close to {resolution.query!r} in meaning (similarity under "
                         f"{MEANING_THRESHOLD}){nearest}; list the labels with `atlas sql \"SELECT name FROM labels\"`")


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
    named = [cid for name, kind, cid in named_concepts(atlas) if kind == "name"
             and name.strip().lower() == text.strip().lower()]
    if named:
        return SearchResult(text, "name", None, 1.0, [atlas.concept(cid) for cid in named[:k]])
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
        if difflib.get_close_matches(text, atlas.labels(), n=1, cutoff=TYPO_CUTOFF):
            raise  # a typo: the error names the label meant, rather than silently searching another
        resolution = resolve_text(atlas, text, (embedder or TextEmbedder()).embed, k)
        if not resolution.matches:
            raise nothing_close(resolution) from None
        top = resolution.matches[0]
        if top.kind == "label":
            found = atlas.concepts(label=top.text, limit=k, **saes)
        else:
            found = [atlas.concept(m.concept_id) for m in resolution.matches if m.kind != "label"][:k]
        return SearchResult(text, "meaning", top.text, top.similarity, found, resolution.matches)


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
