"""Concepts: the ranked list, and one concept's page (Neuronpedia's feature page, for images).

The page opens with a description (the dictionary's roll-up name, its labels with their figures, when its
label emerges over denoising), then shows where the concept fires (top images with heatmaps beside the raw
image, with an opacity control), examples from across its activation range and a random sample, which prompt
words drive it (each word dropped in turn, measured on demand at `words.json`), how it evolves over denoising
(the nearest concept by decoder direction at every other t, drawn on the same images; its trajectory, the same SAE
run at every captured step, as a curve; its lineage, the concepts of the neighbouring timesteps it descends from
and into, by decoder cosine and coactivation), how strongly and how
often it fires (histogram, density), what it depicts (labels with IoU and support) and a name and note people
can edit.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict
from typing import Annotated, Any

import numpy as np
from fastapi import Body, Form, Path, Query
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field

from atlas.dictionary.names import describe_concept, display_names
from atlas.errors import BadInputError
from atlas.server import render
from atlas.server.pages import ERRORS, Envelope, Page, concept_url
from atlas.server.state import ServerState, State
from atlas.server.views.home import Table
from atlas.server.views.images import PNG, SaeChoice, Variant
from atlas.store import ConceptInfo, NoIndexError, SaeInfo
from atlas.store.ids import CONCEPT_ID_PATTERN, DEFAULT_BRANCH, DEFAULT_VARIANT, parse_concept_id

PAGE = Page("concepts")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
"""Where in the range of a concept's per-image peak activation the page shows an example."""
RANDOM_SAMPLE = 6
BINS = 30
NEIGHBOURS = 5
LINK_FIELDS = ("label", "mean_iou", "hit_rate", "precision", "recall", "support")  # set only on label searches
ConceptId = Annotated[str, Path(description="A concept id: <block>/<t>/<latent>, e.g. mid/1.0/412, or "
                                             "<block>/<t>/<branch>[@<variant>]/<latent>, e.g. mid/1.0/cond@k20/412",
                                 json_schema_extra={"pattern": CONCEPT_ID_PATTERN})]
PAGE_TOKEN = re.compile(r"(-?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?):([0-9]+):([0-9]+)")
"""A keyset token of /concepts: frequency:sae_id:latent, as the `next` of a page writes it."""


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
    dictionary_name: str | None = None
    """The roll-up name of its dictionary labels, or for a concept with none a guess that says so."""


class ConceptsData(Envelope):
    concepts: list[ConceptRow] | None = Field(None, description="The rows (absent with _shape=arrays)")
    table: Table | None = Field(None, description="The rows as columns and arrays (only with _shape=arrays)")
    next: str | None
    filters: dict[str, Any]
    saes: list[SaeChoice]


def _after(token: str) -> tuple[float, int, int]:
    found = PAGE_TOKEN.fullmatch(token)
    if not found or not math.isfinite(float(found.group(1))):
        raise BadInputError(f"bad page token {token!r}: use the `next` value of the previous page")
    return float(found.group(1)), int(found.group(2)), int(found.group(3))


@PAGE.add("/concepts", "concepts.html", ConceptsData, table="table", rows="concepts")
def concepts(state: State, block: Annotated[str | None, Query(max_length=200)] = None, t: float | None = None,
             branch: Annotated[str, Query(max_length=100)] = DEFAULT_BRANCH,
             variant: Variant = DEFAULT_VARIANT,
             label: Annotated[str | None, Query(max_length=500, description="Only concepts whose best label is this")]
             = None, named: Annotated[bool, Query(description="Only concepts people named")] = False,
             after: Annotated[str | None, Query(max_length=100, description="Keyset token: `next` of the last page",
                                                json_schema_extra={"pattern": PAGE_TOKEN.pattern})]
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
    dictionary = display_names(state.atlas, [r["concept_id"] for r in rows])
    rows = [{**r, "dictionary_name": dictionary[r["concept_id"]]} for r in rows]
    columns = ["concept_id", "frequency", "mean_activation", "best_label", "dictionary_name", "name"]
    return {"concepts": rows, "table": Table(columns=columns, rows=[[r[c] for c in columns] for r in rows]),
            "next": token, "filters": {"block": block, "t": t, "branch": branch, "variant": variant, "label": label,
                                       "named": named},
            "saes": [SaeChoice.of(s, chosen=block == s.block and t is not None and abs(s.t - t) < 1e-9
                                  and (s.branch, s.variant) == (branch, variant)) for s in state.atlas.saes()]}


# -- prompt words --------------------------------------------------------------------------------------------
# Registered before the concept page, whose `/concept/{id:path}.json` would swallow `.../words.json`.

class WordData(Envelope):
    concept_id: str
    image_id: int
    prompt: str
    activation: float
    words: list[dict[str, Any]]


@PAGE.router.get("/concept/{concept_id:path}/words.json", response_model=WordData, responses=ERRORS,
                 summary="Which caption words drive a concept: each dropped in turn, the activation change")
def words_json(concept_id: ConceptId, state: State,
               image_id: Annotated[int | None, Query(ge=0, description="Image whose caption to take (default: the "
                                                                        "concept's top image)")] = None) -> WordData:
    from atlas.pipeline.attribution import word_attribution

    cid = state.atlas.concept(concept_id).concept_id
    if image_id is None:
        hits = state.atlas.top_images(cid, 1)
        if not hits:
            raise BadInputError(f"concept {cid} never fires on the stored images: give image_id")
        image_id = hits[0].image_id
    with state.model_turn() as load:
        found = word_attribution(state.atlas, cid, image_id, load=load)
    return WordData(concept_id=found.concept_id, image_id=found.image_id, prompt=found.prompt,
                    activation=found.activation, words=[asdict(w) for w in found.words])


# -- one concept ---------------------------------------------------------------------------------------------

class Hit(BaseModel):
    image_id: int
    prompt: str | None
    activation: float
    n_positions: int
    row: int
    col: int
    map: list[list[float]]


class Example(BaseModel):
    """An image where the concept fires, picked at a quantile of its per-image peak activation or at random."""

    image_id: int
    prompt: str | None
    activation: float
    quantile: float | None


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


class TrajectoryPoint(BaseModel):
    """The concept's SAE run on the same images' activations at another captured step (`atlas evolve`)."""

    t: float
    mass: float
    """Summed activation per image."""
    active_fraction: float
    """Share of the images it fires on."""
    mean_activation: float


class Life(BaseModel):
    """When the concept is active over denoising (from t = 1.0 down): first, at its peak mass, and gone again."""

    first_t: float | None
    peak_t: float | None
    fade_t: float | None


class Relative(BaseModel):
    """A lineage link to a concept of the neighbouring timestep: decoder cosine, coactivation and their score."""

    concept_id: str
    t: float
    cosine: float
    coactivation: float
    score: float
    best_label: str | None = None


class Histogram(BaseModel):
    edges: list[float]
    counts: list[int]
    positions: int
    images: int
    images_total: int


class ConceptData(Envelope):
    concept: dict[str, Any]
    dictionary_name: str | None
    """The roll-up name of the concept's dictionary labels (what they share: "red (any shape)")."""
    name_guess: str | None
    """For a concept with no dictionary link, a name that says it is a guess and from what."""
    description: str
    emergence: list[list[float]]
    """(t, best IoU of its best label in its block at that t), from the first denoising step on."""
    density: float
    """Share of the atlas's images the concept fires on."""
    grid: list[int]
    images: list[Hit]
    quantiles: list[Example]
    random: list[Example]
    vmax: float
    timesteps: list[Timestep]
    trajectory: list[TrajectoryPoint]
    """Its life over every captured step, in denoising order (empty until `atlas evolve` ran)."""
    life: Life | None
    ancestors: list[Relative]
    """Concepts of the previous timestep it descends from (lineage), best first."""
    descendants: list[Relative]
    """Concepts of the next timestep it leads to (lineage), best first."""
    evolved: bool
    """Whether `atlas evolve` ran on this atlas (else trajectory and lineage are empty for want of it)."""
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


def examples(state: ServerState, sae: SaeInfo, latent: int) -> tuple[list[Example], list[Example]]:
    """Images at the QUANTILES of the concept's per-image peak activation, and a random sample of the images it
    fires on (the same sample on every visit)."""
    peaks = state.atlas.query("SELECT c.image_id, max(c.value) AS activation, any_value(i.prompt) AS prompt "
                              "FROM codes c JOIN images i ON i.id = c.image_id WHERE c.sae_id = ? AND c.latent = ? "
                              "GROUP BY c.image_id ORDER BY activation, c.image_id", [sae.id, latent]).to_pylist()
    if not peaks:
        return [], []
    at = [Example(**peaks[round(q * (len(peaks) - 1))], quantile=q) for q in QUANTILES]
    rng = np.random.default_rng([sae.id, latent])
    picked = sorted(rng.choice(len(peaks), min(RANDOM_SAMPLE, len(peaks)), replace=False).tolist())
    return at, [Example(**peaks[i], quantile=None) for i in picked]


def evolution(state: ServerState, sae: SaeInfo, latent: int) -> dict[str, Any]:
    """The concept's trajectory, life and lineage (the `trajectories` and `lineage` views)."""
    atlas, key = state.atlas, {"sae": sae.id, "latent": latent}
    rows = atlas.query("SELECT at_t AS t, mass, active_fraction, mean_activation, first_t, peak_t, fade_t "
                       "FROM trajectories WHERE sae_id = $sae AND latent = $latent ORDER BY at_t DESC", key).to_pylist()
    related = {}
    for name, me, other in (("ancestors", "child", "parent"), ("descendants", "parent", "child")):
        related[name] = [Relative(**row) for row in atlas.query(
            f"SELECT {other}_concept_id AS concept_id, {other}_t AS t, cosine, coactivation, score FROM lineage "
            f"WHERE {me}_sae_id = $sae AND {me}_latent = $latent ORDER BY score DESC, concept_id", key).to_pylist()]
    best = _best_labels(state, [r.concept_id for found in related.values() for r in found])
    for found in related.values():
        for relative in found:
            relative.best_label = best.get(relative.concept_id)
    return {"trajectory": [TrajectoryPoint(**{k: row[k] for k in TrajectoryPoint.model_fields}) for row in rows],
            "life": Life(**{k: rows[0][k] for k in Life.model_fields}) if rows else None,
            **related, "evolved": atlas.stage_done("evolve")}


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
    described = describe_concept(atlas, cid)
    at_quantiles, sample = examples(state, sae, info.latent)
    return {
        "concept": {**{k: v for k, v in info.__dict__.items() if k not in LINK_FIELDS}, "url": concept_url(cid)},
        "dictionary_name": described.name, "name_guess": described.guess, "description": described.text,
        "emergence": [list(x) for x in described.emergence],
        "density": described.images / described.images_total if described.images_total else 0.0,
        "grid": [sae.grid_h or 0, sae.grid_w or 0],
        "images": [Hit(image_id=h.image_id, prompt=h.prompt, activation=h.activation, n_positions=h.n_positions,
                       row=h.row, col=h.col, map=m.tolist()) for h, m in zip(hits, maps)],
        "quantiles": at_quantiles, "random": sample,
        "vmax": max((h.activation for h in hits), default=0.0), "timesteps": timesteps,
        **evolution(state, sae, info.latent),
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
