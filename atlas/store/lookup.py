"""Point lookups in sorted Parquet files: read only the row groups whose statistics can hold the key.

The hot API paths (one concept's rows, one image's rows) know the single file that holds the answer.
DuckDB answers the same question through the views, but every query binds the file again and plans
a scan (10-15 ms for one image on this machine, bench/store_scale.py); keeping each file's footer
parsed and reading the one or two 100k-row groups with pyarrow takes 3-4 ms. Codes files are never
modified (a rewrite gets a new name), so a parsed footer stays valid for the file's lifetime. A parsed
file must not be read by two threads at once (pyarrow's reader is not thread-safe: concurrent reads of one
ParquetFile corrupted the heap of a web server loading a page of heatmaps), so each has its own lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas.store.errors import CorruptFileError

KEEP_OPEN = 64
_Footer = tuple[pq.ParquetFile, np.ndarray, np.ndarray, threading.Lock]


class SortedFiles:
    """Parsed footers of recently used files (least recently used ones are dropped)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()  # web servers call from several threads
        self._open: OrderedDict[tuple[Path, str], _Footer] = OrderedDict()

    def _footer(self, path: Path, key: str) -> _Footer:
        with self._lock:
            return self._footer_locked(path, key)

    def _footer_locked(self, path: Path, key: str) -> _Footer:
        entry = self._open.get((path, key))
        if entry is None:
            try:
                parquet = pq.ParquetFile(path)
                column = parquet.schema_arrow.get_field_index(key)
                stats = [parquet.metadata.row_group(i).column(column).statistics
                         for i in range(parquet.metadata.num_row_groups)]
            except (OSError, pa.ArrowException) as err:
                raise CorruptFileError(path.relative_to(self.root), str(err).splitlines()[0][:160]) from None
            entry = (parquet, np.array([s.min for s in stats]), np.array([s.max for s in stats]), threading.Lock())
            self._open[(path, key)] = entry
            if len(self._open) > KEEP_OPEN:
                self._open.popitem(last=False)
        self._open.move_to_end((path, key))
        return entry

    def rows(self, paths: list[Path], key: str, value: int, columns: list[str]) -> pa.Table:
        """The rows with `key == value` of files sorted by `key` (columns: the key column first, then these).
        `paths` must not be empty."""
        tables = []
        for path in paths:
            parquet, low, high, reading = self._footer(path, key)
            groups = np.flatnonzero((low <= value) & (value <= high)).tolist()
            if not groups:
                continue
            try:
                with reading:
                    table = parquet.read_row_groups(groups, columns=[key] + columns)
            except (OSError, pa.ArrowException) as err:
                raise CorruptFileError(path.relative_to(self.root), str(err).splitlines()[0][:160]) from None
            tables.append(table.filter(pc.equal(table[key], value)))
        if not tables and paths:
            tables.append(self._footer(paths[0], key)[0].schema_arrow.empty_table().select([key] + columns))
        return pa.concat_tables(tables)
