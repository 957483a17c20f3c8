"""Labels: the list, and one label's page (which concepts predict it at each block, t and branch, and the
annotated objects that carry it, drawn with their masks)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import BaseModel

from atlas.server.pages import Envelope, Page
from atlas.server.state import State
from atlas.server.views.home import Table
from atlas.store import UnknownLabelError
from atlas.store.reads import BEST_CONCEPT_SQL, LINK_SCORE

PAGE = Page("labels")
RANK = f"{LINK_SCORE}, latent"  # within one SAE, as Atlas.concepts


class LabelsData(Envelope):
    table: Table
    next: str | None


@PAGE.add("/labels", "labels.html", LabelsData, table="table")
def labels(state: State, after: Annotated[str | None, Query(max_length=500, description="Keyset: names after this")]
           = None, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> dict:
    """Every label with its objects, images and best concept (keyset pagination by name)."""
    where = "WHERE l.name > $after" if after else ""
    result = state.atlas.query(
        f"WITH best AS (SELECT label, {BEST_CONCEPT_SQL} AS best_concept, max(mean_iou) AS best_iou, "
        "count(*) AS concepts FROM concept_labels GROUP BY label), "
        "seen AS (SELECT label_id, count(*) AS objects, count(DISTINCT image_id) AS images FROM objects GROUP BY ALL) "
        "SELECT l.name AS label, coalesce(s.objects, 0) AS objects, coalesce(s.images, 0) AS images, "
        "coalesce(b.concepts, 0) AS concepts, b.best_concept, b.best_iou FROM labels l "
        f"LEFT JOIN seen s ON s.label_id = l.id LEFT JOIN best b ON b.label = l.name {where} ORDER BY l.name "
        "LIMIT $limit", {"limit": limit + 1, **({"after": after} if after else {})})
    rows = [list(r.values()) for r in result.to_pylist()]
    more, rows = len(rows) > limit, rows[:limit]
    return {"table": Table(columns=result.column_names, rows=rows), "next": rows[-1][0] if more else None}


class Example(BaseModel):
    object_id: int
    image_id: int
    prompt: str | None
    score: float | None
    has_mask: bool


class LabelData(Envelope):
    label: str
    concepts: Table
    examples: list[Example]
    next: str | None


@PAGE.add("/label/{name:path}", "label.html", LabelData, table="concepts")
def label(name: Annotated[str, Path(description="A label, e.g. red circle")], state: State,
          per_sae: Annotated[int, Query(ge=1, le=100, description="Concepts shown per SAE (block, t, branch)")] = 5,
          after: Annotated[int, Query(ge=-1, description="Keyset: examples with object id greater than this")] = -1,
          limit: Annotated[int, Query(ge=1, le=200)] = 24) -> dict:
    """One label: the concepts that predict it best per SAE (block, t, branch) by mean IoU, hit rate and support, and
    examples."""
    known = state.atlas.labels()
    if name not in known:
        raise UnknownLabelError(name, known)
    ranked = state.atlas.query(
        "SELECT block, t, branch, variant, rank, concept_id, mean_iou, hit_rate, precision, recall, support FROM ("
        f"SELECT *, row_number() OVER (PARTITION BY sae_id ORDER BY {RANK}) AS rank FROM concept_labels "
        "WHERE label = $name) WHERE rank <= $per_sae ORDER BY block, branch, variant, t DESC, rank",
        {"name": name, "per_sae": per_sae})
    examples = state.atlas.query(
        "SELECT o.id AS object_id, o.image_id, i.prompt, o.score, o.mask_path IS NOT NULL AS has_mask "
        "FROM objects o JOIN images i ON i.id = o.image_id WHERE o.label = $name AND o.id > $after "
        "ORDER BY o.id LIMIT $limit", {"name": name, "after": after, "limit": limit + 1}).to_pylist()
    more, examples = len(examples) > limit, examples[:limit]
    return {"label": name, "concepts": Table(columns=ranked.column_names,
                                             rows=[list(r.values()) for r in ranked.to_pylist()]),
            "examples": examples, "next": str(examples[-1]["object_id"]) if more else None}
