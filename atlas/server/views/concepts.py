"""Concepts: the ranked list, and one concept's page (Neuronpedia's feature page, for images).

The page shows where the concept fires (top images with heatmaps), how it evolves over denoising
(the nearest concept by decoder direction at every other t, drawn on the same images), how strongly
and how often it fires (histogram, frequency), what it depicts (labels with IoU and support) and a
name and note people can edit.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Body, Form, Path, Query
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from atlas.errors import BadInputError
from atlas.server import render
from atlas.server.pages import ERRORS, Envelope, Page, concept_url
from atlas.server.state import ServerState, State
from atlas.server.views.home import Table
from atlas.server.views.images import PNG, SaeChoice, Variant
from atlas.store import ConceptInfo, NoIndexError, SaeInfo
from atlas.store.ids import DEFAULT_BRANCH, DEFAULT_VARIANT, parse_concept_id

PAGE = Page("concepts")
BINS = 30
NEIGHBOURS = 5
LINK_FIELDS = ("label", "mean_iou", "hit_rate", "precision", "recall", "support")  # set only on label searches
ConceptId = Annotated[str, Path(description="A concept id: <block>/<t>/<latent>, e.g. mid/1.0/412, or "
                                             "<block>/<t>/<branch>[@<variant>]/<latent>, e.g. mid/1.0/cond@k20/412")]


# -- the list ------------------------------------------------------------------------------------------------

class ConceptRow(BaseModel):
    concept_id: str
    block: str
    t: float
    branch: str
    variant: str
    latent: int
    frequency: float | None
    mean_activation: float | None
    best_label: str | None
    name: str | None


class ConceptsData(Envelope):
    concepts: list[ConceptRow]
    table: Table
    next: str | None
    filters: dict[str, Any]
    saes: list[SaeChoice]


def _after(token: str) -> tuple[float, int, int]:
    try:
        frequency, sae_id, latent = token.split(":")
        if not math.isfinite(float(frequency)):
            raise ValueError(frequency)
        return float(frequency), int(sae_id), int(latent)
    except ValueError:
        raise BadInputError(f"bad page token {token!r}: use the `next` value of the previous page") from None


@PAGE.add("/concepts", "concepts.html", ConceptsData, table="table")
def concepts(state: State, block: Annotated[str | None, Query(max_length=200)] = None, t: float | None = None,
             branch: Annotated[str, Query(max_length=100)] = DEFAULT_BRANCH,
             variant: Variant = DEFAULT_VARIANT,
             label: Annotated[str | None, Query(max_length=500, description="Only concepts whose best label is this")]
             = None, named: Annotated[bool, Query(description="Only concepts people named")] = False,
             after: Annotated[str | None, Query(max_length=100, description="Keyset token: `next` of the last page")]
             = None, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict:
    """Concepts ranked by firing frequency (keyset pagination), optionally of one block, t, branch, variant or
    label."""
    saes = {s.id: s for s in state.check(block, t, branch, variant)}
    where, params = ["list_contains($saes, sae_id)"], {"saes": list(saes), "limit": limit + 1}
    if label:
        where.append("best_label = $label")
        params["label"] = label
    if named:
        where.append("name IS NOT NULL")
    if after:
        params["frequency"], params["sae_id"], params["latent"] = _after(after)
        where.append("(coalesce(frequency, -1) < $frequency OR (coalesce(frequency, -1) = $frequency AND "
                     "(sae_id > $sae_id OR (sae_id = $sae_id AND latent > $latent))))")
    rows = state.atlas.query(
        "SELECT concept_id, sae_id, block, t, branch, variant, latent, frequency, mean_activation, best_label, name "
        f"FROM concepts WHERE {' AND '.join(where)} ORDER BY coalesce(frequency, -1) DESC, sae_id, latent "
        "LIMIT $limit", params).to_pylist()
    more, rows = len(rows) > limit, rows[:limit]
    last = rows[-1] if rows else None
    token = f"{last['frequency'] if last['frequency'] is not None else -1.0!r}:{last['sae_id']}:{last['latent']}" \
        if more and last else None
    columns = ["concept_id", "frequency", "mean_activation", "best_label", "name"]
    return {"concepts": rows, "table": Table(columns=columns, rows=[[r[c] for c in columns] for r in rows]),
            "next": token, "filters": {"block": block, "t": t, "branch": branch, "variant": variant, "label": label,
                                       "named": named},
            "saes": [SaeChoice.of(s, chosen=block == s.block and t is not None and abs(s.t - t) < 1e-9
                                  and (s.branch, s.variant) == (branch, variant)) for s in state.atlas.saes()]}


# -- one concept ---------------------------------------------------------------------------------------------

class Hit(BaseModel):
    image_id: int
    prompt: str | None
    activation: float
    n_positions: int
    row: int
    col: int
    map: list[list[float]]


class Neighbour(BaseModel):
    concept_id: str
    score: float
    best_label: str | None = None


class Timestep(BaseModel):
    """The concept's closest match (decoder cosine) in the SAE at one t, and its maps on the top images."""

    t: float
    own: bool
    concept_id: str | None
    score: float | None
    vmax: float
    maps: list[list[list[float]]]
    neighbours: list[Neighbour]


class Histogram(BaseModel):
    edges: list[float]
    counts: list[int]
    positions: int
    images: int
    images_total: int


class ConceptData(Envelope):
    concept: dict[str, Any]
    grid: list[int]
    images: list[Hit]
    vmax: float
    timesteps: list[Timestep]
    histogram: Histogram
    labels: Table
    index_note: str | None


def _sae_of(state: ServerState, info: ConceptInfo) -> SaeInfo:
    return state.sae(info.block, info.t, info.branch, info.variant)


def histogram(state: ServerState, sae: SaeInfo, latent: int) -> Histogram:
    """Equal-width bins of the concept's stored (nonzero) values, counted in SQL."""
    where, params = "sae_id = $sae_id AND latent = $latent", {"sae_id": sae.id, "latent": latent}
    stats = state.atlas.query("SELECT count(*) AS n, count(DISTINCT image_id) AS images, min(value) AS lo, "
                              f"max(value) AS hi FROM codes WHERE {where}", params).to_pylist()[0]
    total = state.atlas.query("SELECT count(*) AS n FROM images")["n"][0].as_py()
    if not stats["n"]:
        return Histogram(edges=[], counts=[], positions=0, images=0, images_total=total)
    lo, hi = float(stats["lo"]), float(stats["hi"])
    width = (hi - lo) / BINS if hi > lo else 1.0
    bins = 1 if hi == lo else BINS
    counts = [0] * bins
    binned = state.atlas.query("SELECT least(CAST(floor((value - $lo::FLOAT) / $width::FLOAT) AS INTEGER), $last) "
                               f"AS bin, count(*) AS n FROM codes WHERE {where} GROUP BY bin",
                               {**params, "lo": lo, "width": width, "last": bins - 1}).to_pylist()
    for row in binned:
        counts[max(0, int(row["bin"]))] += int(row["n"])
    edges = [lo + i * width for i in range(bins + 1)] if bins > 1 else [lo - 0.5, lo + 0.5]
    return Histogram(edges=edges, counts=counts, positions=stats["n"], images=stats["images"], images_total=total)


def _best_labels(state: ServerState, concept_ids: list[str]) -> dict[str, str | None]:
    if not concept_ids:
        return {}
    rows = state.atlas.query("SELECT concept_id, best_label FROM concepts WHERE list_contains(?, concept_id)",
                             [concept_ids]).to_pylist()
    return {row["concept_id"]: row["best_label"] for row in rows}


@PAGE.add("/concept/{concept_id:path}", "concept.html", ConceptData, table="labels")
def concept(concept_id: ConceptId, state: State,
            n: Annotated[int, Query(ge=1, le=60, description="How many top images")] = 12) -> dict:
    """One concept: top images with heatmaps, its closest concepts at every t, histogram, labels, name and note."""
    atlas = state.atlas
    info = atlas.concept(concept_id)
    cid = info.concept_id
    sae = _sae_of(state, info)
    hits = atlas.top_images(cid, n)
    maps = [atlas.activation_map(h.image_id, cid) for h in hits]
    index_note = None
    timesteps = []
    for other in sorted((s for s in atlas.saes() if (s.block, s.branch, s.variant) == (sae.block, sae.branch,
                                                                                        sae.variant)),
                        key=lambda s: -s.t):
        own = other.id == sae.id
        try:
            found = atlas.nearest(cid, k=NEIGHBOURS, across_t=False) if own else \
                atlas.nearest(cid, k=NEIGHBOURS, t=other.t)
        except NoIndexError as err:
            found, index_note = [], str(err)
        match = cid if own else (found[0].concept_id if found else None)
        other_maps = maps if own else [atlas.activation_map(h.image_id, match) for h in hits] if match else []
        timesteps.append(Timestep(t=other.t, own=own, concept_id=match, score=None if own or not found else
                                  found[0].score, vmax=max((float(m.max()) for m in other_maps), default=0.0),
                                  maps=[m.tolist() for m in other_maps],
                                  neighbours=[Neighbour(concept_id=f.concept_id, score=f.score) for f in found]))
    best = _best_labels(state, [n.concept_id for ts in timesteps for n in ts.neighbours])
    for ts in timesteps:
        for neighbour in ts.neighbours:
            neighbour.best_label = best.get(neighbour.concept_id)
    labels = atlas.query("SELECT label, mean_iou, hit_rate, precision, recall, support FROM concept_labels "
                         "WHERE concept_id = ? ORDER BY mean_iou DESC NULLS LAST, label", [cid])
    return {
        "concept": {**{k: v for k, v in info.__dict__.items() if k not in LINK_FIELDS}, "url": concept_url(cid)},
        "grid": [sae.grid_h or 0, sae.grid_w or 0],
        "images": [Hit(image_id=h.image_id, prompt=h.prompt, activation=h.activation, n_positions=h.n_positions,
                       row=h.row, col=h.col, map=m.tolist()) for h, m in zip(hits, maps)],
        "vmax": max((h.activation for h in hits), default=0.0), "timesteps": timesteps,
        "histogram": histogram(state, sae, info.latent),
        "labels": Table(columns=labels.column_names, rows=[list(r.values()) for r in labels.to_pylist()]),
        "index_note": index_note,
    }


@PAGE.router.get("/concept/{concept_id:path}/histogram.png", response_class=Response, responses=PNG,
                 summary="A concept's activation histogram")
def histogram_png(concept_id: ConceptId, state: State) -> Response:
    info = state.atlas.concept(concept_id)
    data = histogram(state, _sae_of(state, info), info.latent)
    return Response(render.histogram_png(data.counts, data.edges), media_type="image/png")


# -- name and note -------------------------------------------------------------------------------------------

class Naming(BaseModel):
    name: str | None = Field(None, max_length=200)
    note: str | None = Field(None, max_length=5000)


class NamingData(Envelope):
    concept_id: str
    name: str | None
    note: str | None


def rename(state: ServerState, concept_id: str, name: str | None, note: str | None) -> NamingData:
    cid = str(parse_concept_id(concept_id))
    name, note = (name or "").strip() or None, (note or "").strip() or None
    with state.writer("rename a concept") as writer:
        writer.catalog.rename_concept(cid, name, note)
    return NamingData(concept_id=cid, name=name, note=note)


@PAGE.router.post("/concept/{concept_id:path}/name.json", response_model=NamingData, responses=ERRORS,
                  summary="Set a concept's name and note (empty clears)")
def rename_json(concept_id: ConceptId, state: State, naming: Annotated[Naming, Body()]) -> NamingData:
    return rename(state, concept_id, naming.name, naming.note)


@PAGE.html.post("/concept/{concept_id:path}/name", include_in_schema=False)
def rename_form(concept_id: str, state: State, name: Annotated[str, Form(max_length=200)] = "",
                note: Annotated[str, Form(max_length=5000)] = "") -> RedirectResponse:
    saved = rename(state, concept_id, name, note)
    return RedirectResponse(concept_url(saved.concept_id), status_code=303)
