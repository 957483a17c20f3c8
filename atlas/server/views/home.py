"""The home page: which model, which SAEs (block x t x branch x variant) with their metrics, how much is stored."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from atlas.server.pages import Envelope, Page
from atlas.server.state import State
from atlas.store.reads import BEST_CONCEPT_SQL, LINK_RANK

PAGE = Page("home")


class Table(BaseModel):
    """Rows of a table view; the `.csv` twin writes exactly these."""

    columns: list[str]
    rows: list[list[Any]]


class SaeRow(BaseModel):
    sae_id: int
    name: str
    block: str
    t: float
    branch: str
    variant: str
    k: int
    n_latents: int
    d_in: int
    grid: str | None
    n_codes: int
    metrics: dict[str, Any]


class TopLink(BaseModel):
    concept_id: str
    label: str
    mean_iou: float | None
    support: int | None


class HomeData(Envelope):
    root: str
    models: list[dict[str, Any]]
    counts: dict[str, int]
    saes: list[SaeRow]
    table: Table
    top_links: list[TopLink]
    labels: list[str]


METRICS = ("explained_variance", "fvu", "l0", "dead_fraction")
COUNTS = ("images", "prompts", "objects", "labels", "concepts", "concept_labels", "interventions")


@PAGE.add("/", "home.html", HomeData, table="table")
def home(state: State) -> dict:
    """The atlas at a glance: its model, SAEs with metrics, counts, and the best-linked concepts."""
    atlas = state.atlas
    saes = [SaeRow(sae_id=s.id, name=s.prefix, block=s.block, t=s.t, branch=s.branch, variant=s.variant,
                   k=s.k, n_latents=s.n_latents, d_in=s.d_in, grid=f"{s.grid_h}x{s.grid_w}" if s.grid_h else None,
                   n_codes=s.n_codes, metrics=s.metrics) for s in atlas.saes()]
    counts = atlas.query("SELECT " + ", ".join(f"(SELECT count(*) FROM {name}) AS {name}" for name in COUNTS))
    models = [{**m, "spec": json.loads(m["spec"]) if isinstance(m["spec"], str) else m["spec"]}
              for m in atlas.query("SELECT id, name, path, spec FROM models ORDER BY id").to_pylist()]
    top = atlas.query(f"SELECT {BEST_CONCEPT_SQL} AS concept_id, label, max(mean_iou) AS mean_iou, "
                      f"first(support ORDER BY {LINK_RANK}) AS support FROM concept_labels GROUP BY label "
                      "ORDER BY mean_iou DESC NULLS LAST, label LIMIT 12").to_pylist()
    columns = ["sae", "block", "t", "branch", "variant", "k", "n_latents", "d_in", "grid", "n_codes", *METRICS]
    rows = [[s.name, s.block, s.t, s.branch, s.variant, s.k, s.n_latents, s.d_in, s.grid, s.n_codes,
             *(s.metrics.get(m) for m in METRICS)] for s in saes]
    return {"root": str(state.root), "models": models, "counts": counts.to_pylist()[0], "saes": saes,
            "table": Table(columns=columns, rows=rows), "top_links": top, "labels": atlas.labels()}
