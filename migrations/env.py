"""Alembic environment: migrate the connection handed over by atlas.store.migrate, inside its transaction."""

from alembic import context

import atlas.store.migrate  # noqa: F401  (registers Alembic's DuckDB implementation)

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("the atlas catalog is migrated from Python: open_atlas(path, readonly=False) "
                     "or `atlas upgrade --atlas PATH`")
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
