"""The read side: one sandboxed in-memory DuckDB whose views make the atlas a single SQL schema.

Readers never open catalog.duckdb (see atlas.store.snapshot), so a reader works while a build
writes. When a new snapshot generation appears, its Parquet tables are copied into the in-memory
schema `snapshot` in one transaction (they are small, and opening a Parquet file costs milliseconds
per query, more than a whole lookup); the codes views read the Parquet files the generation lists.
The connection is locked down before any user SQL runs: external access is off except for the atlas
directory (`allowed_directories`), nothing spills to a temp directory, the configuration is locked, and
user SQL must be a single SELECT (or an EXPLAIN of one: EXPLAIN ANALYZE runs what it explains), so COPY,
ATTACH, INSTALL, CREATE and friends are refused before DuckDB sees them; the allowed directory would
let a COPY write into the atlas. A timer calls `interrupt()` to enforce the time limit; the row cap is a
LIMIT on the user's relation, so DuckDB stops producing rows early.

Views: models, prompts, images (+ prompt, split), saes, concepts (+ concept_id and the SAE's block, t, branch,
variant, k), labels, objects (+ label), concept_labels (+ the same, label), interventions, files, stages, and the
codes in both arrangements, `codes` (fast for a latent) and `codes_by_image` (fast for an image), each with
image_id, sae_id, block, t, branch, variant, row, col, latent, value, concept_id.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from atlas.store import codes, snapshot
from atlas.store import revisions as migrate
from atlas.store.errors import (
    AtlasError,
    AtlasNotFoundError,
    CorruptFileError,
    QueryTimeoutError,
    ReadOnlySqlError,
    SchemaTooNewError,
    SchemaTooOldError,
    SqlError,
)
from atlas.store.ids import CONCEPT_ID_SQL, DEFAULT_VARIANT, concept_prefix, sae_name
from atlas.store.revisions import TABLES

ALLOWED_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


@dataclass(frozen=True)
class SaeInfo:
    id: int
    block: str
    t: float
    branch: str
    k: int
    n_latents: int
    d_in: int
    grid_h: int | None
    grid_w: int | None
    value_qbase: int | None
    n_codes: int
    path: str | None
    metrics: dict = field(default_factory=dict)
    variant: str = DEFAULT_VARIANT
    """"" for the primary SAE of its (block, t, branch), else a name such as k20 (atlas.store.ids)."""

    @property
    def name(self) -> str:
        """Its name in messages and reports: mid/1.0/cond, mid/1.0/cond@k20 (atlas.store.ids.sae_name)."""
        return sae_name(self.block, self.t, self.branch, self.variant)

    @property
    def prefix(self) -> str:
        """The part of its concept ids that names it: mid/1.0, mid/1.0/uncond, mid/1.0/cond@k20."""
        return concept_prefix(self.block, self.t, self.branch, self.variant)


@dataclass
class QueryResult:
    """Rows of a query as an Arrow table; `truncated` says the row cap cut it."""

    table: pa.Table
    truncated: bool = False
    elapsed_ms: float = 0.0

    @property
    def columns(self) -> list[str]:
        return self.table.column_names

    @property
    def rows(self) -> list[tuple]:
        return list(zip(*(c.to_pylist() for c in self.table.columns))) if self.table.num_columns else []

    def to_dicts(self) -> list[dict]:
        return self.table.to_pylist()


def parquet_scan(paths: list[Path], hive: bool = False) -> str:
    options = ", hive_partitioning = true, hive_types = {'sae_id': INTEGER, 'bucket': INTEGER}" if hive else ""
    return f"read_parquet([{', '.join(codes.sql_string(str(p)) for p in paths)}]{options})"


_CODES_COLUMNS = ("c.image_id, c.sae_id, s.block, s.t, s.branch, s.variant, c.row, c.col, c.latent, "
                  f"{codes.value_sql('c.q', 's.value_qbase')} AS value, {CONCEPT_ID_SQL.format(s='s', c='c')} "
                  "AS concept_id")
_EMPTY_CODES = ("SELECT NULL::INTEGER AS image_id, NULL::INTEGER AS sae_id, NULL::VARCHAR AS block, NULL::DOUBLE AS t, "
                "NULL::VARCHAR AS branch, NULL::VARCHAR AS variant, NULL::USMALLINT AS row, NULL::USMALLINT AS col, "
                "NULL::USMALLINT AS latent, NULL::FLOAT AS value, NULL::VARCHAR AS concept_id WHERE false")


class Views:
    """The sandboxed connection, refreshed whenever a newer snapshot generation is published."""

    def __init__(self, root: Path, threads: int | None = None) -> None:
        self.root = root.resolve()
        if not self.root.is_dir() or snapshot.current(self.root) is None:
            raise AtlasNotFoundError(root)
        config = {"threads": threads} if threads else {}
        self._con = duckdb.connect(":memory:", config=config)
        for setting in ("SET parquet_metadata_cache = true", "SET temp_directory = ''",
                        f"SET allowed_directories = [{codes.sql_string(str(self.root) + '/')}]",
                        "SET enable_external_access = false", "SET lock_configuration = true"):
            self._con.execute(setting)
        self._lock = threading.Lock()
        self.generation: Path | None = None
        self.saes: list[SaeInfo] = []
        self.files: list[dict] = []
        self.linked_labels: list[str] = []
        self.broken: dict[str, AtlasError] = {}
        self.refresh()

    def refresh(self) -> None:
        """Point the views at the newest generation if it changed (one small file read per call). A generation
        pruned while it loads (writers published KEEP newer ones meanwhile) is skipped for the newest."""
        for attempt in range(5):
            generation = snapshot.current(self.root)
            if generation is None:
                raise AtlasNotFoundError(self.root)
            if generation == self.generation:
                return
            try:
                with self._lock:
                    if generation != self.generation:
                        self._load(generation)
                return
            except CorruptFileError:
                if attempt == 4 or snapshot.current(self.root) == generation:
                    raise

    def _load(self, generation: Path) -> None:
        try:
            schema = snapshot.meta(generation)["schema"]
        except (OSError, ValueError, KeyError) as err:
            raise CorruptFileError(generation.relative_to(self.root) / "meta.json", type(err).__name__) from None
        if schema not in migrate.revisions():
            raise SchemaTooNewError(self.root, schema, migrate.head())
        if schema != migrate.head():
            raise SchemaTooOldError(self.root, schema, migrate.head())
        t = {name: f"snapshot.{name}" for name in TABLES}
        cid = CONCEPT_ID_SQL.format(s="s", c="c")
        sae = "s.block, s.t, s.branch, s.variant, s.k,"
        views = {
            **{name: f"SELECT * FROM {t[name]}" for name in TABLES},
            "images": f"SELECT i.*, p.text AS prompt, p.split FROM {t['images']} i "
                      f"LEFT JOIN {t['prompts']} p ON p.id = i.prompt_id",
            "objects": f"SELECT o.*, l.name AS label FROM {t['objects']} o LEFT JOIN {t['labels']} l "
                       "ON l.id = o.label_id",
            "concepts": f"SELECT {cid} AS concept_id, {sae} c.* FROM {t['concepts']} c "
                        f"JOIN {t['saes']} s ON s.id = c.sae_id",
            "concept_labels": f"SELECT {cid} AS concept_id, {sae} l.name AS label, c.* "
                              f"FROM {t['concept_labels']} c JOIN {t['saes']} s ON s.id = c.sae_id "
                              f"JOIN {t['labels']} l ON l.id = c.label_id",
        }
        con = self._con
        try:
            con.execute("BEGIN")
            con.execute("CREATE SCHEMA IF NOT EXISTS snapshot")
            for name in TABLES:
                con.execute(f"CREATE OR REPLACE TABLE snapshot.{name} AS SELECT * FROM "
                            f"{parquet_scan([generation / f'{name}.parquet'])}")
            saes = con.sql("SELECT * FROM snapshot.saes ORDER BY block, branch, variant, t DESC").to_arrow_table()
            files = con.sql("SELECT * FROM snapshot.files").to_arrow_table().to_pylist()
            for name, body in views.items():
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
            self.linked_labels = sorted(r[0] for r in con.execute(
                "SELECT DISTINCT l.name FROM snapshot.concept_labels c JOIN snapshot.labels l ON l.id = c.label_id"
            ).fetchall())
            con.execute("COMMIT")
        except duckdb.Error as err:
            con.execute("ROLLBACK")
            raise translate(err, self.root) from None
        self.broken = {}
        by_latent = [self.root / f["path"] for f in files if f["kind"] == codes.BY_LATENT]
        by_image = [self.root / f["path"] for f in files if f["kind"] == codes.BY_IMAGE]
        for name, paths, hive in (("codes", by_latent, True), ("codes_by_image", by_image, False)):
            body = (f"SELECT {_CODES_COLUMNS} FROM {parquet_scan(paths, hive)} c JOIN {t['saes']} s "
                    "ON s.id = c.sae_id") if paths else _EMPTY_CODES
            try:  # DuckDB reads the files' footers here; one bad file must not take the other views down
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
            except duckdb.Error as err:
                self.broken[name] = translate(err, self.root)
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {_EMPTY_CODES}")
        self.saes = [SaeInfo(**{k: (json.loads(v) if k == "metrics" and isinstance(v, str) else v)
                                for k, v in row.items() if k in SaeInfo.__dataclass_fields__})
                     for row in saes.to_pylist()]
        self.files = files
        self.generation = generation

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own (threads may query at once) sharing the views."""
        self.refresh()
        with self._lock:  # the shared connection refuses calls while _load runs on it in another thread
            return self._con.cursor()

    def query(self, sql: str, params: Sequence | Mapping = ()) -> pa.Table:
        """Trusted SQL of the API (no statement check, no limits) with `?` or `$name` parameters, errors
        translated; like `sql`, it names the damaged file of a codes view it reads, and retries once on a vanished
        file."""

        def run(cur: duckdb.DuckDBPyConnection) -> pa.Table:
            self._refuse_broken(cur, sql)
            return cur.sql(sql, params=(dict(params) if isinstance(params, Mapping) else list(params)) or None
                           ).to_arrow_table()

        return self._retrying(run)

    def sql(self, query: str, timeout: float = 5.0, max_rows: int = 1000) -> QueryResult:
        """Run one read-only statement of user SQL with a time limit and a row cap; like `query`, it retries once
        on a newer generation when a writer pruned a file of the one it started on."""
        start = time.perf_counter()

        def run(cur: duckdb.DuckDBPyConnection) -> pa.Table:
            timer = threading.Timer(timeout, cur.interrupt)
            timer.start()
            try:
                check_read_only(cur, query)
                self._refuse_broken(cur, query)
                relation = cur.sql(query)
                if relation is None:
                    raise SqlError("the statement returned no rows")
                return relation.limit(max_rows + 1).to_arrow_table()
            except duckdb.InterruptException:
                raise QueryTimeoutError(timeout) from None
            finally:
                timer.cancel()

        table = self._retrying(run)
        truncated = table.num_rows > max_rows
        return QueryResult(table.slice(0, max_rows), truncated, (time.perf_counter() - start) * 1000)

    def _refuse_broken(self, cur: duckdb.DuckDBPyConnection, query: str) -> None:
        """The error of a codes view the query reads whose files could not be opened (it reads as empty)."""
        for name in (_referenced_tables(cur, query) & set(self.broken)) if self.broken else ():
            raise self.broken[name]

    def _retrying(self, run: Callable[[duckdb.DuckDBPyConnection], pa.Table]) -> pa.Table:
        """`run(cursor)` with DuckDB's errors translated, once more on the newest generation when a writer pruned a
        file of the one it started on."""
        for attempt in (0, 1):
            cur = self.cursor()
            try:
                return run(cur)
            except duckdb.Error as err:
                if attempt == 0 and _vanished(err):
                    self.generation = None
                    continue
                raise translate(err, self.root) from None
            finally:
                cur.close()
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._con.close()


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse anything but a single SELECT / EXPLAIN before DuckDB runs it."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as err:
        raise SqlError(_first_line(err)) from None
    if not statements:
        raise SqlError("empty query: write one SELECT statement")
    if len(statements) > 1:
        raise ReadOnlySqlError(f"one statement at a time, got {len(statements)}")
    if statements[0].type not in ALLOWED_STATEMENTS:
        keyword = (statements[0].query.split() or [statements[0].type.name])[0].upper()
        keyword = statements[0].type.name if keyword == "WITH" else keyword  # WITH ... DELETE is a DELETE
        raise ReadOnlySqlError(f"{keyword} statements are refused, only SELECT (and EXPLAIN) run")
    if statements[0].type == duckdb.StatementType.EXPLAIN:
        try:
            explained = con.extract_statements(_explained(statements[0].query))
        except duckdb.Error:
            explained = []
        if len(explained) != 1 or explained[0].type != duckdb.StatementType.SELECT:
            raise ReadOnlySqlError("EXPLAIN only runs on a SELECT (EXPLAIN ANALYZE executes what it explains)")


def _explained(query: str) -> str:
    """The statement after `EXPLAIN [ANALYZE] [(options)]`, found with DuckDB's tokenizer so comments cannot
    hide it."""
    depth = 0
    for position, kind in duckdb.tokenize(query):
        word = re.match(r"\w+|\S", query[position:]).group(0)
        if kind == duckdb.token_type.comment:
            continue
        if word == "(":
            depth += 1
        elif word == ")":
            depth -= 1
        elif depth == 0 and word.upper() not in ("EXPLAIN", "ANALYZE"):
            return query[position:]
    return ""


def _referenced_tables(con: duckdb.DuckDBPyConnection, query: str) -> set[str]:
    """Names of the tables and views a query mentions, from DuckDB's own parse tree."""
    tree = con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0]
    return set(re.findall(r'"table_name":"([^"]+)"', tree))


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


_QUOTED_PATH = re.compile(r"""["']([^"']+)["']""")


def _vanished(err: duckdb.Error) -> bool:
    return isinstance(err, duckdb.IOException) and "No such file" in str(err)


def translate(err: duckdb.Error, root: Path) -> AtlasError:
    """A DuckDB error as a one-line AtlasError; file errors name the atlas file."""
    message = _first_line(err)
    if isinstance(err, duckdb.PermissionException):
        return ReadOnlySqlError("it may only read the atlas' own views and files " f"({message})")
    if isinstance(err, (duckdb.IOException, duckdb.InvalidInputException)):
        for candidate in _QUOTED_PATH.findall(str(err)):
            path = Path(candidate)
            if path.is_absolute() and path.resolve().is_relative_to(root):
                return CorruptFileError(path.resolve().relative_to(root), message)
    return SqlError(message)
