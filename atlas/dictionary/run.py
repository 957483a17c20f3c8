"""Build the concept dictionary of an atlas: match every SAE latent's activation maps to annotated objects.

For each SAE, the codes of the dictionary images (every split but `test`, which layout prediction is
scored on) meet the objects' grid masks in one DuckDB query (`atlas.dictionary.link.link`); the (latent,
label) pairs that pass the paper's rule go to `concept_labels`, and each concept's best label is set.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from atlas.annotate.run import CELLS_DIR, cells_files
from atlas.dictionary.link import LinkConfig, link
from atlas.errors import BadInputError, NotFoundError
from atlas.store import Atlas, Writer

DICTIONARY_SPLITS = ("train", "dictionary")


def annotation_source(atlas: Atlas, source: str | None = None) -> str:
    """The annotator whose objects to use: the one given, or the only one the atlas has."""
    found = sorted(p.name for p in (atlas.root / CELLS_DIR).glob("*") if p.is_dir() and any(p.glob("*.parquet")))
    if source:
        if source not in found:
            raise NotFoundError(f"{atlas.root} has no annotations from {source!r}; found: {', '.join(found) or 'none'} "
                                f"(run `atlas annotate --annotator {source}`)")
        return source
    if not found:
        raise NotFoundError(f"{atlas.root} has no annotations yet; run `atlas annotate` first")
    if len(found) > 1:
        raise BadInputError(f"{atlas.root} has annotations from {', '.join(found)}; choose one with --source")
    return found[0]


def dictionary_cells(atlas: Atlas, source: str, splits: tuple[str, ...] = DICTIONARY_SPLITS) -> pa.Table:
    """Grid cells of every annotated object on images of `splits`."""
    cells = pa.concat_tables([pq.read_table(p) for p in cells_files(atlas, source)])
    images = atlas.images()
    keep = images.filter(pc.is_in(images["split"], pa.array(list(splits))))["id"]
    return cells.filter(pc.is_in(cells["image_id"], keep.cast(pa.int32())))


def grid_cells(cells: pa.Table, grid: tuple[int, int]) -> pa.Table:
    """The object cells of one grid, in the columns `link` expects."""
    mine = cells.filter(pc.and_(pc.equal(cells["grid_h"], grid[0]), pc.equal(cells["grid_w"], grid[1])))
    return mine.select(["object_id", "image_id", "label", "row", "col"])


def link_atlas(writer: Writer, config: LinkConfig | None = None, source: str | None = None,
               splits: tuple[str, ...] = DICTIONARY_SPLITS, progress: bool = True) -> dict[str, int]:
    """Link every SAE's latents to labels; returns the number of (concept, label) pairs stored per SAE."""
    atlas = writer.atlas
    config = config or LinkConfig()
    source = annotation_source(atlas, source)
    cells = dictionary_cells(atlas, source, splits)
    stored: dict[str, int] = {}
    for sae in tqdm(atlas.saes(), desc="link", unit="sae", disable=not progress):
        codes = atlas.sae_codes(sae.id, splits)
        result = link(codes, grid_cells(cells, (sae.grid_h, sae.grid_w)), config, threads=atlas.threads)
        passing = result.filter(result["passes"])
        rows = [{**r, "sae_id": sae.id} for r in passing.to_pylist()]
        writer.catalog.set_concept_labels(rows, replace=True)
        stored[sae.name] = len(rows)
    writer.catalog.mark_stage("link", {"source": source, **{k: float(v) for k, v in vars(config).items()}})
    return stored
