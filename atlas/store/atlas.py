"""The atlas directory as one object: `Atlas.create(path)` / `open_atlas(path)`.

    atlas/
      catalog.duckdb                 catalog (SQLAlchemy models, Alembic migrations); only writers open it
      tables/CURRENT, tables/g*/     Parquet snapshots of the catalog that readers query (snapshot.py)
      codes/by_latent/, by_image/    sparse codes in two sorted arrangements (codes.py); codes/parts/ staging
      index/*.faiss                  FAISS indexes of decoder directions (atlas/index.py)
      masks/<image>/<object>.png     object masks

Read-only opens (the default; the CLI and web atlas use them) never write anything and never open
the catalog file, so they work while a build writes. A writable open upgrades an atlas made by an
older version first and rewrites a damaged catalog snapshot from the catalog; an atlas made by a
newer version is refused before anything is opened. It also publishes what a writer killed between its
commit and its publication left unpublished (atlas.store.snapshot).
"""

from __future__ import annotations

import os
from pathlib import Path

from atlas.store import migrate, snapshot
from atlas.store.catalog import CATALOG_FILE, Catalog
from atlas.store.errors import AtlasNotFoundError, CorruptFileError, InvalidInputError, SchemaTooNewError
from atlas.store.lookup import SortedFiles
from atlas.store.reads import Reads
from atlas.store.views import Views
from atlas.store.writes import Writes

DEFAULT_DIR = Path("atlas-data")
"""Not ./atlas: a folder of that name beside a script would shadow the package (`import atlas` finds it first)."""
SOURCE_CHECKOUT_DEFAULT = Path("demo") / "atlas"


def default_path() -> Path:
    """--atlas default: $ATLAS_DIR, else ./atlas-data; in a source checkout (where `make demo` builds it),
    demo/atlas."""
    if os.environ.get("ATLAS_DIR"):
        return Path(os.environ["ATLAS_DIR"])
    return SOURCE_CHECKOUT_DEFAULT if (Path("atlas") / "__init__.py").exists() else DEFAULT_DIR


class Atlas(Reads, Writes):
    """Typed reads (concepts, top_images, activation_map, sql, nearest, ...) and, when writable, writes.

    `threads` bounds DuckDB's threads (default: $ATLAS_THREADS, else all cores).
    """

    def __init__(self, root: Path, readonly: bool = True, threads: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.readonly = readonly
        self.threads = threads = threads or int(os.environ.get("ATLAS_THREADS") or 0) or None
        self._catalog = Catalog(self.root, threads=threads)
        self._views = Views(self.root, threads=threads)
        self._lookup = SortedFiles(self.root)
        self._indexes: dict = {}

    @classmethod
    def create(cls, path: str | Path, model_name: str | None = None, threads: int | None = None) -> Atlas:
        """Make a new atlas directory (or open an existing one writable) with the newest schema."""
        root = Path(path)
        if (root / "__init__.py").exists():
            raise InvalidInputError(f"{root} is a Python package, not an atlas; choose another --atlas directory")
        _refuse_newer(root)
        root.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(root, threads=threads)
        if snapshot.current(root) is None or catalog.revision() != migrate.head():
            catalog.upgrade()
        catalog.recover()
        atlas = cls(root, readonly=False, threads=threads)
        if model_name:
            atlas.add_model(model_name)
        return atlas

    def close(self) -> None:
        self._views.close()
        self._indexes.clear()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Atlas({str(self.root)!r}, readonly={self.readonly})"


def _refuse_newer(root: Path) -> None:
    generation = snapshot.current(root) if root.is_dir() else None
    if generation is not None:
        schema = snapshot.meta(generation).get("schema")
        if schema not in migrate.revisions():
            raise SchemaTooNewError(root, schema, migrate.head())


def open_atlas(path: str | Path | None = None, readonly: bool = True, threads: int | None = None) -> Atlas:
    """Open an atlas (default: `default_path()`); writable opens upgrade an older schema first."""
    root = Path(path) if path is not None else default_path()
    if not root.is_dir() or snapshot.current(root) is None:
        raise AtlasNotFoundError(root)
    _refuse_newer(root)
    if not readonly:
        if not (root / CATALOG_FILE).exists():
            raise AtlasNotFoundError(root)
        catalog = Catalog(root, threads=threads)
        revision = catalog.revision()
        if revision not in migrate.revisions():
            raise SchemaTooNewError(root, revision, migrate.head())
        if snapshot.meta(snapshot.current(root))["schema"] != migrate.head() or revision != migrate.head():
            catalog.upgrade()
        catalog.recover()
        try:
            return Atlas(root, readonly=False, threads=threads)
        except CorruptFileError as err:
            if not err.path.startswith(snapshot.TABLES_DIR + "/"):
                raise
            catalog.republish()  # the catalog is the source of truth of the snapshot
    return Atlas(root, readonly=readonly, threads=threads)


def upgrade_atlas(path: str | Path) -> str:
    """Bring an atlas to the newest schema; returns the revision."""
    open_atlas(path, readonly=False).close()
    return migrate.head()
