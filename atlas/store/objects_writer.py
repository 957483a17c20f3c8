"""A writer's annotated objects (`w.objects`): catalog rows in `objects` (and their labels) and mask files under
masks/<image>/<object>.png, written before the commit that lists them (in `objects` and, with their checksums, in
`files`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from PIL import Image as PILImage

from atlas.files import atomic_write
from atlas.store.catalog import Catalog
from atlas.store.catalog_writer import label_ids, list_files
from atlas.store.errors import InvalidInputError
from atlas.store.revisions import MASK

if TYPE_CHECKING:
    from atlas.store.writer import Writer


class ObjectsWriter:
    def __init__(self, writer: Writer, catalog: Catalog) -> None:
        self._writer = writer
        self._db = catalog

    def add(self, objects: list[dict], source: str = "") -> list[int]:
        """Annotated objects: dicts with image_id, label, and optionally score, box (x0, y0, x1, y1) and mask
        (a 2-d array, saved as masks/<image>/<object>.png) or mask_path. They replace the objects that
        `source` gave the same images before."""
        for o in objects:
            if "image_id" not in o or not str(o.get("label", "")).strip():
                raise InvalidInputError("add_objects: every object needs image_id and label")
            if o.get("box") is not None and len(o["box"]) != 4:
                raise InvalidInputError(f"add_objects: box must be (x0, y0, x1, y1), got {o['box']}")
            if o.get("mask") is not None and np.ndim(o["mask"]) != 2:
                raise InvalidInputError(f"add_objects: mask must be 2-d, got shape {np.shape(o['mask'])}")
        root = self._writer.root
        images = sorted({int(o["image_id"]) for o in objects})
        with self._db.write("objects", "labels", "files") as tx:
            known = {i for (i,) in tx.query("SELECT id FROM images WHERE list_contains(?, id)", [images])} \
                if images else set()
            if set(images) - known:
                raise InvalidInputError(f"add_objects: unknown image ids {sorted(set(images) - known)[:5]}")
            labels = label_ids(tx, [str(o["label"]) for o in objects], source or None)
            old_masks = set()
            if images:
                where = "list_contains(?, image_id) AND source = ?"
                old_masks = {p for (p,) in tx.query(f"SELECT mask_path FROM objects WHERE {where}", [images, source])
                             if p}
                tx.query(f"DELETE FROM objects WHERE {where}", [images, source])
                if old_masks:
                    tx.query("DELETE FROM files WHERE kind = ? AND list_contains(?, path)", [MASK, sorted(old_masks)])
            start = tx.next_id("objects")
            rows, written = [], []
            for i, (o, label_id) in enumerate(zip(objects, labels)):
                object_id = start + i
                mask_path = o.get("mask_path")
                if o.get("mask") is not None:
                    mask_path = f"masks/{int(o['image_id'])}/{object_id}.png"
                    _write_mask(root / mask_path, np.asarray(o["mask"]))
                    written.append(mask_path)
                box = o.get("box") or (None,) * 4
                rows.append((object_id, int(o["image_id"]), label_id, o.get("score"), *box, mask_path, source))
            names = ["id", "image_id", "label_id", "score", "x0", "y0", "x1", "y1", "mask_path", "source"]
            types = [pa.int32(), pa.int32(), pa.int32()] + [pa.float64()] * 5 + [pa.string(), pa.string()]
            tx.insert_arrow("objects", pa.table({n: pa.array([r[i] for r in rows], ty)
                                                 for i, (n, ty) in enumerate(zip(names, types))}))
            list_files(tx, root, written, MASK)  # their checksums, for `atlas check`
        for stale in old_masks - {r[8] for r in rows}:
            (root / stale).unlink(missing_ok=True)
        return [r[0] for r in rows]


def mask_png(mask: np.ndarray) -> bytes:
    """The PNG file of a mask (0 / 255, one channel): what masks/<image>/<object>.png holds."""
    out = io.BytesIO()
    PILImage.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(out, format="PNG")
    return out.getvalue()


def _write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = mask_png(mask)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
