"""Writing an atlas: a `Writer`, opened explicitly, its writes split by aggregate.

    with open_writer(path) as w:       # or `with atlas.writer() as w:` on an open reader
        w.catalog ...   catalog rows: models, prompts, images, SAEs, concept statistics, labels, concept labels,
                        names and notes, interventions, stages (atlas.store.catalog_writer)
        w.codes ...     sparse codes: `write` stages them, `finalize` merges them into the final layout
                        (atlas.store.codes_writer)
        w.objects ...   annotated objects and their mask files (atlas.store.objects_writer)
        w.index ...     FAISS indexes of decoder directions (atlas.store.index_writer)
        w.atlas         the reader the writer reads through; it sees every commit at its next read

Every write is idempotent, atomic and checked first: inputs are validated before anything touches the disk;
catalog rows change in one short transaction that publishes a snapshot when it commits (atlas.store.catalog),
so a writer holds nothing between two writes and a second writing process only ever waits for one transaction;
files are written under a temporary name and renamed before the catalog lists them.

Leaving the `with` block normally finalizes what this writer left unfinished (codes it staged, image buckets it
deferred: atlas.store.codes_writer); leaving it by an exception keeps them staged for the next finalize. Either
way the writer then releases the catalog's engine and, when `open_writer` opened it, its reader.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from atlas.store.catalog import Catalog
from atlas.store.catalog_writer import CatalogWriter
from atlas.store.codes_writer import CodesWriter
from atlas.store.index_writer import IndexWriter
from atlas.store.objects_writer import ObjectsWriter

if TYPE_CHECKING:
    from atlas.store.atlas import Atlas


class Writer:
    """One writer of an atlas (see the module docstring); make it with `open_writer(path)` or `Atlas.writer()`."""

    def __init__(self, atlas: Atlas, catalog: Catalog, owns_reader: bool = False) -> None:
        self.atlas = atlas
        self.root = atlas.root
        self.threads = atlas.threads
        self._db = catalog
        self._owns_reader = owns_reader
        self.catalog = CatalogWriter(self, catalog)
        self.codes = CodesWriter(self, catalog)
        self.objects = ObjectsWriter(self, catalog)
        self.index = IndexWriter(self, catalog)

    def stage(self) -> AbstractContextManager[None]:
        """Wrap a stage's writes: readers of other processes see none of them until it ends, then all of them."""
        return self._db.stage()

    def close(self) -> None:
        """Release the catalog's engine, and the reader if this writer opened it."""
        self._db.engine.dispose()
        if self._owns_reader:
            self.atlas.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.codes.finish()
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"Writer({str(self.root)!r})"
