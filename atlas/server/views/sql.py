"""The SQL page: one read-only query over the atlas views, under the limits of `atlas sql` (atlas.store.limits), run
by an SQL worker process (atlas.server.sql_worker) so that it cannot take the server's memory.

Queries are GET requests so a result is a link that can be shared; the store refuses anything but
a single SELECT and any file outside the atlas (atlas.store.views). The page and its JSON show at most
`max_rows` rows and WEB_RESULT_BYTES; the CSV twin streams every row of the result (no row cap) while
the time limit and the byte cap of an export hold, so a result of any length can be downloaded whole.
An error is shown above the editor, which keeps the query.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from atlas.errors import AtlasError
from atlas.server.pages import ERRORS, Envelope, Page, page
from atlas.server.state import REQUEST_SECONDS, State, StreamBroken
from atlas.server.views.home import Table
from atlas.store.limits import MAX_RESULT_BYTES, MAX_ROWS, TIMEOUT

PAGE = Page("sql")
WEB_RESULT_BYTES = 16 << 20
"""Bytes of a result the page and its JSON carry (a browser renders them all); the CSV export may have
MAX_RESULT_BYTES."""
EXAMPLES = [
    "SELECT block, t, count(*) AS codes FROM codes GROUP BY ALL ORDER BY block, t DESC",
    "SELECT concept_id, label, mean_iou, hit_rate, support FROM concept_labels ORDER BY mean_iou DESC LIMIT 20",
    "SELECT label, count(*) AS objects FROM objects GROUP BY label ORDER BY objects DESC",
    "SELECT id, prompt, split FROM images LIMIT 20",
]
Q = Annotated[str, Query(max_length=20_000, description="One SELECT statement")]
Timeout = Annotated[float, Query(gt=0, le=REQUEST_SECONDS, description="Seconds before the query is stopped")]


class SqlData(Envelope):
    q: str
    table: Table
    truncated: bool
    elapsed_ms: float
    timeout: float
    max_rows: int
    examples: list[str]
    views: list[dict[str, Any]]


def _views(state: State) -> list[dict]:
    return state.atlas.query("SELECT table_name AS name, list(column_name ORDER BY ordinal_position) AS columns "
                             "FROM information_schema.columns WHERE table_schema = 'main' GROUP BY ALL "
                             "ORDER BY name").to_pylist()


@PAGE.add("/sql", "sql.html", SqlData, table="table", html=False, csv=False)
def sql(state: State, q: Q = "", timeout: Timeout = TIMEOUT,
        max_rows: Annotated[int, Query(ge=1, le=MAX_ROWS, description="Rows returned at most")] = MAX_ROWS) -> dict:
    """Run one read-only SQL query (a SELECT) over the atlas views."""
    result = state.sql.sql(q, timeout=timeout, max_rows=max_rows, max_bytes=WEB_RESULT_BYTES) \
        if q.strip() else None
    return {"q": q, "table": Table(columns=result.columns if result else [],
                                   rows=[list(r) for r in result.rows] if result else []),
            "truncated": bool(result and result.truncated), "elapsed_ms": result.elapsed_ms if result else 0.0,
            "timeout": timeout, "max_rows": max_rows, "examples": EXAMPLES, "views": _views(state)}


@PAGE.html.get("/sql", include_in_schema=False)
def sql_page(request: Request, state: State, q: Q = "", timeout: Timeout = TIMEOUT,
             max_rows: Annotated[int, Query(ge=1, le=MAX_ROWS)] = MAX_ROWS) -> HTMLResponse:
    """The SQL editor and the result; a query that fails shows its error above the editor, the query kept."""
    try:
        return page("sql.html", request, {**sql(state, q, timeout, max_rows), "error": None}, True)
    except AtlasError as err:
        data = {"q": q, "table": Table(columns=[], rows=[]), "truncated": False, "elapsed_ms": 0.0,
                "timeout": timeout, "max_rows": max_rows, "examples": EXAMPLES, "views": _views(state),
                "error": err.message}
        return page("sql.html", request, data, True, status=err.status)


@PAGE.router.get("/sql.csv", response_class=StreamingResponse, summary="Every row of a query as CSV (streamed)",
                 responses={**ERRORS, 200: {"content": {"text/csv": {}}, "description": "The whole result"}})
def sql_csv(state: State, q: Q, timeout: Timeout = TIMEOUT,
            max_rows: Annotated[int | None, Query(ge=1, description="Rows at most (default: every row)")] = None
            ) -> StreamingResponse:
    """Stream every row of one read-only query as CSV, under the time limit and the export byte cap: a query that
    fails before its first row is a 4xx; one stopped later ends the CSV with an `# error:` line and the response
    is cut (no final chunk), so a client never takes a part for the whole."""
    stream = state.sql.stream(q, timeout=timeout, max_rows=max_rows, max_bytes=MAX_RESULT_BYTES)

    def chunks() -> Iterator[str]:
        try:
            yield from stream.csv()
        except AtlasError as err:
            yield f"# error: {err.message}\n"
            raise StreamBroken(err.message) from None
        finally:
            stream.close()

    return StreamingResponse(chunks(), media_type="text/csv; charset=utf-8")
