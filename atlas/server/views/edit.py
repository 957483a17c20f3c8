"""The edit page: a prompt, a concept (label, concept id or SQL), a region drawn or painted on a grid and a
window give the unedited and the edited image from one seed (atlas.edit.edit), logged in the atlas. A concept
the prompt lacks is added into the region (the donor method, atlas.edit.add); one it names is moved there.

A drawn region that is a rectangle is passed on as a box (the same text `atlas edit --region` takes,
so the page can show the equivalent command); any other shape as a mask image.
"""

from __future__ import annotations

import re
import secrets
import shlex
import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from atlas.edit.config import METHODS
from atlas.errors import BadInputError, NotFoundError
from atlas.server import render
from atlas.server.errors import ReadOnlyServerError, bad_input
from atlas.server.pages import ERRORS, Envelope, Page
from atlas.server.pages import render as render_page
from atlas.server.state import MAX_EDIT_CONCEPTS, ServerState, State
from atlas.server.views.images import PNG

PAGE = Page("edit")
GRID = re.compile(r"[01]+(/[01]+)*")
WHEN = ("auto", "early", "middle", "final", "all")
WHEN_PATTERN = r"^\s*(|auto|early|middle|final|all|[0-9]*\.?[0-9]+(\s*-\s*[0-9]*\.?[0-9]+)?)\s*$"
"""What `when` may be (atlas.edit.config reads it and says what is wrong), for the OpenAPI schema."""
DEFAULT_BLOCK = ""  # as `atlas edit --block`: the block whose measured curves succeed most, else mid


class EditRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=500)
    concept: str = Field(min_length=1, max_length=2000, description="A label, a concept id, or SQL with concept_id")
    region: str = Field("", max_length=2000, description="Rows of 0/1 cells joined by '/' (e.g. 0011/0011/0000/"
                                                         "0000), a named region (top-left), a box x0,y0,x1,y1, "
                                                         "or empty for a global edit")
    when: str = Field("auto", max_length=50, description="auto, early, middle, final, a range t0-t1 or one t",
                      json_schema_extra={"pattern": WHEN_PATTERN})
    strength: float | None = Field(None, ge=-1e6, le=1e6)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    block: str = Field(DEFAULT_BLOCK, max_length=200,
                       description="Block a label resolves to (empty: the block whose measured edit curves succeed "
                                   "most, else mid)")
    method: str = Field("auto", max_length=20,
                        description="auto (add a concept the prompt lacks from a donor text, move one it names by "
                                    "the paper's coefficient rule), coefficients or donor")


class PlannedOut(BaseModel):
    query: str
    region: str | None
    kind: str
    method: str
    concepts: list[str]
    block: str
    t: float
    window: str
    strength: float


class EditData(Envelope):
    prompt: str
    seed: int
    said: list[str]
    outcome: dict[str, Any]
    edits: list[PlannedOut]
    before: str
    after: str
    maps: list[str]
    intervention_ids: list[int]
    command: str


def grid_box(cells: np.ndarray) -> str | None:
    """`x0,y0,x1,y1` (fractions) when the chosen cells fill their bounding box, else None."""
    rows, cols = np.nonzero(cells)
    h, w = cells.shape
    if not cells[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all():
        return None
    return f"{cols.min() / w:g},{rows.min() / h:g},{(cols.max() + 1) / w:g},{(rows.max() + 1) / h:g}"


def parse_cells(text: str) -> np.ndarray | None:
    """A drawn region (`0110/0110/...`) as a bool array, None when `text` is not one."""
    if not GRID.fullmatch(text):
        return None
    rows = text.split("/")
    if len({len(r) for r in rows}) != 1:
        raise BadInputError(f"bad region {text!r}: every row of cells needs the same length")
    cells = np.array([[c == "1" for c in r] for r in rows])
    if not cells.any():
        raise BadInputError("the drawn region is empty: click cells of the grid, or clear it for a global edit")
    return cells


def check_cost(state: ServerState, concept: str) -> None:
    """Refuse an edit whose SQL names more than MAX_EDIT_CONCEPTS concepts before any model loads (a label resolves
    to EditConfig.max_concepts; an id is one); the image size and the steps are the atlas's own."""
    from atlas.edit.plan import is_sql

    if is_sql(concept):
        found = state.sql.sql(concept, max_rows=MAX_EDIT_CONCEPTS)
        if found.truncated:
            raise BadInputError(f"the SQL names more than {MAX_EDIT_CONCEPTS} concepts; a web edit sets at most "
                                f"{MAX_EDIT_CONCEPTS} (add a LIMIT), or run `atlas edit` for more")


def run_edit(state: ServerState, request: EditRequest) -> EditData:
    """The edit, run by the server's edit worker (reads never wait behind it) after its cost was checked."""
    if state.read_only:
        raise ReadOnlyServerError("run an edit")
    check_cost(state, request.concept)
    return state.edits.run(lambda: _edit(state, request))


def _edit(state: ServerState, request: EditRequest) -> EditData:
    from atlas.edit import EditConfig
    from atlas.edit.core import is_mask_file
    from atlas.pipeline.edits import edit

    region = request.region.strip()
    cells = parse_cells(region)
    if cells is None and is_mask_file(region):  # a path would read a file of the server's disk as the mask
        raise BadInputError(f"bad region {region!r}: draw it on the grid, or give a named region or a box x0,y0,x1,y1")
    when = request.when.strip() or "auto"
    config = EditConfig(when=when, strength=request.strength, seed=request.seed, block=request.block,
                        method=request.method)
    with state.write_turn("run an edit"), tempfile.TemporaryDirectory() as tmp:
        if cells is not None:
            region = grid_box(cells) or str(Path(tmp) / "region.png")
            if region.endswith(".png"):
                Image.fromarray(cells.astype(np.uint8) * 255).save(region)
        result = edit(state.atlas, request.prompt, request.concept, region, config, load=state.model)
    token = secrets.token_hex(8)
    pictures = {"before": result.original, "after": result.edited}
    for i, heat in enumerate(result.maps):
        pictures[f"map{i}"] = np.asarray(render.heatmap(Image.fromarray(result.original), heat))
    for name, array in pictures.items():
        state.keep_picture(f"{token}-{name}", render.png(render.scaled(Image.fromarray(array))))
    shown = region if region and not region.endswith(".png") else ("<mask.png>" if region else "global")
    command = shlex.join(["atlas", "edit", request.prompt, "--concept", request.concept, "--region", shown,
                          "--when", when, "--seed", str(request.seed)]
                         + (["--strength", f"{request.strength:g}"] if request.strength is not None else [])
                         + (["--block", request.block] if request.block != DEFAULT_BLOCK else [])
                         + (["--method", request.method] if request.method != "auto" else []))
    return EditData(
        prompt=result.prompt, seed=result.seed, said=result.said, outcome=result.outcome,
        edits=[PlannedOut(query=p.query, region=p.region or None, kind=p.kind, method=p.method,
                          concepts=[c.concept_id for c in p.concepts],
                          block=p.sae.block, t=p.sae.t, window=str(p.window), strength=p.strength)
               for p in result.plans],
        before=f"/edit/picture/{token}-before.png", after=f"/edit/picture/{token}-after.png",
        maps=[f"/edit/picture/{token}-map{i}.png" for i in range(len(result.plans))],
        intervention_ids=result.intervention_ids, command=command)


def form_context(state: ServerState, values: dict) -> dict:
    saes = state.atlas.saes()
    side = max((s.grid_h or 0 for s in saes), default=0) or 8
    return {"values": values, "grid_side": side, "windows": WHEN, "methods": METHODS,
            "blocks": sorted({s.block for s in saes}), "labels": state.atlas.labels()}


@PAGE.router.post("/edit.json", response_model=EditData, responses=ERRORS,
                  summary="Run an edit: the unedited and the edited image from one seed")
def edit_json(request: EditRequest, state: State) -> EditData:
    return run_edit(state, request)


@PAGE.router.get("/edit/picture/{name}.png", response_class=Response, responses=PNG,
                 summary="A picture made by a recent edit")
def edit_picture(name: str, state: State) -> Response:
    if name not in state.pictures:
        raise NotFoundError(f"no edit picture {name!r}: pictures of the last edits are kept until the server stops")
    return Response(state.pictures[name], media_type="image/png")


@PAGE.html.get("/edit", include_in_schema=False)
def edit_page(request: Request, state: State, concept: Annotated[str, Query(max_length=2000)] = "",
              prompt: Annotated[str, Query(max_length=500)] = "", seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0
              ) -> HTMLResponse:
    """The edit form, prefilled from a concept page (concept) or an image page (its prompt and seed)."""
    values = {"prompt": prompt, "concept": concept, "region": "", "when": "auto", "strength": None, "seed": seed,
              "block": DEFAULT_BLOCK, "method": "auto"}
    return render_page("edit.html", request=request, read_only=state.read_only, json_url=None, csv_url=None,
                       result=None, **form_context(state, values))


@PAGE.html.post("/edit", include_in_schema=False)
def edit_form(request: Request, state: State, prompt: Annotated[str, Form(max_length=500)],
              concept: Annotated[str, Form(max_length=2000)], region: Annotated[str, Form(max_length=2000)] = "",
              when: Annotated[str, Form(max_length=50)] = "auto", strength: Annotated[str, Form(max_length=50)] = "",
              seed: Annotated[int, Form(ge=0)] = 0,
              block: Annotated[str, Form(max_length=200)] = DEFAULT_BLOCK,
              method: Annotated[str, Form(max_length=20)] = "auto") -> HTMLResponse:
    try:
        beta = float(strength) if strength.strip() else None
    except ValueError:
        raise BadInputError(f"bad strength {strength!r}: give a number or leave it empty") from None
    try:
        asked = EditRequest(prompt=prompt, concept=concept, region=region, when=when, strength=beta, seed=seed,
                            block=block, method=method)
    except ValidationError as err:  # the JSON route's body gets the same checks from FastAPI itself
        raise bad_input(err) from None
    result = run_edit(state, asked)
    return render_page("edit.html", request=request, read_only=state.read_only, json_url=None, csv_url=None,
                       result=result, **form_context(state, asked.model_dump()))
