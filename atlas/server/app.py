"""The web atlas application: `create_app(atlas_dir)` gives an ASGI app that uvicorn serves.

Routes come from one module per page group (atlas.server.views.*); this module only wires them
together with the error handling that keeps every failure a one-line answer: the JSON envelope
for `.json`, `.csv` and `.png` URLs, an error page for HTML.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from atlas.server.errors import one_line, status_of
from atlas.server.pages import AtlasJSONResponse, render
from atlas.server.state import ServerState
from atlas.server.views import concepts, edit, home, images, labels, search, sql

STATIC = Path(__file__).parent / "static"
MACHINE_SUFFIXES = (".json", ".csv", ".png")


def error_response(request: Request, status: int, message: str) -> Response:
    if request.url.path.endswith(MACHINE_SUFFIXES) or request.url.path == "/openapi.json":
        return AtlasJSONResponse({"ok": False, "error": message, "status": status}, status_code=status)
    read_only = getattr(request.app.state, "atlas", None)
    return render("error.html", status=status, request=request, message=message, status_code=status,
                  read_only=bool(read_only and read_only.read_only), json_url=None, csv_url=None)


def _validation_message(err: RequestValidationError) -> str:
    """`bad <parameter>: <what is wrong>` for the first problem (without the location's query/path/body part)."""
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
    return f"bad {where}: {first.get('msg', 'invalid value')}"


def create_app(atlas_dir: str | Path, read_only: bool = False, threads: int | None = None) -> FastAPI:
    """The web atlas over one atlas directory; `read_only` turns off renaming concepts and running edits."""
    state = ServerState(atlas_dir, read_only=read_only, threads=threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.close()

    app = FastAPI(title="Concept Atlas", summary="Concepts of a text-to-image diffusion model: pages and JSON API",
                  version="1", docs_url=None, redoc_url=None, default_response_class=AtlasJSONResponse,
                  lifespan=lifespan)
    app.state.atlas = state

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> Response:
        return error_response(request, 400, _validation_message(err))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> Response:
        message = err.detail if isinstance(err.detail, str) else str(err.detail)
        if err.status_code == 404 and message == "Not Found":
            message = f"no page at {request.url.path}: start from the home page /"
        return error_response(request, err.status_code, message)

    async def failure(request: Request, err: Exception) -> Response:
        status = status_of(err)
        message = one_line(err) if status < 500 else f"internal error ({type(err).__name__}: {one_line(err)})"
        return error_response(request, status, message)

    for expected in (ValueError, KeyError, FileNotFoundError):  # answered quietly
        app.add_exception_handler(expected, failure)
    app.add_exception_handler(Exception, failure)  # a bug: answered the same way, and logged with its traceback

    modules = (home, concepts, labels, images, search, sql, edit)
    for module in modules:
        app.include_router(module.PAGE.router)
    for module in modules:
        app.include_router(module.PAGE.html)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
