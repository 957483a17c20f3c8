"""Sparse codes on disk: the long (COO) layout in two arrangements, quantised values, staged writes.

For every image, SAE and grid position the top-k (latent, value) pairs are stored as rows. Two
arrangements of the same rows answer the two hot questions by reading one small file each:

    codes/by_latent/sae_id=<s>/bucket=<latent // 1024>/<token>.parquet
        latent uint16, image_id int32, row uint16, col uint16, q uint8
        sorted by (latent, image_id, row, col): the rows of one concept are contiguous, so min/max
        statistics skip all other row groups ("top images of a concept").
    codes/by_image/bucket=<image_id // 1024>/<token>.parquet
        image_id int32, sae_id uint16, row uint16, col uint16, latent uint16, q uint8
        sorted by (image_id, sae_id, row, col, latent): one image of every SAE in one place.

Sizes were measured (bench/store_scale.py, Zipf-distributed latents, bits per row): by_latent has
latent 0.1 (delta-encoded runs), image_id 3.8 (delta), row + col 8.1 (dictionary), q 7.0; by_image
has image_id, sae_id, row and col 0.2 together (delta / dictionary runs), latent 11.7
(BYTE_STREAM_SPLIT + zstd: its two bytes compress apart, close to the 11.45-bit entropy), q 7.0.
Both arrangements together: 4.64 bytes per stored nonzero at 80M rows. Block, t and branch live in
the catalog only.

Values are quantised to one byte on a log scale, value = 2 ** ((q + qbase) / 16): 1/16 octave steps
(at most 2.2 % relative error) over 16 octaves below the SAE's largest value (`saes.value_qbase`,
also in the by_latent files' metadata). Because the step is fixed, raising qbase when new codes
exceed the range shifts old q exactly.

Writes are staged: `prepare_part` and `stage_part` put one call's rows (float values) in
codes/parts/sae_id=<s>/ under a time-ordered name; `compact` merges the parts of an SAE with its
existing codes (for an image present in several places the newest part wins, so writing the same
images again replaces them) and writes new by_latent files; `rebuild_by_image` re-sorts the image
buckets that changed. Buckets whose re-sort a writer deferred are listed in codes/by_image.stale
(atlas.store.codes_writer). Every file is written under a temporary name and renamed; the catalog lists
it only afterwards. Row groups hold 100k rows and pages 64 KiB, so a lookup decodes little beyond what
it returns.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atlas.files import atomic_write
from atlas.store.errors import InvalidInputError

LATENTS_PER_BUCKET = 1024
IMAGES_PER_BUCKET = 1024
ROW_GROUP_ROWS = 100_000
PAGE_BYTES = 64 * 1024
STEPS_PER_OCTAVE = 16
BY_LATENT, BY_IMAGE, PARTS = "codes_by_latent", "codes_by_image", "parts"
STALE_IMAGE_BUCKETS = "by_image.stale"

BY_LATENT_SCHEMA = pa.schema([("latent", pa.uint16()), ("image_id", pa.int32()), ("row", pa.uint16()),
                              ("col", pa.uint16()), ("q", pa.uint8())])
BY_IMAGE_SCHEMA = pa.schema([("image_id", pa.int32()), ("sae_id", pa.uint16()), ("row", pa.uint16()),
                             ("col", pa.uint16()), ("latent", pa.uint16()), ("q", pa.uint8())])
PART_SCHEMA = pa.schema([("image_id", pa.int32()), ("row", pa.uint16()), ("col", pa.uint16()),
                         ("latent", pa.uint16()), ("value", pa.float32())])

_BY_LATENT_OPTIONS = dict(
    compression="zstd", compression_level=9, data_page_size=PAGE_BYTES, use_dictionary=["row", "col", "q"],
    column_encoding={"latent": "DELTA_BINARY_PACKED", "image_id": "DELTA_BINARY_PACKED"})
_BY_IMAGE_OPTIONS = dict(
    compression="zstd", compression_level={"image_id": 9, "sae_id": 9, "row": 9, "col": 9, "latent": 15, "q": 9},
    data_page_size=PAGE_BYTES, use_dictionary=["sae_id", "q"],
    column_encoding={"image_id": "DELTA_BINARY_PACKED", "row": "DELTA_BINARY_PACKED", "col": "DELTA_BINARY_PACKED",
                     "latent": "BYTE_STREAM_SPLIT"})


@dataclass(frozen=True)
class CodeFile:
    """A finished codes file, as the catalog's `files` table records it."""

    path: str
    kind: str
    sae_id: int | None
    bucket: int
    rows: int
    bytes: int


VALUE_DOC = ("value = 2 ** ((q + qbase) / 16) with qbase = saes.value_qbase of the row's SAE (in a by_latent file "
             "also its metadata key atlas.qbase); block, t, branch: that saes row")
"""How to read a stored byte, written into every codes file's Parquet metadata (key atlas.value)."""


def qbase_for(max_value: float) -> int:
    """The smallest offset that keeps `max_value` at or below q = 255."""
    return math.ceil(math.log2(max_value) * STEPS_PER_OCTAVE) - 255


def quantize(values: np.ndarray, qbase: int) -> np.ndarray:
    """One byte per value on the log scale described above (values below the range become q = 0)."""
    q = np.round(np.log2(np.asarray(values, np.float64)) * STEPS_PER_OCTAVE) - qbase
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray, qbase: int | np.ndarray) -> np.ndarray:
    """Values of quantised codes; `qbase` may be one offset or one per row."""
    return np.exp2((np.asarray(q, np.float64) + qbase) / STEPS_PER_OCTAVE).astype(np.float32)


def value_sql(q: str, qbase: str) -> str:
    """SQL of `dequantize` (the views use it)."""
    return f"CAST(pow(2.0, ({q} + {qbase}) / {float(STEPS_PER_OCTAVE)}) AS FLOAT)"


def token() -> str:
    """A unique, time-ordered file name stem."""
    return f"{time.time_ns():020d}-{os.getpid()}"


def _atomic_parquet(path: Path, batches: Iterator[pa.RecordBatch] | pa.Table, schema: pa.Schema,
                    options: dict, metadata: dict[str, str]) -> int:
    """Write through a temporary file and rename (atomic_write); returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = schema.with_metadata(metadata)
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        with pq.ParquetWriter(tmp, schema, **options) as writer:
            for batch in ([batches] if isinstance(batches, pa.Table) else batches):
                table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
                writer.write_table(table.cast(schema), row_group_size=ROW_GROUP_ROWS)
                rows += table.num_rows

    atomic_write(path, write)
    return rows


def parts_dir(root: Path, sae_id: int) -> Path:
    return root / "codes" / "parts" / f"sae_id={sae_id}"


def pending_parts(root: Path) -> dict[int, list[Path]]:
    """Finished parts per SAE, oldest first (their names start with the time they were written)."""
    found: dict[int, list[Path]] = {}
    for directory in sorted((root / "codes" / "parts").glob("sae_id=*")):
        files = sorted(directory.glob("part-*.parquet"))
        if files:
            found[int(directory.name.split("=")[1])] = files
    return found


def prepare_part(sae_id: int, n_latents: int, image_id: np.ndarray, row: np.ndarray, col: np.ndarray,
                 latent: np.ndarray, value: np.ndarray) -> pa.Table | None:
    """Validate one call's codes as a table to stage; rows with value <= 0 are dropped (they are not codes)."""
    arrays = [np.asarray(a) for a in (image_id, row, col, latent, value)]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise InvalidInputError(f"write_codes needs five 1-d arrays of one length, got shapes "
                                f"{[a.shape for a in arrays]}")
    image_id, row, col, latent, value = arrays
    for name, a in (("image_id", image_id), ("row", row), ("col", col), ("latent", latent)):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise InvalidInputError(f"write_codes: {name} must be integers, got {a.dtype}")
    if not np.all(np.isfinite(value)):
        raise InvalidInputError("write_codes: value holds NaN or infinity")
    keep = value > 0
    image_id, row, col, latent, value = (a[keep] for a in (image_id, row, col, latent, value))
    if image_id.size == 0:
        return None
    if latent.min() < 0 or latent.max() >= n_latents:
        raise InvalidInputError(f"write_codes: latent ids must lie in 0..{n_latents - 1} for SAE {sae_id}, "
                                f"got {latent.min()}..{latent.max()}")
    if min(row.min(), col.min(), image_id.min()) < 0 or max(row.max(), col.max()) > 65535:
        raise InvalidInputError("write_codes: image_id, row and col must be >= 0 (row, col < 65536)")
    cell = (row.astype(np.int64) << 32) | (col.astype(np.int64) << 16) | latent
    order = np.lexsort((cell, image_id))
    if np.any((np.diff(image_id[order]) == 0) & (np.diff(cell[order]) == 0)):
        raise InvalidInputError("write_codes: a (image_id, row, col, latent) appears twice in one call")
    return pa.table([image_id.astype(np.int32), row.astype(np.uint16), col.astype(np.uint16),
                     latent.astype(np.uint16), value.astype(np.float32)], schema=PART_SCHEMA)


def stage_part(root: Path, sae_id: int, table: pa.Table) -> Path:
    """Write a prepared part under a time-ordered name (atomic)."""
    path = parts_dir(root, sae_id) / f"part-{token()}.parquet"
    _atomic_parquet(path, table, PART_SCHEMA, {"compression": "zstd", "compression_level": 1}, {})
    return path


def stale_image_buckets(root: Path) -> set[int]:
    """Image buckets whose by_image file lacks codes that by_latent files already hold (a deferred re-sort)."""
    try:
        return {int(b) for b in (root / "codes" / STALE_IMAGE_BUCKETS).read_text().split()}
    except FileNotFoundError:
        return set()


def mark_stale_image_buckets(root: Path, buckets: set[int]) -> None:
    """Set the stale image buckets to exactly `buckets` (none: no file)."""
    path = root / "codes" / STALE_IMAGE_BUCKETS
    if buckets:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text("\n".join(map(str, sorted(buckets)))))
    else:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Compacted:
    files: list[CodeFile]
    qbase: int
    rows: int
    grid: tuple[int, int]
    image_buckets: set[int]


def sql_string(text: str) -> str:
    """`text` as a DuckDB string literal (for the places a parameter cannot go: file lists, SET values)."""
    return "'" + str(text).replace("'", "''") + "'"


def _paths_sql(paths: list[Path]) -> str:
    return "[" + ", ".join(sql_string(str(p)) for p in paths) + "]"


def compact(con: duckdb.DuckDBPyConnection, root: Path, sae_id: int, parts: list[Path], old_files: list[Path],
            old_qbase: int | None) -> Compacted:
    """Merge staged parts into new by_latent files of one SAE (the newest write of each image wins)."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW _parts AS SELECT * FROM read_parquet({_paths_sql(parts)}, "
                "filename = true)")
    con.execute("CREATE OR REPLACE TEMP TABLE _newest AS SELECT image_id, max(filename) AS filename "
                "FROM _parts GROUP BY image_id")
    new_max, max_row, max_col = con.execute(
        "SELECT max(value), max(row), max(col) FROM _parts SEMI JOIN _newest USING (image_id, filename)").fetchall()[0]
    qbase = qbase_for(new_max) if old_qbase is None else max(old_qbase, qbase_for(new_max))
    fresh = (f"SELECT latent, image_id, row, col, CAST(least(greatest(round(log2(value) * {STEPS_PER_OCTAVE}) "
             f"- {qbase}, 0), 255) AS UTINYINT) AS q FROM _parts SEMI JOIN _newest USING (image_id, filename)")
    query = fresh
    if old_files:
        shift = qbase - old_qbase
        query += (f" UNION ALL SELECT latent, image_id, row, col, CAST(greatest(q::INTEGER - {shift}, 0) AS UTINYINT) "
                  f"FROM read_parquet({_paths_sql(old_files)}) ANTI JOIN _newest USING (image_id)")
        old_row, old_col = con.execute(f"SELECT max(row), max(col) FROM read_parquet({_paths_sql(old_files)})"
                                       ).fetchall()[0]
        max_row, max_col = max(max_row, old_row or 0), max(max_col, old_col or 0)
    images = {int(i) // IMAGES_PER_BUCKET for (i,) in con.execute("SELECT image_id FROM _newest").fetchall()}
    reader = con.sql(f"SELECT * FROM ({query}) ORDER BY latent, image_id, row, col").to_arrow_reader(
        ROW_GROUP_ROWS * 10)
    name = token()
    files = []
    metadata = {"atlas.sae_id": str(sae_id), "atlas.qbase": str(qbase), "atlas.value": VALUE_DOC}
    for bucket, batches in _split(reader, "latent", LATENTS_PER_BUCKET):
        path = root / "codes" / "by_latent" / f"sae_id={sae_id}" / f"bucket={bucket}" / f"{name}.parquet"
        rows = _atomic_parquet(path, batches, BY_LATENT_SCHEMA, _BY_LATENT_OPTIONS, metadata)
        files.append(CodeFile(str(path.relative_to(root)), BY_LATENT, sae_id, bucket, rows, path.stat().st_size))
    con.execute("DROP TABLE _newest")
    con.execute("DROP VIEW _parts")
    return Compacted(files, qbase, sum(f.rows for f in files), (int(max_row) + 1, int(max_col) + 1), images)


def rebuild_by_image(con: duckdb.DuckDBPyConnection, root: Path, by_latent: dict[int, list[Path]],
                     buckets: set[int]) -> list[CodeFile]:
    """Re-sort the given image buckets from the by_latent files of every SAE (the source of truth)."""
    if not buckets or not any(by_latent.values()):
        return []
    selects = [f"SELECT image_id, {sae_id}::USMALLINT AS sae_id, row, col, latent, q FROM "
               f"read_parquet({_paths_sql(paths)}) WHERE image_id // {IMAGES_PER_BUCKET} IN "
               f"({', '.join(map(str, sorted(buckets)))})" for sae_id, paths in sorted(by_latent.items()) if paths]
    reader = con.sql(f"SELECT * FROM ({' UNION ALL '.join(selects)}) ORDER BY image_id, sae_id, row, col, latent"
                     ).to_arrow_reader(ROW_GROUP_ROWS * 10)
    name = token()
    files = []
    for bucket, batches in _split(reader, "image_id", IMAGES_PER_BUCKET):
        path = root / "codes" / "by_image" / f"bucket={bucket}" / f"{name}.parquet"
        rows = _atomic_parquet(path, batches, BY_IMAGE_SCHEMA, _BY_IMAGE_OPTIONS, {"atlas.value": VALUE_DOC})
        files.append(CodeFile(str(path.relative_to(root)), BY_IMAGE, None, bucket, rows, path.stat().st_size))
    return files


def _split(reader: pa.RecordBatchReader, column: str, size: int) -> Iterator[tuple[int, Iterator[pa.Table]]]:
    """Split a stream sorted by `column` into runs of equal `column // size`, each itself a stream."""
    pending: list[pa.Table] = []
    state = {"done": False}

    def next_batch() -> pa.Table | None:
        if pending:
            return pending.pop()
        try:
            return pa.Table.from_batches([reader.read_next_batch()])
        except StopIteration:
            state["done"] = True
            return None

    while True:
        first = next_batch()
        if first is None:
            return
        if first.num_rows == 0:
            continue
        bucket = int(first[column][0].as_py()) // size

        def run(first: pa.Table = first, bucket: int = bucket) -> Iterator[pa.Table]:
            table: pa.Table | None = first
            while table is not None:
                keys = table[column].to_numpy() // size
                cut = int(np.searchsorted(keys, bucket, side="right"))
                if cut < table.num_rows:
                    if cut:
                        yield table.slice(0, cut)
                    pending.append(table.slice(cut))
                    return
                yield table
                table = next_batch()

        yield bucket, run()


def _written_ns(path: Path) -> int:
    """The time in a token-named file's stem (part-<ns>-<pid> or <ns>-<pid>)."""
    return int(path.stem.removeprefix("part-").split("-")[0])


def merged_parts(root: Path, listed: set[str]) -> list[Path]:
    """Staged parts older than a listed by_latent file of their SAE: a finalize merged them and committed but was
    killed before deleting them (a finalize writes its files after the parts it reads, and no part is staged
    while one runs)."""
    newest: dict[str, int] = {}
    for rel in listed:
        parts = Path(rel).parts
        if parts[:2] == ("codes", "by_latent") and len(parts) > 2:
            newest[parts[2]] = max(newest.get(parts[2], 0), _written_ns(Path(rel)))
    return [path for directory in sorted((root / "codes" / "parts").glob("sae_id=*"))
            for path in sorted(directory.glob("part-*.parquet")) if _written_ns(path) < newest.get(directory.name, 0)]


def remove_orphans(root: Path, listed: set[str]) -> None:
    """Delete codes files no snapshot lists, parts already merged, and temporary files (all left by a crash); the
    caller holds the codes lock, so no other finalize is writing."""
    for arrangement in ("by_latent", "by_image"):
        for path in (root / "codes" / arrangement).rglob("*.parquet*"):
            if str(path.relative_to(root)) not in listed:
                path.unlink(missing_ok=True)
    for path in merged_parts(root, listed) + list((root / "codes" / "parts").rglob("*.tmp")):
        path.unlink(missing_ok=True)
