"""Alembic glue: run the migrations in `migrations/` on a catalog connection, without an alembic.ini.

Alembic knows no DuckDB; the `DuckDBImpl` below (a `DefaultImpl` with the dialect name) is all it
needs. DDL is transactional in DuckDB, so an upgrade runs inside the caller's transaction and either
finishes or leaves the catalog as it was. Revisions are numbered "0001", "0002", ...: a catalog whose
revision this code does not know was made by a newer version.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.ddl.impl import DefaultImpl
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from atlas.store import revisions as _revisions


class DuckDBImpl(DefaultImpl):
    __dialect__ = "duckdb"
    transactional_ddl = True


@cache
def migrations_dir() -> Path:
    """The Alembic scripts: the repository's migrations/ folder, installed as the package atlas.migrations."""
    import atlas.migrations

    return Path(atlas.migrations.__file__).parent


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


revisions, head = _revisions.revisions, _revisions.head
"""Known revisions (oldest first) and the newest, from atlas.store.revisions."""


def current(connection: Connection) -> str | None:
    """The catalog's revision (None for an empty database)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Migrate the catalog to `revision` inside the connection's current transaction."""
    command.upgrade(_config(connection), revision)
