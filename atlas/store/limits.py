"""The limits of user SQL (`atlas sql`, `Atlas.sql`, the web /sql page): one place for their defaults.

A small module of constants, so the CLI can show them in `--help` without importing DuckDB.
"""

TIMEOUT = 5.0
"""Seconds user SQL may run by default."""
MAX_TIMEOUT = 86_400.0
"""The longest time limit user SQL may be given: a day."""
MAX_ROWS = 1000
"""Rows user SQL returns by default (exports to a file have no row cap)."""
MAX_RESULT_BYTES = 256 << 20
"""Bytes of Arrow data user SQL may return: the row cap bounds rows, this one a row's values too."""
SQL_MEMORY_LIMIT = "512MB"
"""DuckDB memory of the readers that run user SQL for `atlas sql` and the web atlas; past it a query fails in one
line instead of growing the process (nothing spills to disk)."""
BATCH_ROWS = 2048
"""Rows per Arrow batch read from a user query (DuckDB's vector size)."""
