"""How long `atlas link` (the concept dictionary) takes on an SD v1.4-sized atlas.

Takes an atlas built by `bench/store_scale.py --out DIR` (80M stored nonzeros by default: 6 SAEs, 5120
latents, k = 10, 16x16 grid), adds synthetic objects (2-3 per image, rectangles of 2-8 cells a side on
the grid, 40 labels) as annotation cells, and times `atlas.dictionary.run.link_atlas` over every SAE. There is
no peer to run beside it: the paper's code is not public. Last line:

RESULT nonzeros=.. objects=.. link_seconds=.. seconds_per_sae=.. pairs=..

    .venv/bin/python bench/store_scale.py --out /work/bench-atlas
    .venv/bin/python bench/link_scale.py --atlas /work/bench-atlas
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def synthetic_cells(rng: np.random.Generator, image_ids: np.ndarray, grid: int, n_labels: int) -> tuple[pa.Table, int]:
    """2-3 rectangular objects per image on a grid x grid map, as annotate's cells table."""
    columns: dict[str, list] = {k: [] for k in ("object_id", "image_id", "label", "row", "col")}
    object_id = 0
    for image_id in image_ids:
        for _ in range(int(rng.integers(2, 4))):
            h, w = rng.integers(2, 9, size=2)
            r0, c0 = rng.integers(0, grid - h + 1), rng.integers(0, grid - w + 1)
            rows, cols = np.mgrid[r0:r0 + h, c0:c0 + w]
            n = rows.size
            columns["object_id"].append(np.full(n, object_id, np.int32))
            columns["image_id"].append(np.full(n, image_id, np.int32))
            columns["label"] += [f"label {int(rng.integers(n_labels))}"] * n
            columns["row"].append(rows.reshape(-1).astype(np.int16))
            columns["col"].append(cols.reshape(-1).astype(np.int16))
            object_id += 1
    n_cells = sum(len(a) for a in columns["row"])
    return pa.table({"object_id": np.concatenate(columns["object_id"]), "image_id": np.concatenate(columns["image_id"]),
                     "label": pa.array(columns["label"], pa.string()), "row": np.concatenate(columns["row"]),
                     "col": np.concatenate(columns["col"]), "grid_h": np.full(n_cells, grid, np.int16),
                     "grid_w": np.full(n_cells, grid, np.int16)}), object_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atlas", required=True, help="atlas made by bench/store_scale.py --out DIR")
    parser.add_argument("--threads", type=int, default=0, help="DuckDB threads (0 = all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from atlas.annotate.run import CELLS_DIR
    from atlas.dictionary.run import link_atlas
    from atlas.store import open_writer

    rng = np.random.default_rng(args.seed)
    writer = open_writer(args.atlas, threads=args.threads or None)
    atlas = writer.atlas
    saes = atlas.saes()
    grid = saes[0].grid_h
    image_ids = atlas.images()["id"].to_numpy()
    nonzeros = atlas.query("SELECT count(*) AS n FROM codes")["n"][0].as_py()
    cells, n_objects = synthetic_cells(rng, image_ids, grid, n_labels=40)
    out = atlas.root / CELLS_DIR / "synthetic"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pq.write_table(cells, out / "batch-000000.parquet")
    print(f"{nonzeros:,} nonzeros in {len(saes)} SAEs; {len(image_ids):,} images, {n_objects:,} objects, "
          f"{cells.num_rows:,} object cells", flush=True)
    start = time.perf_counter()
    stored = link_atlas(writer, source="synthetic", progress=True)
    seconds = time.perf_counter() - start
    writer.close()
    pairs = sum(stored.values())
    print(f"link: {seconds:.1f} s for {len(saes)} SAEs ({seconds / len(saes):.1f} s each); {pairs:,} passing pairs")
    print(f"RESULT nonzeros={nonzeros} objects={n_objects} link_seconds={seconds:.1f} "
          f"seconds_per_sae={seconds / len(saes):.1f} pairs={pairs}")


if __name__ == "__main__":
    main()
