"""Search: a concept id goes straight to its concept; any other text finds labels and concept names (people's and
the dictionary's roll-up names) by meaning (offline MiniLM sentence embeddings, so "kitten" finds "cat"), or
says that nothing is close."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import BaseModel

from atlas.dictionary.names import display_names
from atlas.errors import AtlasError
from atlas.search.search import nothing_close, resolve_text
from atlas.server.pages import Envelope, Page
from atlas.server.state import State

PAGE = Page("search")


class LabelMatch(BaseModel):
    label: str
    score: float
    best_concept: str | None
    best_concept_name: str | None = None
    """The best concept's dictionary name (or, with no link, a guess that says so)."""


class NameMatch(BaseModel):
    concept_id: str
    name: str
    kind: str
    """name (given by a person) or dictionary name (rolled up from the concept's labels)."""
    score: float


class SearchData(Envelope):
    q: str
    concept: str | None
    concept_error: str | None
    labels: list[LabelMatch]
    names: list[NameMatch]
    nothing_close: str | None
    """Set when no label or name is close in meaning: what was nearest, and how close."""


@PAGE.add("/search", "search.html", SearchData)
def search(state: State, q: Annotated[str, Query(max_length=500, description="Concept id, label or name")] = "",
           k: Annotated[int, Query(ge=1, le=100, description="Matches of each kind")] = 10) -> dict:
    """Find a concept by id, or labels and concept names (people's and the dictionary's) by meaning, the same
    resolution as `atlas search`."""
    q = q.strip()
    found: dict = {"q": q, "concept": None, "concept_error": None, "labels": [], "names": [], "nothing_close": None}
    if not q:
        return found
    if "/" in q:
        try:
            found["concept"] = state.atlas.concept(q).concept_id
        except AtlasError as err:  # text with a '/' is meant as an id: say what is wrong with it, not what it means
            found["concept_error"] = str(err)
        return found
    # the candidates come back on every search, so their embeddings are kept; the query's are not
    resolution = resolve_text(state.atlas, q, lambda texts: state.embed(texts, keep=texts[-1:] != [q]), k=2 * k)
    matches = resolution.matches
    labels = [m for m in matches if m.kind == "label"][:k]
    named = display_names(state.atlas, sorted({m.concept_id for m in labels if m.concept_id}))
    found["labels"] = [LabelMatch(label=m.text, score=m.similarity, best_concept=m.concept_id,
                                  best_concept_name=named.get(m.concept_id)) for m in labels]
    found["names"] = [NameMatch(concept_id=m.concept_id, name=m.text, kind=m.kind, score=m.similarity)
                      for m in matches if m.kind != "label"][:k]
    if not matches:
        found["nothing_close"] = str(nothing_close(resolution))
    return found
