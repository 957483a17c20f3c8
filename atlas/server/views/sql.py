"""The SQL page: one read-only query over the atlas views, with the time limit and row cap of `atlas sql`.

Queries are GET requests so a result is a link that can be shared; the store refuses anything but
a single SELECT and any file outside the atlas (atlas.store.views).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from atlas.server.pages import Envelope, Page
from atlas.server.state import State
from atlas.server.views.home import Table

PAGE = Page("sql")
TIMEOUT = 5.0  # seconds, as `atlas sql`
MAX_ROWS = 1000  # as `atlas sql`
EXAMPLES = [
    "SELECT block, t, count(*) AS codes FROM codes GROUP BY ALL ORDER BY block, t DESC",
    "SELECT concept_id, label, mean_iou, hit_rate, support FROM concept_labels ORDER BY mean_iou DESC LIMIT 20",
    "SELECT label, count(*) AS objects FROM objects GROUP BY label ORDER BY objects DESC",
    "SELECT id, prompt, split FROM images LIMIT 20",
]


class SqlData(Envelope):
    q: str
    table: Table
    truncated: bool
    elapsed_ms: float
    timeout: float
    max_rows: int
    examples: list[str]
    views: list[dict[str, Any]]


@PAGE.add("/sql", "sql.html", SqlData, table="table")
def sql(state: State, q: Annotated[str, Query(max_length=20_000, description="One SELECT statement")] = "",
        timeout: Annotated[float, Query(gt=0, le=TIMEOUT, description="Seconds before the query is stopped")]
        = TIMEOUT, max_rows: Annotated[int, Query(ge=1, le=MAX_ROWS, description="Rows returned at most")]
        = MAX_ROWS) -> dict:
    """Run one read-only SQL query (a SELECT) over the atlas views."""
    views = state.atlas.query("SELECT table_name AS name, list(column_name ORDER BY ordinal_position) AS columns "
                              "FROM information_schema.columns WHERE table_schema = 'main' GROUP BY ALL "
                              "ORDER BY name").to_pylist()
    result = state.atlas.sql(q, timeout=timeout, max_rows=max_rows) if q.strip() else None
    return {"q": q, "table": Table(columns=result.columns if result else [],
                                   rows=[list(r) for r in result.rows] if result else []),
            "truncated": bool(result and result.truncated), "elapsed_ms": result.elapsed_ms if result else 0.0,
            "timeout": timeout, "max_rows": max_rows, "examples": EXAMPLES, "views": views}
