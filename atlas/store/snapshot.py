"""Generations of Parquet snapshots of the catalog: what every reader reads instead of the catalog file.

DuckDB lets one process open a database file read-write and then refuses every other open, even
read-only ones. So readers never open catalog.duckdb: after each committed write, the writer (still
holding the catalog) exports the tables it changed into a new generation directory, hard-links the
unchanged ones from the previous generation, renames the directory into place and finally points
`tables/CURRENT` at it (an atomic rename). A reader resolves CURRENT once per query and sees one
consistent catalog, never a half-written one:

    tables/CURRENT              "g000042"
    tables/g000042/meta.json    {"schema": "0002", "generation": 42}
    tables/g000042/<table>.parquet

The newest KEEP generations stay, so a query that started on an older one can finish. A data file
(codes, index) is deleted only when the last kept generation that lists it in `files` is pruned.

A writer killed after its commit but before its generation is published would leave readers on stale
tables until the next write happened to change the same ones (and a finalize would take the committed
but unlisted codes files for orphans). So a writer names the tables it changes in `tables/STALE` before
it commits; every publication also re-exports the tables listed there and then removes the file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow.parquet as pq

from atlas.files import atomic_write

KEEP = 3
TABLES_DIR = "tables"
STALE = "STALE"


def _gen_name(number: int) -> str:
    return f"g{number:06d}"


def current(root: Path) -> Path | None:
    """The directory of the newest generation, or None if the atlas has none."""
    pointer = root / TABLES_DIR / "CURRENT"
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    return root / TABLES_DIR / name


def meta(generation: Path) -> dict:
    return json.loads((generation / "meta.json").read_text())


def stale(root: Path) -> set[str]:
    """Tables committed to the catalog but maybe not published yet (a writer died in between)."""
    try:
        return set((root / TABLES_DIR / STALE).read_text().split())
    except FileNotFoundError:
        return set()


def mark_stale(root: Path, tables: Iterable[str]) -> set[str]:
    """Before a commit: the tables it changes, so a publication after a crash re-exports them. Returns the
    tables marked before, for `restore_stale` when the transaction rolls back."""
    previous = stale(root)
    restore_stale(root, previous | set(tables))
    return previous


def restore_stale(root: Path, tables: set[str]) -> None:
    """Set the stale tables to exactly `tables` (none: no STALE file, as after a publication)."""
    base = root / TABLES_DIR
    if tables:
        base.mkdir(parents=True, exist_ok=True)
        atomic_write(base / STALE, lambda tmp: tmp.write_text("\n".join(sorted(tables))))
    else:
        (base / STALE).unlink(missing_ok=True)


def publish(root: Path, tables: Iterable[str], changed: Iterable[str], schema: str,
            export: Callable[[str, Path], None]) -> Path:
    """Write a new generation: `export(table, path)` for the changed (and stale) tables, links for the others."""
    base = root / TABLES_DIR
    base.mkdir(parents=True, exist_ok=True)
    changed = set(changed) | stale(root)
    previous = current(root)
    number = meta(previous)["generation"] + 1 if previous else 1
    final = base / _gen_name(number)
    staging = base / f".{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)  # left by a crash between this rename and CURRENT's
    staging.mkdir()
    for table in tables:
        target = staging / f"{table}.parquet"
        old = previous / f"{table}.parquet" if previous else None
        if table in changed or old is None or not old.exists():
            export(table, target)
        else:
            os.link(old, target)
    (staging / "meta.json").write_text(json.dumps({"schema": schema, "generation": number}))
    os.replace(staging, final)
    pointer_tmp = base / "CURRENT.tmp"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, base / "CURRENT")
    (base / STALE).unlink(missing_ok=True)
    _prune(root, number)
    return final


def listed_files(generation: Path) -> set[str]:
    """Atlas-relative paths of the data files a generation's `files` table lists."""
    path = generation / "files.parquet"
    if not path.exists():
        return set()
    return set(pq.read_table(path, columns=["path"]).column("path").to_pylist())


def _prune(root: Path, newest: int) -> None:
    base = root / TABLES_DIR
    generations = sorted(p for p in base.glob("g[0-9]*") if p.is_dir())
    keep = [p for p in generations if int(p.name[1:]) > newest - KEEP]
    drop = [p for p in generations if p not in keep]
    if not drop:
        return
    alive = set().union(*(listed_files(p) for p in keep))
    dead = set().union(*(listed_files(p) for p in drop)) - alive
    for rel in dead:
        (root / rel).unlink(missing_ok=True)
    for p in drop:
        shutil.rmtree(p, ignore_errors=True)
