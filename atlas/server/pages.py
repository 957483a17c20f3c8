"""One view function, three renderings: an HTML page, its `.json` twin and, for tables, a `.csv` twin.

A view is a plain function of typed query/path parameters that returns a dict of data. `Page.add`
registers it under `path` (HTML, from a Jinja template), `path.json` (the dict in the envelope
`{"ok": true, ...}`, validated by the view's pydantic model, published in /openapi.json) and, when
the view names a table, `path.csv`. Keeping the data in one function is what guarantees that the
JSON is the same data as the page (Datasette's discipline).
"""

from __future__ import annotations

import csv
import functools
import inspect
import io
import json
import math
import typing
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

TEMPLATES = Path(__file__).parent / "templates"


class Envelope(BaseModel):
    """Every successful JSON answer: `ok` is true, the rest is the page's data."""

    ok: bool = True


class ErrorBody(BaseModel):
    """Every failed JSON answer: a one-line error and the HTTP status."""

    ok: bool = False
    error: str
    status: int


ERRORS: dict[int | str, dict] = {status: {"model": ErrorBody, "description": why} for status, why in (
    (400, "Bad input: the error says what to change"), (403, "A write on a read-only server"),
    (404, "Not in the atlas: the error names what is there"),
    (409, "Another process writes to the atlas, or its schema is not this version's"),
    (413, "A request body over 1 MiB"),
    (503, "Not now: the atlas is busy with a writer, a file of it needs rebuilding, or a model is missing"))}


def plain(value: object) -> object:
    """A value JSON can carry: NaN and infinities become null, bytes hex, dates ISO, anything else str."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if hasattr(value, "item"):  # numpy scalars
        return plain(value.item())
    return str(value)


class AtlasJSONResponse(JSONResponse):
    """JSON that never fails on NaN, bytes or dates (SQL results may hold any of them)."""

    def render(self, content: object) -> bytes:
        return json.dumps(plain(content), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def csv_text(columns: list[str], rows: list[list] | list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in plain(list(row))] for row in rows])
    return buffer.getvalue()


# -- templates ------------------------------------------------------------------------------------------------

def concept_url(concept_id: str) -> str:
    return "/concept/" + quote(str(concept_id), safe="/@")  # '@' (a variant's mark) may stand in a path


def sae_query(block: str, t: float, branch: str, variant: str = "") -> str:
    """The query string choosing one SAE on the /concepts and /image pages (the primary one needs no variant)."""
    params = {"block": block, "t": t, "branch": branch, **({"variant": variant} if variant else {})}
    return "&".join(f"{name}={quote(str(value), safe='')}" for name, value in params.items())


def label_url(name: str) -> str:
    return "/label/" + quote(str(name), safe="")


def link_for(kind: str, value: object) -> str:
    """The page of a table cell's value: kind is concept, label or image."""
    return {"concept": concept_url, "label": label_url, "image": lambda v: f"/image/{int(v)}"}[kind](value)


def number(value: object, digits: int = 3) -> str:
    """Numbers as people read them in a table: floats to a few significant digits, t as 1.0."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return "" if not math.isfinite(value) else (f"{value:.1f}" if value == int(value) and abs(value) < 1e6
                                                  else f"{value:.{digits}g}")


ENVIRONMENT = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                 undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
ENVIRONMENT.filters.update(number=number, q=lambda v: quote(str(v), safe=""))
ENVIRONMENT.globals.update(concept_url=concept_url, label_url=label_url, link_for=link_for, sae_query=sae_query,
                           zip=zip)


def render(template: str, status: int = 200, **context: object) -> HTMLResponse:
    return HTMLResponse(ENVIRONMENT.get_template(template).render(**context), status_code=status)


def twin_url(request: Request, suffix: str) -> str:
    """The URL of this page's `.json` / `.csv` twin (same query string)."""
    path = request.url.path.rstrip("/") or "/"
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{quote(path, safe='/')}{suffix}{query}"


def page_url(request: Request, **changes: object) -> str:
    """This page's URL with some query parameters replaced (None removes one): pagination links."""
    params = dict(request.query_params)
    params.update({k: str(v) for k, v in changes.items() if v is not None})
    for k in [k for k, v in changes.items() if v is None]:
        params.pop(k, None)
    return str(request.url.replace(query="&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params.items())))


# -- registration ---------------------------------------------------------------------------------------------

class Page:
    """The routes of one group of views (one module), collected on an APIRouter."""

    def __init__(self, tag: str) -> None:
        self.router = APIRouter(tags=[tag])
        self.html = APIRouter()  # included after every API router: `/concept/{id:path}` would swallow `.json`

    def add(self, path: str, template: str, model: type[Envelope], table: str | None = None,
            methods: tuple[str, ...] = ("GET",)) -> Callable:
        """Register a view as `path` (HTML), `path.json` and, when `table` names a key of its data holding
        {"columns": [...], "rows": [...]}, `path.csv`."""

        def register(view: Callable[..., dict]) -> Callable[..., dict]:
            hints = typing.get_type_hints(view, include_extras=True)
            params = [p.replace(annotation=hints.get(p.name, p.annotation))
                      for p in inspect.signature(view).parameters.values()]
            summary = (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else None

            def as_json(**kwargs: object) -> dict:
                return {"ok": True, **view(**kwargs)}

            def as_csv(**kwargs: object) -> Response:
                data = view(**kwargs)[table]
                data = data.model_dump() if isinstance(data, BaseModel) else data
                return Response(csv_text(data["columns"], data["rows"]), media_type="text/csv; charset=utf-8")

            def as_html(request: Request, **kwargs: object) -> HTMLResponse:
                data = view(**kwargs)
                state = request.app.state.atlas
                return render(template, request=request, read_only=state.read_only, json_url=twin_url(request, ".json"),
                              csv_url=twin_url(request, ".csv") if table else None, page_url=functools.partial(
                                  page_url, request), **data)

            request_param = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)
            for func, extra in ((as_json, []), (as_csv, []), (as_html, [request_param])):
                func.__signature__ = inspect.Signature(extra + params)  # type: ignore[attr-defined]
                func.__name__ = f"{view.__name__}_{func.__name__[3:]}"
            name = path.rstrip("/") or "/"  # the home page's twins are /.json and /.csv
            for method in methods:
                self.router.add_api_route(f"{name}.json", as_json, methods=[method], response_model=model,
                                          summary=summary, description=view.__doc__, responses=ERRORS)
                if table:
                    self.router.add_api_route(f"{name}.csv", as_csv, methods=[method], summary=f"{summary} (CSV)",
                                              response_class=Response, responses={
                                                  **ERRORS, 200: {"content": {"text/csv": {}},
                                                                  "description": "The page's table as CSV"}})
            self.html.add_api_route(path, as_html, methods=list(methods), include_in_schema=False,
                                    response_class=HTMLResponse)
            return view

        return register
