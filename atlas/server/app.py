"""The web atlas application: `create_app(atlas_dir)` gives an ASGI app that uvicorn serves.

Routes come from one module per page group (atlas.server.views.*); this module only wires them
together with the error handling that keeps every failure a one-line answer: the JSON envelope
for `.json`, `.csv` and `.png` URLs, an error page for HTML.
"""

from __future__ import annotations

import asyncio
import functools
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
from atlas.server.errors import CrossSiteError, WrongHostError
from atlas.server.guard import Guard, Hosts, add_cookie
from atlas.server.pages import AtlasJSONResponse, render
from atlas.server.state import EDIT_SECONDS, REQUEST_SECONDS, ServerState, StreamBroken
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


def error_response(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    if request.url.path.endswith(MACHINE_SUFFIXES) or request.url.path == "/openapi.json":
        response = AtlasJSONResponse({"ok": False, "error": message, "status": status}, status_code=status)
    else:
        read_only = getattr(request.app.state, "atlas", None)
        response = render("error.html", status=status, request=request, message=message, status_code=status,
                          read_only=bool(read_only and read_only.read_only), json_url=None, csv_url=None)
    response.headers.update(headers or {})
    return response


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
    """ASGI middleware: a Host that does not name this server is a 421 (atlas.server.guard.Hosts), a URL or body
    that is not UTF-8 a 400, a body over MAX_BODY a 413, before any view runs; otherwise the decoders would
    quietly turn the bad bytes into U+FFFD and the views search for that.
    It also keeps the client's session (atlas.server.guard): a new one gets its cookie, and a write from another
    site or without the session's CSRF token is a 403 before any view runs."""

    def __init__(self, app: ASGIApp, guard: Guard, hosts: Hosts) -> None:
        self.app = app
        self.guard = guard
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            self.hosts.check(scope)
        except WrongHostError as err:
            return await error_response(Request(scope), err.status, err.message)(scope, receive, send)
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
        session = self.guard.session_of(scope)
        if session is None:
            session = self.guard.new_session()
            send = functools.partial(_with_cookie, send, session)
        scope.setdefault("state", {})["session"] = session
        if not problem:
            try:
                self.guard.check(scope, body)
            except CrossSiteError as err:
                status, problem = err.status, err.message
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


async def _with_cookie(send: Send, session: str, message: Message) -> None:
    await send(add_cookie(message, session))


class Deadline:
    """ASGI middleware: the wall-clock limit of a whole request. A read that has not started its answer after
    REQUEST_SECONDS (a write: EDIT_SECONDS) gets a 503 then; its thread finishes in the background, bounded by the
    limits of what it runs (user SQL stops at its own time limit). A streamed answer that breaks after it started
    (StreamBroken) is cut: the connection closes without the final chunk, so the client sees it incomplete."""

    def __init__(self, app: ASGIApp, seconds: float = REQUEST_SECONDS, write_seconds: float = EDIT_SECONDS) -> None:
        self.app, self.seconds, self.write_seconds = app, seconds, write_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = late = False

        async def answer(message: Message) -> None:
            nonlocal started
            if late:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, answer)
            except StreamBroken:
                if not started:
                    raise

        seconds = self.seconds if scope["method"] in ("GET", "HEAD") else self.write_seconds
        task = asyncio.ensure_future(run())
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if done or started:
            return await task
        late = True
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # finished in the background, unheard
        response = error_response(Request(scope), 503, f"the request took longer than the server's {seconds:g} s "
                                  "limit: ask for less (filter, LIMIT) or try again when the server is less busy")
        await response(scope, receive, send)


def create_app(atlas_dir: str | Path, read_only: bool = False, threads: int | None = None, host: str = "127.0.0.1",
               allowed_hosts: tuple[str, ...] | list[str] = ()) -> FastAPI:
    """The web atlas over one atlas directory; `read_only` turns off renaming concepts and running edits. Requests
    must name `host` (the address it is served on), a loopback name or one of `allowed_hosts` in their Host header
    (atlas.server.guard.Hosts)."""
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
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}: use {err.headers.get('Allow', 'GET')}"
        return error_response(request, err.status_code, message, err.headers)

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
    app.add_middleware(CleanInput, guard=state.guard, hosts=Hosts(host, allowed_hosts))
    app.add_middleware(Deadline)
    return app


def server_config(app: ASGIApp, **options: object) -> uvicorn.Config:
    """How uvicorn serves the web atlas (`atlas serve` and the tests alike); `options` go to uvicorn.Config."""
    import uvicorn

    return uvicorn.Config(app, h11_max_incomplete_event_size=MAX_HEAD, **options)
