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

A stage that writes many times (encode, annotate, link) runs inside `staged(root)`: its publications are
generations that CURRENT does not point at yet (only the process running the stage reads them), and CURRENT moves
to the newest generation when the stage ends, so other readers see the state before the stage, then the state
after it, nothing between. Generations are numbered after the newest one on disk, never after CURRENT, so a
publication always shows every commit; `catch_up` points CURRENT at the newest generation a killed stage left.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq

from atlas.files import atomic_write

KEEP = 3
TABLES_DIR = "tables"
STALE = "STALE"
POINTER = "CURRENT"
_STAGED: set[Path] = set()
"""Atlases on which this process runs a stage (`staged`): its readers see its newest generation."""


def _gen_name(number: int) -> str:
    return f"g{number:06d}"


def number(generation: Path) -> int:
    return int(generation.name[1:])


def _complete(generation: Path) -> bool:
    """Renamed into place by `publish`, so with its meta.json naming its own number."""
    try:
        return generation.name[1:].isdigit() and meta(generation).get("generation") == number(generation)
    except (OSError, ValueError, AttributeError):
        return False


def generations(root: Path) -> list[Path]:
    """The complete generation directories, oldest first."""
    return sorted((p for p in (root / TABLES_DIR).glob("g[0-9]*") if _complete(p)), key=number)


def newest(root: Path) -> Path | None:
    found = generations(root)
    return found[-1] if found else None


def pointed(root: Path) -> Path | None:
    """The generation tables/CURRENT names, or None if it is missing."""
    try:
        name = (root / TABLES_DIR / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    return root / TABLES_DIR / name


def current(root: Path) -> Path | None:
    """The generation readers read, or None if the atlas has none: CURRENT's, or the newest one during a stage this
    process runs or when CURRENT is missing (`atlas check` reports that, `catch_up` restores it)."""
    if _STAGED and Path(root).resolve() in _STAGED:
        return newest(root)
    return pointed(root) or newest(root)


def point(root: Path, generation: Path) -> None:
    """Make `generation` the one every reader reads (an atomic rename of tables/CURRENT)."""
    atomic_write(root / TABLES_DIR / POINTER, lambda tmp: tmp.write_text(generation.name))


def catch_up(root: Path) -> bool:
    """Point CURRENT at the newest generation if a killed stage (or a deleted pointer) left it behind; True if it
    moved."""
    latest, shown = newest(root), pointed(root)
    if latest is None or (shown is not None and shown.exists() and number(shown) >= number(latest)):
        return False
    point(root, latest)
    return True


@contextmanager
def staged(root: Path) -> Iterator[None]:
    """Publications inside stay hidden from other processes' readers until the block ends (see the module
    docstring); then, however it ends, CURRENT moves to the newest generation, which shows every commit."""
    key = Path(root).resolve()
    if key in _STAGED:  # a stage inside a stage (build's encode calls finalize ...): the outer one publishes
        yield
        return
    _STAGED.add(key)
    try:
        yield
    finally:
        _STAGED.discard(key)
        latest = newest(root)
        if latest is not None and catch_up(root):
            _prune(root, number(latest))


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
    previous = newest(root)
    count = number(previous) + 1 if previous else 1
    final = base / _gen_name(count)
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
    (staging / "meta.json").write_text(json.dumps({"schema": schema, "generation": count}))
    os.replace(staging, final)
    if not (_STAGED and Path(root).resolve() in _STAGED):
        point(root, final)
    (base / STALE).unlink(missing_ok=True)
    _prune(root, count)
    return final


def listed_files(generation: Path) -> set[str]:
    """Atlas-relative paths of the data files a generation's `files` table lists."""
    path = generation / "files.parquet"
    if not path.exists():
        return set()
    return set(pq.read_table(path, columns=["path"]).column("path").to_pylist())


def kept(root: Path, latest: int) -> set[str]:
    """The generations that stay: the KEEP newest, and the KEEP up to CURRENT's (readers may be on them while a
    stage publishes newer ones)."""
    shown = pointed(root)
    shown_number = number(shown) if shown is not None and shown.name[1:].isdigit() else latest
    return {_gen_name(n) for n in range(latest - KEEP + 1, latest + 1)} | \
        {_gen_name(n) for n in range(shown_number - KEEP + 1, shown_number + 1)}


def _prune(root: Path, latest: int) -> None:
    base = root / TABLES_DIR
    found = sorted(p for p in base.glob("g[0-9]*") if p.is_dir())
    names = kept(root, latest)
    keep = [p for p in found if p.name in names]
    drop = [p for p in found if p not in keep]
    if not drop:
        return
    alive = set().union(*(listed_files(p) for p in keep))
    dead = set().union(*(listed_files(p) for p in drop)) - alive
    for rel in dead:
        (root / rel).unlink(missing_ok=True)
    for p in drop:
        shutil.rmtree(p, ignore_errors=True)
