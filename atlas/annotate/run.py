"""Annotate an atlas's images: objects (label, score, box, image-resolution mask) into the catalog, and each
object's mask at every SAE grid into `annotations/<source>/batch-N.parquet` for the concept dictionary; the
attributes of each image's objects (atlas.annotate.attributes: 'red', 'circle', 'top left', 'striped') with their
masks at every grid into `annotations/<source>/attributes/batch-N.parquet`, kept out of the catalog.

Images go in batches by id; a batch's cells file is written (atomically) after its objects and attributes, so a
re-run skips finished batches and redoes an interrupted one (its objects are replaced, not duplicated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from atlas.annotate.attributes import AttributeMask, attribute_masks
from atlas.annotate.base import Annotator
from atlas.errors import NotFoundError
from atlas.files import atomic_write
from atlas.grids import mask_cells, mask_to_grid
from atlas.progress import bar as progress_bar
from atlas.store import Atlas, Writer

CELLS_DIR = "annotations"
ATTRIBUTES_DIR = "attributes"
"""Under annotations/<source>/: the attributes' cells, one file per batch like the objects'."""
COVERAGE = 0.5  # a grid cell belongs to an object when the mask covers at least half of it


def atlas_grids(atlas: Atlas) -> list[tuple[int, int]]:
    grids = sorted({(s.grid_h, s.grid_w) for s in atlas.saes() if s.grid_h})
    if not grids:
        raise NotFoundError(f"{atlas.root} has no SAEs yet, so no grid to pool masks to; run `atlas encode` first")
    return grids


def cells_files(atlas: Atlas, source: str) -> list[Path]:
    return sorted((atlas.root / CELLS_DIR / source).glob("batch-*.parquet"))


def attribute_files(atlas: Atlas, source: str) -> list[Path]:
    """The attribute cells of `source` (none for an atlas annotated before attributes were recorded)."""
    return sorted((atlas.root / CELLS_DIR / source / ATTRIBUTES_DIR).glob("batch-*.parquet"))


def annotate_atlas(writer: Writer, annotator: Annotator, batch_size: int = 64, progress: bool = True) -> int:
    """Annotate every image not yet done by this annotator; returns the number of objects stored."""
    atlas = writer.atlas
    grids = atlas_grids(atlas)
    images = atlas.images().select(["id", "path", "prompt"]).to_pylist()
    if not images:
        raise NotFoundError(f"{atlas.root} has no images; build or encode an atlas first")
    out_dir = atlas.root / CELLS_DIR / annotator.name
    (out_dir / ATTRIBUTES_DIR).mkdir(parents=True, exist_ok=True)
    batches: dict[int, list[dict]] = {}
    for image in images:
        batches.setdefault(image["id"] // batch_size, []).append(image)
    todo = {b: rows for b, rows in batches.items() if not (out_dir / f"batch-{b:06d}.parquet").exists()}
    bar = progress_bar(total=len(images), initial=len(images) - sum(map(len, todo.values())), unit="img",
               desc=f"annotate ({annotator.name})", disable=not progress)
    stored = 0
    with writer.stage():  # other readers see the objects once every image is annotated
        for b, rows in todo.items():
            pixels = [np.asarray(Image.open(_image_path(atlas, r["path"])).convert("RGB")) for r in rows]
            found = annotator.annotate(pixels, [r["prompt"] or "" for r in rows])
            objects = [{"image_id": r["id"], "label": o.label, "score": o.score, "box": o.box, "mask": o.mask}
                       for r, objs in zip(rows, found) for o in objs]
            ids = writer.objects.add(objects, source=annotator.name) if objects else []
            attributes = attribute_cells([r["id"] for r in rows], [attribute_masks(objs) for objs in found], grids)
            atomic_write(out_dir / ATTRIBUTES_DIR / f"batch-{b:06d}.parquet",
                         lambda tmp, table=attributes: pq.write_table(table, tmp))
            table = object_cells(ids, [o["image_id"] for o in objects], [o["label"] for o in objects],
                                 [o["mask"] for o in objects], grids)
            atomic_write(out_dir / f"batch-{b:06d}.parquet", lambda tmp, table=table: pq.write_table(table, tmp))
            stored += len(objects)
            bar.update(len(rows))
    bar.close()
    return stored


def _image_path(atlas: Atlas, path: str | None) -> Path:
    if not path:
        raise NotFoundError(f"an image of {atlas.root} has no file; re-run the capture that made it")
    full = atlas.file_path(path)
    if not full.exists():
        raise NotFoundError(f"image file {full} is missing; re-run the capture that made it")
    return full


def object_cells(object_ids: list[int], image_ids: list[int], labels: list[str], masks: list[np.ndarray],
                 grids: list[tuple[int, int]]) -> pa.Table:
    """Long table object_id, image_id, label, row, col, grid_h, grid_w: every grid cell each object covers."""
    stacked = np.stack(masks) if masks else np.zeros((0, 1, 1), bool)
    parts = []
    for gh, gw in grids:
        cells = mask_cells(np.asarray(object_ids, np.int32), np.asarray(image_ids, np.int32), labels,
                           mask_to_grid(stacked, (gh, gw), COVERAGE))
        n = cells.num_rows
        parts.append(cells.append_column("grid_h", pa.array(np.full(n, gh, np.int16)))
                     .append_column("grid_w", pa.array(np.full(n, gw, np.int16))))
    return pa.concat_tables(parts)


def attribute_cells(image_ids: list[int], found: list[list[AttributeMask]], grids: list[tuple[int, int]]) -> pa.Table:
    """Long table image_id, label, row, col, grid_h, grid_w, kind: every grid cell each image's attributes cover,
    pooled like the objects' masks."""
    flat = [(image_id, a) for image_id, masks in zip(image_ids, found) for a in masks]
    cells = object_cells(list(range(len(flat))), [i for i, _ in flat], [a.label for _, a in flat],
                         [a.mask for _, a in flat], grids)
    kinds = pa.array([a.kind for _, a in flat], pa.string())
    return cells.append_column("kind", kinds.take(cells["object_id"])).drop_columns(["object_id"])
