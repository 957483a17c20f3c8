"""The web atlas application: `create_app(atlas_dir)` gives an ASGI app that uvicorn serves.

Routes come from one module per page group (atlas.server.views.*); this module only wires them
together with the error handling that keeps every failure a one-line answer: the JSON envelope
for `.json`, `.csv` and `.png` URLs, an error page for HTML.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atlas.errors import AtlasError
from atlas.server.pages import AtlasJSONResponse, render
from atlas.server.state import ServerState
from atlas.server.views import concepts, edit, home, images, labels, search, sql

if TYPE_CHECKING:
    import uvicorn

STATIC = Path(__file__).parent / "static"
MACHINE_SUFFIXES = (".json", ".csv", ".png")
MAX_BODY = 1 << 20
"""Bytes a request body may have: the largest form (an edit with a drawn region) is a few kilobytes."""
MAX_HEAD = 1 << 20
"""Bytes a request line and headers may have. h11 answers 400 and closes the connection once an unfinished head
passes its limit (16 kB by default), so whether a long URL got that or a real answer depended on how the network
split it; with the limit above any URL a browser sends, a long URL always reaches the views and gets their answer."""
UNREADABLE_BODY = "There was an error parsing the body"  # FastAPI's detail when a body does not decode


def error_response(request: Request, status: int, message: str) -> Response:
    if request.url.path.endswith(MACHINE_SUFFIXES) or request.url.path == "/openapi.json":
        return AtlasJSONResponse({"ok": False, "error": message, "status": status}, status_code=status)
    read_only = getattr(request.app.state, "atlas", None)
    return render("error.html", status=status, request=request, message=message, status_code=status,
                  read_only=bool(read_only and read_only.read_only), json_url=None, csv_url=None)


def _validation_message(err: RequestValidationError) -> str:
    """`bad <parameter>: <what is wrong>` for the first problem (without the location's query/path/body part)."""
    first = err.errors()[0] if err.errors() else {}
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')}): send a " \
               "JSON object"
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
    return f"bad {where}: {first.get('msg', 'invalid value')}"


def _not_utf8(data: bytes, what: str) -> str | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"the {what} is not valid UTF-8 (byte {data[err.start]:#04x} at {err.start}): encode text as UTF-8"
    return None


class CleanInput:
    """ASGI middleware: a URL or body that is not UTF-8 is a 400, a body over MAX_BODY a 413, before any view
    runs; otherwise the decoders would quietly turn the bad bytes into U+FFFD and the views search for that."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        problem = (_not_utf8(unquote_to_bytes(scope.get("raw_path") or scope["path"].encode()), "URL path")
                   or _not_utf8(unquote_to_bytes(scope["query_string"]), "query string"))
        status, body, more = 400, b"", True
        while not problem and more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                status, problem = 413, f"the request body is over {MAX_BODY >> 20} MiB: send less"
        if not problem and body:
            form = dict(scope["headers"]).get(b"content-type", b"").startswith(b"application/x-www-form-urlencoded")
            problem = _not_utf8(unquote_to_bytes(body) if form else body, "request body")
        if problem:
            response = error_response(Request(scope), status, problem)
            return await response(scope, receive, send)

        replayed = False

        async def replay() -> Message:  # the body once, then the client's own messages (http.disconnect)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


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
        elif message == UNREADABLE_BODY:
            message = "the request body could not be read: send UTF-8 JSON (or form data for the HTML forms)"
        return error_response(request, err.status_code, message)

    @app.exception_handler(AtlasError)
    async def expected(request: Request, err: AtlasError) -> Response:
        return error_response(request, err.status, err.message)

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> Response:
        """Anything but an AtlasError: a 500, and Starlette raises it on to uvicorn, which logs its traceback."""
        lines = str(err).strip().splitlines()
        what = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        return error_response(request, 500, f"internal error ({what}); the server's log has the traceback")

    modules = (home, concepts, labels, images, search, sql, edit)
    for module in modules:
        app.include_router(module.PAGE.router)
    for module in modules:
        app.include_router(module.PAGE.html)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(CleanInput)
    return app


def server_config(app: ASGIApp, **options: object) -> uvicorn.Config:
    """How uvicorn serves the web atlas (`atlas serve` and the tests alike); `options` go to uvicorn.Config."""
    import uvicorn

    return uvicorn.Config(app, h11_max_incomplete_event_size=MAX_HEAD, **options)
