"""Images: the list, one image's page (prompt, objects, the top concept at every grid cell for a chosen
block, t and branch), and the PNGs every page shows (the image, a concept's heatmap over it, an object's mask)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel

from atlas.errors import NotFoundError
from atlas.server import render
from atlas.server.pages import ERRORS, Envelope, Page
from atlas.server.state import ServerState, State
from atlas.server.views.home import Table
from atlas.store import SaeInfo
from atlas.store.ids import DEFAULT_BRANCH, DEFAULT_VARIANT

PAGE = Page("images")
PNG = {**ERRORS, 200: {"content": {"image/png": {}}, "description": "A PNG picture"}}
Size = Annotated[int | None, Query(ge=16, le=render.MAX_SIDE, description="Side of the picture in pixels")]
TOP_PER_CELL = 3
Variant = Annotated[str, Query(max_length=100, description="SAE variant, e.g. k20 (empty: the primary SAE)")]


def png_response(image: Image.Image) -> Response:
    return Response(render.png(image), media_type="image/png", headers={"Cache-Control": "max-age=3600"})


def load_image(state: ServerState, image_id: int) -> Image.Image:
    row = state.image(image_id)
    with Image.open(state.image_file(row["path"], f"image {image_id}")) as image:
        return image.convert("RGB")


@PAGE.router.get("/image/{image_id}.png", response_class=Response, responses=PNG, summary="An image as PNG")
def image_png(image_id: int, state: State, size: Size = None) -> Response:
    return png_response(render.scaled(load_image(state, image_id), size))


@PAGE.router.get("/image/{image_id}/heatmap.png", response_class=Response, responses=PNG,
                 summary="A concept's activation map over an image")
def heatmap_png(image_id: int, state: State,
                concept: Annotated[str, Query(description="Concept id, e.g. mid/1.0/412")],
                vmax: Annotated[float | None, Query(gt=0, description="Activation drawn at full colour")] = None,
                size: Size = None) -> Response:
    amap = state.atlas.activation_map(image_id, concept)
    return png_response(render.heatmap(load_image(state, image_id), amap, vmax, size))


@PAGE.router.get("/object/{object_id}.png", response_class=Response, responses=PNG,
                 summary="An annotated object's mask over its image")
def object_png(object_id: int, state: State, size: Size = None) -> Response:
    rows = state.atlas.query("SELECT image_id, mask_path FROM objects WHERE id = ?", [object_id]).to_pylist()
    if not rows:
        raise NotFoundError(f"unknown object {object_id}")
    with Image.open(state.image_file(rows[0]["mask_path"], f"object {object_id}'s mask")) as mask:
        return png_response(render.mask_overlay(load_image(state, rows[0]["image_id"]), mask, size))


class ImageRow(BaseModel):
    id: int
    prompt: str | None
    split: str | None
    seed: int | None


class ImagesData(Envelope):
    images: list[ImageRow]
    table: Table
    next: str | None
    q: str | None
    split: str | None


@PAGE.add("/images", "images.html", ImagesData, table="table")
def images(state: State, q: Annotated[str | None, Query(max_length=500, description="Prompt contains")] = None,
           split: Annotated[str | None, Query(max_length=100)] = None,
           after: Annotated[int, Query(ge=-1, description="Keyset: images with id greater than this")] = -1,
           limit: Annotated[int, Query(ge=1, le=500)] = 60) -> dict:
    """Images in id order, optionally those whose prompt contains `q` or of one split (keyset pagination)."""
    where, params = ["id > $after"], {"after": after, "limit": limit + 1}
    if q:
        where.append("contains(lower(prompt), lower($q))")
        params["q"] = q
    if split:
        where.append("split = $split")
        params["split"] = split
    rows = state.atlas.query(f"SELECT id, prompt, split, seed FROM images WHERE {' AND '.join(where)} "
                             "ORDER BY id LIMIT $limit", params).to_pylist()
    more = len(rows) > limit
    rows = rows[:limit]
    table = Table(columns=["id", "prompt", "split", "seed"], rows=[list(r.values()) for r in rows])
    return {"images": rows, "table": table, "next": str(rows[-1]["id"]) if more else None, "q": q, "split": split}


class CellConcept(BaseModel):
    concept_id: str
    latent: int
    value: float
    label: str | None


class Cell(BaseModel):
    row: int
    col: int
    top: list[CellConcept]


class ObjectRow(BaseModel):
    id: int
    label: str | None
    score: float | None
    box: list[float | None]
    has_mask: bool


class SaeChoice(BaseModel):
    name: str
    block: str
    t: float
    branch: str
    variant: str
    chosen: bool

    @classmethod
    def of(cls, sae: SaeInfo, chosen: bool) -> SaeChoice:
        return cls(name=sae.prefix, block=sae.block, t=sae.t, branch=sae.branch, variant=sae.variant, chosen=chosen)


class ImageData(Envelope):
    image: dict[str, Any]
    objects: list[ObjectRow]
    saes: list[SaeChoice]
    block: str
    t: float
    branch: str
    variant: str
    grid_h: int
    grid_w: int
    grid: list[list[Cell]]
    table: Table


@PAGE.add("/image/{image_id}", "image.html", ImageData, table="table")
def image(image_id: int, state: State,
          block: Annotated[str | None, Query(max_length=200, description="Block (default: the first SAE's)")] = None,
          t: Annotated[float | None, Query(description="Timestep (default: the block's first)")] = None,
          branch: Annotated[str, Query(max_length=100)] = DEFAULT_BRANCH,
          variant: Variant = DEFAULT_VARIANT) -> dict:
    """One image: prompt, objects, and for one SAE the strongest concepts at every grid cell."""
    atlas = state.atlas
    info = state.image(image_id)
    saes = atlas.saes()
    if not saes:
        raise NotFoundError("this atlas has no SAEs yet: run `atlas train` and `atlas encode`")
    block = block or saes[0].block
    t = t if t is not None else next((s.t for s in saes if (s.block, s.branch, s.variant) == (block, branch, variant)),
                                     saes[0].t)
    sae = state.sae(block, t, branch, variant)
    codes = atlas.image_codes(image_id, sae.block, sae.t, sae.branch, sae.variant).to_pylist()
    latents = sorted({c["latent"] for c in codes})
    labels = {r["latent"]: r["best_label"] for r in atlas.query(
        "SELECT latent, best_label FROM concepts WHERE sae_id = ? AND list_contains(?, latent)",
        [sae.id, latents]).to_pylist()}
    h, w = sae.grid_h or 0, sae.grid_w or 0
    cells: list[list[list[CellConcept]]] = [[[] for _ in range(w)] for _ in range(h)]
    for c in sorted(codes, key=lambda c: -c["value"]):
        if c["row"] < h and c["col"] < w and len(cells[c["row"]][c["col"]]) < TOP_PER_CELL:
            cells[c["row"]][c["col"]].append(CellConcept(concept_id=c["concept_id"], latent=c["latent"],
                                                         value=c["value"], label=labels.get(c["latent"])))
    strongest: dict[str, list] = {}
    for c in codes:
        entry = strongest.setdefault(c["concept_id"], [c["concept_id"], 0.0, 0, labels.get(c["latent"])])
        entry[1], entry[2] = max(entry[1], c["value"]), entry[2] + 1
    objects = atlas.query("SELECT id, label, score, x0, y0, x1, y1, mask_path FROM objects WHERE image_id = ? "
                          "ORDER BY id", [image_id]).to_pylist()
    return {
        "image": info, "block": sae.block, "t": sae.t, "branch": sae.branch, "variant": sae.variant, "grid_h": h,
        "grid_w": w,
        "objects": [ObjectRow(id=o["id"], label=o["label"], score=o["score"], box=[o["x0"], o["y0"], o["x1"], o["y1"]],
                              has_mask=bool(o["mask_path"])) for o in objects],
        "saes": [SaeChoice.of(s, chosen=s.id == sae.id) for s in saes],
        "grid": [[Cell(row=r, col=c, top=cells[r][c]) for c in range(w)] for r in range(h)],
        "table": Table(columns=["concept_id", "max_value", "cells", "best_label"],
                       rows=sorted(strongest.values(), key=lambda e: (-e[1], e[0]))),
    }
