"""Search: a concept id goes straight to its concept; any other text finds labels and people's concept
names by meaning (offline MiniLM sentence embeddings, so "kitten" finds "cat")."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import Query
from pydantic import BaseModel

from atlas.errors import AtlasError
from atlas.server.pages import Envelope, Page
from atlas.server.state import ServerState, State
from atlas.store.reads import BEST_CONCEPT_SQL

PAGE = Page("search")


class LabelMatch(BaseModel):
    label: str
    score: float
    best_concept: str | None


class NameMatch(BaseModel):
    concept_id: str
    name: str
    note: str | None
    score: float


class SearchData(Envelope):
    q: str
    concept: str | None
    concept_error: str | None
    labels: list[LabelMatch]
    names: list[NameMatch]


def ranked(state: ServerState, query: str, texts: list[str], k: int) -> list[tuple[int, float]]:
    """Indices of the `k` texts closest in meaning to the query; a text containing it verbatim comes first."""
    if not texts:
        return []
    scores = state.embed(texts, keep=True) @ state.embed([query])[0]
    contains = np.array([query.lower() in t.lower() for t in texts])
    order = np.lexsort((-scores, ~contains))[:k]
    return [(int(i), float(scores[i])) for i in order]


@PAGE.add("/search", "search.html", SearchData)
def search(state: State, q: Annotated[str, Query(max_length=500, description="Concept id, label or name")] = "",
           k: Annotated[int, Query(ge=1, le=100, description="Matches of each kind")] = 10) -> dict:
    """Find a concept by id, or labels and concept names by meaning."""
    q = q.strip()
    found: dict = {"q": q, "concept": None, "concept_error": None, "labels": [], "names": []}
    if not q:
        return found
    atlas = state.atlas
    if "/" in q:
        try:
            found["concept"] = atlas.concept(q).concept_id
        except AtlasError as err:
            found["concept_error"] = str(err)
    labels = atlas.labels()
    best = {r["label"]: r["concept_id"] for r in atlas.query(
        f"SELECT label, {BEST_CONCEPT_SQL} AS concept_id FROM concept_labels GROUP BY label").to_pylist()}
    found["labels"] = [LabelMatch(label=labels[i], score=s, best_concept=best.get(labels[i]))
                       for i, s in ranked(state, q, labels, k)]
    named = atlas.query("SELECT concept_id, name, note FROM concepts WHERE name IS NOT NULL ORDER BY concept_id"
                        ).to_pylist()
    found["names"] = [NameMatch(**named[i], score=s) for i, s in ranked(state, q, [n["name"] for n in named], k)]
    return found
