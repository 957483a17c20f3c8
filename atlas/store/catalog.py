"""The writer's side of the catalog: short transactions on catalog.duckdb, each followed by a snapshot.

A write opens the DuckDB file (NullPool: nothing stays open between writes, so a second writing
process -- say the web atlas renaming a concept while a build runs -- only waits for one transaction,
and retries while DuckDB reports the file locked). Inside a transaction the ORM session handles small
rows and the raw DuckDB connection bulk rows (Arrow tables inserted with one statement, since
executemany through a DB-API driver costs milliseconds per row). After the commit, still holding the
file, the writer publishes the tables it changed as a new snapshot generation (atlas.store.snapshot).

Writers also hold `writers.lock` shared, from the first file they write to the commit that lists it
(`hold`); `atlas check --repair` takes it exclusively (`exclusive`), so it never mistakes a file that
is about to be listed for an orphan.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
from sqlalchemy import Connection, create_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from atlas.store import migrate, snapshot
from atlas.store.errors import AtlasInUseError, CatalogBusyError, CorruptFileError
from atlas.store.schema import TABLES

STORAGE_VERSION = "v1.5.0"
"""The DuckDB storage format a new catalog.duckdb is written in: DuckDB 1.5 (the newest CLI on PyPI when written)
opens it, where DuckDB 2's own format would be refused as too new. The file keeps it when later opened."""

CATALOG_FILE = "catalog.duckdb"
WRITERS_LOCK = "writers.lock"
_EXCLUSIVE: set[Path] = set()
"""Atlases this process holds exclusively: its own writes must not wait for itself."""


class Transaction:
    """What a write sees: an ORM session and the raw DuckDB connection, on one database transaction."""

    def __init__(self, connection: Connection) -> None:
        self.session = Session(bind=connection)
        self.raw = connection.connection.driver_connection
        self.published: Path | None = None  # the generation showing this commit, once `Catalog.write` published it

    def next_id(self, table: str) -> int:
        self.session.flush()
        return int(self.raw.execute(f"SELECT coalesce(max(id), -1) + 1 FROM {table}").fetchall()[0][0])

    def insert_arrow(self, table: str, rows: pa.Table, conflict: str = "") -> None:
        """INSERT all rows of an Arrow table (columns named like the table's) in one statement."""
        self.session.flush()
        if rows.num_rows == 0:
            return
        columns = ", ".join(rows.column_names)
        self.raw.register("_incoming", rows)
        try:
            self.raw.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _incoming {conflict}")
        finally:
            self.raw.unregister("_incoming")

    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        self.session.flush()
        return self.raw.execute(sql, list(params)).fetchall()


class Catalog:
    def __init__(self, root: Path, threads: int | None = None, busy_timeout: float = 60.0) -> None:
        self.root = root
        self.path = root / CATALOG_FILE
        self.busy_timeout = busy_timeout
        config = {"storage_compatibility_version": STORAGE_VERSION, **({"threads": threads} if threads else {})}
        self.engine = create_engine(f"duckdb:///{self.path}", poolclass=NullPool,
                                    connect_args={"config": config})

    def _connect(self) -> Connection:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.01
        while True:
            try:
                return self.engine.connect()
            except Exception as err:  # DuckDB reports a held lock as an IOException wrapped by SQLAlchemy
                if "lock" not in str(err).lower() or time.monotonic() > deadline:
                    if "lock" in str(err).lower():
                        raise CatalogBusyError(self.path, self.busy_timeout) from None
                    if self.path.exists():  # a file DuckDB cannot open: damaged
                        raise CorruptFileError(CATALOG_FILE, str(err).splitlines()[0][:200]) from None
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / WRITERS_LOCK, "a") as handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Shared with other writers, exclusive of `exclusive`: wrap writing a file and the commit listing it."""
        if self.root.resolve() in _EXCLUSIVE:
            yield
            return
        with self._lock(fcntl.LOCK_SH):
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The atlas to this process alone (repairs); refused at once while another process writes."""
        try:
            with self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB):
                _EXCLUSIVE.add(self.root.resolve())
                try:
                    yield
                finally:
                    _EXCLUSIVE.discard(self.root.resolve())
        except BlockingIOError:
            raise AtlasInUseError(self.root) from None

    @contextmanager
    def _committing(self, connection: Connection, changed: tuple[str, ...] | list[str]) -> Iterator[None]:
        """One transaction, its tables marked stale first; a rollback unmarks them (nothing to publish)."""
        previous = snapshot.mark_stale(self.root, changed)
        try:
            with connection.begin():
                yield
        except BaseException:
            snapshot.restore_stale(self.root, previous)
            raise

    @contextmanager
    def write(self, *changed: str) -> Iterator[Transaction]:
        """One transaction; after it commits, the `changed` tables are published for readers."""
        with self.hold():
            connection = self._connect()
            try:
                with self._committing(connection, changed):
                    tx = Transaction(connection)
                    yield tx
                    tx.session.flush()
                    tx.session.close()
                tx.published = self._publish(connection, changed)
            finally:
                connection.close()

    def _publish(self, connection: Connection, changed: tuple[str, ...] | list[str]) -> Path:
        raw = connection.connection.driver_connection

        def export(table: str, path: Path) -> None:
            raw.execute(f"COPY (SELECT * FROM {table}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")

        with connection.begin():
            present = {row[0] for row in raw.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            tables = [t for t in TABLES if t in present]
            return snapshot.publish(self.root, tables, changed, migrate.current(connection), export)

    def revision(self) -> str | None:
        connection = self._connect()
        try:
            return migrate.current(connection)
        finally:
            connection.close()

    def upgrade(self, revision: str = "head") -> None:
        """Migrate in one transaction and publish every table (their columns may have changed)."""
        with self.hold():
            connection = self._connect()
            try:
                with self._committing(connection, TABLES):
                    migrate.upgrade(connection, revision)
                self._publish(connection, TABLES)
            finally:
                connection.close()

    def migrate_only(self, revision: str) -> None:
        """Create or migrate the tables up to `revision` without publishing (rebuilding a catalog from a snapshot)."""
        connection = self._connect()
        try:
            with connection.begin():
                migrate.upgrade(connection, revision)
        finally:
            connection.close()

    def republish(self, tables: list[str] | tuple[str, ...] = tuple(TABLES)) -> None:
        with self.hold():
            connection = self._connect()
            try:
                self._publish(connection, tables)
            finally:
                connection.close()

    @contextmanager
    def stage(self) -> Iterator[None]:
        """A stage's many writes, shown to other readers at once when it ends (snapshot.staged); `check --repair`
        is refused meanwhile."""
        with self.hold(), snapshot.staged(self.root):
            yield

    def catch_up(self) -> None:
        """Show what a killed stage committed (snapshot.catch_up), unless a stage is running now."""
        try:
            with self.exclusive():
                snapshot.catch_up(self.root)
        except AtlasInUseError:
            pass  # another process writes: a running stage moves CURRENT itself when it ends

    def recover(self) -> None:
        """Publish what a writer killed between its commit and its publication left unpublished (if anything)."""
        if snapshot.stale(self.root):
            self.republish(())
