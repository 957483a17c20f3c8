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
variant, k), labels, objects (+ label), concept_labels (+ the same, label), interventions, files, stages,
trajectories (+ the same as concepts), lineage (+ parent_concept_id, child_concept_id, block, branch, variant,
parent_t, child_t), and the
codes in both arrangements, `codes` (fast for a latent) and `codes_by_image` (fast for an image), each with
image_id, sae_id, block, t, branch, variant, row, col, latent, value, concept_id.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import duckdb
import pyarrow as pa

from atlas.store import codes, snapshot
from atlas.store import revisions as migrate
from atlas.store.errors import (
    AtlasError,
    AtlasNotFoundError,
    CorruptFileError,
    InvalidInputError,
    QueryMemoryError,
    QueryTimeoutError,
    ReadOnlySqlError,
    ResultTooLargeError,
    SchemaTooNewError,
    SchemaTooOldError,
    SqlError,
)
from atlas.store.ids import CONCEPT_ID_SQL, DEFAULT_VARIANT, concept_prefix, sae_name
from atlas.store.limits import BATCH_ROWS, MAX_RESULT_BYTES, MAX_ROWS, MAX_TIMEOUT, TIMEOUT
from atlas.store.revisions import CONTENT_KINDS, TABLES

ALLOWED_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
T = TypeVar("T")


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

    @classmethod
    def read(cls, open_stream: Callable[[], ResultStream]) -> QueryResult:
        """The whole result of the stream `open_stream()` starts, with the time it took."""
        start = time.perf_counter()
        with open_stream() as result:
            table = pa.Table.from_batches(list(result), schema=result.schema)
        return cls(table, result.truncated, (time.perf_counter() - start) * 1000)


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

    def __init__(self, root: Path, threads: int | None = None, memory_limit: str | None = None) -> None:
        self.root = root.resolve()
        if not self.root.is_dir() or snapshot.current(self.root) is None:
            raise AtlasNotFoundError(root)
        config = {"threads": threads} if threads else {}
        if memory_limit:
            config["memory_limit"] = memory_limit
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
            "trajectories": f"SELECT {cid} AS concept_id, {sae} c.* FROM {t['trajectories']} c "
                            f"JOIN {t['saes']} s ON s.id = c.sae_id",
            "lineage": "SELECT p.concept_id AS parent_concept_id, c.concept_id AS child_concept_id, p.block, p.branch, "
                       f"p.variant, p.t AS parent_t, c.t AS child_t, l.* FROM {t['lineage']} l JOIN concepts p ON "
                       "p.sae_id = l.parent_sae_id AND p.latent = l.parent_latent JOIN concepts c ON "
                       "c.sae_id = l.child_sae_id AND c.latent = l.child_latent",
        }
        con = self._con
        try:
            con.execute("BEGIN")
            con.execute("CREATE SCHEMA IF NOT EXISTS snapshot")
            for name in TABLES:
                con.execute(f"CREATE OR REPLACE TABLE snapshot.{name} AS SELECT * FROM "
                            f"{parquet_scan([generation / f'{name}.parquet'])}")
            saes = con.sql("SELECT * FROM snapshot.saes ORDER BY block, branch, variant, t DESC").to_arrow_table()
            files = con.sql(f"SELECT * FROM snapshot.files WHERE kind NOT IN {CONTENT_KINDS}").to_arrow_table()
            files = files.to_pylist()
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

    def sql(self, query: str, timeout: float = TIMEOUT, max_rows: int | None = MAX_ROWS,
            max_bytes: int = MAX_RESULT_BYTES) -> QueryResult:
        """Run one read-only statement of user SQL with a time limit, a row cap and a byte cap (see `stream`)."""
        return QueryResult.read(lambda: self.stream(query, timeout, max_rows, max_bytes))

    def stream(self, query: str, timeout: float = TIMEOUT, max_rows: int | None = MAX_ROWS,
               max_bytes: int = MAX_RESULT_BYTES) -> SqlStream:
        """User SQL as Arrow batches read while they come: the statement is checked and started here (its errors
        raise now, before any row is used), the rows come from iterating the stream, which stops the query with a
        one-line error once it runs past `timeout` seconds or its rows pass `max_bytes`; `max_rows` (None: no cap)
        cuts it, marking the stream `truncated`. Like `query`, it starts again on a newer generation when a writer
        pruned a file of the one it started on."""
        check_limits(timeout, max_rows, max_bytes)
        deadline = time.monotonic() + timeout

        def run(cur: duckdb.DuckDBPyConnection) -> SqlStream:
            timer = threading.Timer(timeout, cur.interrupt)
            timer.start()
            try:
                check_read_only(cur, query)
                self._refuse_broken(cur, query)
                relation = cur.sql(query)
                if relation is None:
                    raise SqlError("the statement returned no rows")
                if max_rows is not None:
                    relation = relation.limit(max_rows + 1)
                reader = relation.to_arrow_reader(BATCH_ROWS)
            except BaseException as err:
                timer.cancel()
                if isinstance(err, duckdb.Error) and _vanished(err):
                    raise
                raise (_limit_error(err, timeout, self.root) or err) from None
            return SqlStream(reader, cur, timer, deadline, timeout, max_rows, max_bytes, self.root)

        return self._retrying(run, close=False)

    def _refuse_broken(self, cur: duckdb.DuckDBPyConnection, query: str) -> None:
        """The error of a codes view the query reads whose files could not be opened (it reads as empty)."""
        for name in (_referenced_tables(cur, query) & set(self.broken)) if self.broken else ():
            raise self.broken[name]

    def _retrying(self, run: Callable[[duckdb.DuckDBPyConnection], T], close: bool = True) -> T:
        """`run(cursor)` with DuckDB's errors translated, once more on the newest generation when a writer pruned a
        file of the one it started on; the cursor is closed after `run` unless `close` is false and `run` returned
        (then what it returned owns it)."""
        for attempt in (0, 1):
            cur = self.cursor()
            try:
                answer = run(cur)
            except duckdb.Error as err:
                cur.close()
                if attempt == 0 and _vanished(err):
                    self.generation = None
                    continue
                raise translate(err, self.root) from None
            except BaseException:
                cur.close()
                raise
            if close:
                cur.close()
            return answer
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._con.close()


class ResultStream:
    """A user query's result read while it comes (SqlStream here; the web atlas's SQL workers have their own): its
    `schema`, the Arrow batches by iterating, `truncated` once they are read, the rows as CSV; `close` stops it."""

    schema: pa.Schema
    truncated: bool = False

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def csv(self) -> Iterator[str]:
        """The rows as CSV text, the header first, then a chunk per batch (NULL is empty, bytes are hex)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        for batch in self:
            writer.writerows(tuple("" if v is None else v.hex() if isinstance(v, bytes) else v for v in row)
                             for row in zip(*(c.to_pylist() for c in batch.columns)))
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        yield buffer.getvalue()

    def __enter__(self) -> ResultStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqlStream(ResultStream):
    """The Arrow batches of one user query (from `Views.stream`), read from DuckDB as they are iterated; use it in a
    `with` block (or iterate it to the end) so the query stops and its cursor closes."""

    def __init__(self, reader: pa.RecordBatchReader, cursor: duckdb.DuckDBPyConnection, timer: threading.Timer,
                 deadline: float, timeout: float, max_rows: int | None, max_bytes: int, root: Path) -> None:
        self._reader, self._cursor, self._timer = reader, cursor, timer
        self._deadline, self._timeout, self._max_rows, self._max_bytes, self._root = (deadline, timeout, max_rows,
                                                                                    max_bytes, root)
        self.schema: pa.Schema = reader.schema
        self.rows = 0
        self.bytes = 0
        self.truncated = False

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            while True:
                try:
                    batch = self._reader.read_next_batch()
                except StopIteration:
                    return
                except BaseException as err:
                    raise (_limit_error(err, self._timeout, self._root) or err) from None
                if time.monotonic() > self._deadline:
                    raise QueryTimeoutError(self._timeout)
                if self._max_rows is not None and self.rows + batch.num_rows > self._max_rows:
                    batch, self.truncated = batch.slice(0, self._max_rows - self.rows), True
                self.bytes += batch.nbytes
                if self.bytes > self._max_bytes:
                    raise ResultTooLargeError(self._max_bytes)
                self.rows += batch.num_rows
                yield batch
                if self.truncated:
                    return
        finally:
            self.close()

    def close(self) -> None:
        self._timer.cancel()
        self._cursor.close()



def check_limits(timeout: float, max_rows: int | None, max_bytes: int) -> None:
    """The limits of user SQL, refused in one line when they could not bound anything (nan, inf, 0, negative)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidInputError(f"bad timeout {timeout!r}: give seconds above 0 and at most {MAX_TIMEOUT:g}")
    for name, value in (("max_rows", max_rows), ("max_bytes", max_bytes)):
        if value is None and name == "max_rows":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"bad {name} {value!r}: give a whole number of at least 1")


def _limit_error(err: BaseException, timeout: float, root: Path) -> AtlasError | None:
    """A DuckDB error raised while a user query runs as its one-line AtlasError: the timer's interrupt and the
    memory limit by name (the Arrow reader reports them as OSError), anything else of DuckDB translated."""
    text = str(err)
    if isinstance(err, duckdb.InterruptException) or (isinstance(err, OSError) and "INTERRUPT" in text):
        return QueryTimeoutError(timeout)
    if isinstance(err, duckdb.OutOfMemoryException) or (isinstance(err, OSError) and "Out of Memory" in text):
        return QueryMemoryError(_memory_limit(text))
    if isinstance(err, duckdb.Error):
        return translate(err, root)
    if isinstance(err, OSError) and "Error:" in text:
        return SqlError(_first_line(err))
    return None


def _memory_limit(message: str) -> str:
    found = re.search(r"/(\d[\d.]* \w+) used\)", message)
    return found.group(1) if found else "limit"


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
