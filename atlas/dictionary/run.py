"""Build the concept dictionary of an atlas: match every SAE latent's activation maps to annotated objects.

For each SAE, the codes of the dictionary images (every split but `test`, which layout prediction is
scored on) meet the objects' grid masks in one DuckDB query (`atlas.dictionary.link.link`); the (latent,
label) pairs that pass the paper's rule go to `concept_labels`, and each concept's best label is set.

Attribute labels ('red', 'circle', 'top left', 'striped'; atlas.annotate.attributes; for an atlas annotated
before they were recorded, the words of its object labels) are linked by the same rule but stored apart, in
`dictionary/attribute_links.parquet`, so the object-level dictionary (best labels, layout prediction, the report's
tables) stays what it was. For every concept with no passing link of either kind,
`dictionary/guesses.parquet` keeps what can be measured instead: the images it fires on and its best label below the
rule (atlas.dictionary.names names it from them, as a guess).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas.annotate.attributes import OBJECT, WORD, attribute_of
from atlas.annotate.run import CELLS_DIR, attribute_files, cells_files
from atlas.dictionary.config import ATTRIBUTE_LINKS, DICTIONARY_DIR, GUESSES
from atlas.dictionary.link import LinkConfig, link
from atlas.errors import BadInputError, NotFoundError
from atlas.files import atomic_write
from atlas.progress import bar as progress_bar
from atlas.store import Atlas, SaeInfo, Writer

DICTIONARY_SPLITS = ("train", "dictionary")
LINK_COLUMNS = ("latent", "label", "mean_iou", "hits", "hit_rate", "precision", "recall", "support")


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


def dictionary_cells(atlas: Atlas, source: str, splits: tuple[str, ...] = DICTIONARY_SPLITS,
                     files: list[Path] | None = None) -> pa.Table:
    """Grid cells of every annotated object (or of the attributes, from `files`) on images of `splits`."""
    cells = pa.concat_tables([pq.read_table(p) for p in (cells_files(atlas, source) if files is None else files)])
    keep = dictionary_images(atlas, splits)
    return cells.filter(pc.is_in(cells["image_id"], keep.cast(pa.int32())))


def dictionary_images(atlas: Atlas, splits: tuple[str, ...] = DICTIONARY_SPLITS) -> pa.Array:
    """Ids of the images of `splits`."""
    images = atlas.images()
    return images.filter(pc.is_in(images["split"], pa.array(list(splits))))["id"].combine_chunks()


def grid_cells(cells: pa.Table, grid: tuple[int, int]) -> pa.Table:
    """The object cells of one grid, in the columns `link` expects."""
    mine = cells.filter(pc.and_(pc.equal(cells["grid_h"], grid[0]), pc.equal(cells["grid_w"], grid[1])))
    return mine.select(["object_id", "image_id", "label", "row", "col"])


def word_cells(cells: pa.Table) -> pa.Table:
    """Attribute cells from the object cells of an atlas annotated before attributes were recorded: each word of a
    label is an attribute of its kind (atlas.annotate.attributes), covering the cells of the objects whose label
    has it (the union at grid resolution, where annotate takes it at pixel resolution)."""
    words = [(label, attribute_of(w) or WORD, w) for label in set(cells["label"].to_pylist())
             for w in dict.fromkeys(label.split())]
    table = pa.table({"label": [x[0] for x in words], "kind": [x[1] for x in words], "word": [x[2] for x in words]},
                     schema=pa.schema([("label", pa.string()), ("kind", pa.string()), ("word", pa.string())]))
    with duckdb.connect() as con:
        con.register("cells", cells)
        con.register("words", table)
        return con.sql("SELECT DISTINCT c.image_id, w.word AS label, c.row, c.col, c.grid_h, c.grid_w, w.kind "
                       "FROM cells c JOIN words w USING (label)").to_arrow_table()


def attribute_grid_cells(cells: pa.Table, grid: tuple[int, int]) -> pa.Table:
    """The attribute cells of one grid in the columns `link` expects: each (image, attribute) is one object."""
    mine = cells.filter(pc.and_(pc.equal(cells["grid_h"], grid[0]), pc.equal(cells["grid_w"], grid[1])))
    with duckdb.connect() as con:
        con.register("mine", mine)
        return con.sql("SELECT dense_rank() OVER (ORDER BY image_id, kind, label)::INTEGER AS object_id, image_id, "
                       "label, row, col FROM mine").to_arrow_table()


def guesses(sae: SaeInfo, codes: pa.Table, results: list[tuple[pa.Table, dict[str, str]]], images_total: int
            ) -> list[dict]:
    """For each latent firing on the dictionary images with no passing link: the images it fires on and its best
    label below the rule (by mean IoU, any kind; None when it overlaps no label). `results`: (link result, label ->
    kind) per label kind."""
    fired = codes.group_by("latent").aggregate([("image_id", "count_distinct")]).to_pylist()
    linked = {latent for result, _ in results for latent in result.filter(result["passes"])["latent"].to_pylist()}
    best: dict[int, dict] = {}
    for result, kinds in results:
        for row in result.select(list(LINK_COLUMNS)).to_pylist():
            if row["mean_iou"] > best.get(row["latent"], {}).get("mean_iou", -1.0):
                best[row["latent"]] = {**row, "kind": kinds.get(row["label"], OBJECT)}
    empty = dict.fromkeys((*LINK_COLUMNS[1:], "kind"))
    return [{**empty, **best.get(r["latent"], {}), "sae_id": sae.id, "latent": r["latent"],
             "images": r["image_id_count_distinct"], "images_total": images_total}
            for r in fired if r["latent"] not in linked]


def _write_table(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


LINK_SCHEMA = pa.schema([("sae_id", pa.int32()), ("latent", pa.int32()), ("kind", pa.string()), ("label", pa.string()),
                         ("mean_iou", pa.float64()), ("hits", pa.int64()), ("hit_rate", pa.float64()),
                         ("precision", pa.float64()), ("recall", pa.float64()), ("support", pa.int64())])
GUESS_SCHEMA = pa.schema([*LINK_SCHEMA, ("images", pa.int64()), ("images_total", pa.int64())])


def link_atlas(writer: Writer, config: LinkConfig | None = None, source: str | None = None,
               splits: tuple[str, ...] = DICTIONARY_SPLITS, progress: bool = True) -> dict[str, int]:
    """Link every SAE's latents to labels; returns the number of (concept, label) pairs stored per SAE."""
    atlas = writer.atlas
    config = config or LinkConfig()
    source = annotation_source(atlas, source)
    cells = dictionary_cells(atlas, source, splits)
    files = attribute_files(atlas, source)
    attributes = dictionary_cells(atlas, source, splits, files) if files else word_cells(cells)
    kinds = dict(zip(*(attributes[c].to_pylist() for c in ("label", "kind"))))
    images_total = len(dictionary_images(atlas, splits))
    stored: dict[str, int] = {}
    attribute_rows: list[dict] = []
    guessed: list[dict] = []
    with writer.stage():  # other readers see the old dictionary until the new one is complete
        for sae in progress_bar(atlas.saes(), desc="link", unit="sae", disable=not progress):
            codes = atlas.sae_codes(sae.id, splits)
            grid = (sae.grid_h, sae.grid_w)
            result = link(codes, grid_cells(cells, grid), config, threads=atlas.threads)
            passing = result.filter(result["passes"])
            rows = [{**r, "sae_id": sae.id} for r in passing.to_pylist()]
            writer.catalog.set_concept_labels(rows, replace=True)
            stored[sae.name] = len(rows)
            found = link(codes, attribute_grid_cells(attributes, grid), config, threads=atlas.threads)
            attribute_rows += [{**r, "sae_id": sae.id, "kind": kinds[r["label"]]}
                               for r in found.filter(found["passes"]).to_pylist()]
            guessed += guesses(sae, codes, [(result, {}), (found, kinds)], images_total)
        _write_table(atlas.root / DICTIONARY_DIR / ATTRIBUTE_LINKS, attribute_rows, LINK_SCHEMA)
        _write_table(atlas.root / DICTIONARY_DIR / GUESSES, guessed, GUESS_SCHEMA)
        writer.catalog.mark_stage("link", {"source": source, **{k: float(v) for k, v in vars(config).items()}})
    return stored
