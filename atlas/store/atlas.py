"""The atlas directory, read through an `Atlas` and written through a `Writer` opened explicitly.

    atlas/
      catalog.duckdb                 catalog (SQLAlchemy models, Alembic migrations); only writers open it
      tables/CURRENT, tables/g*/     Parquet snapshots of the catalog that readers query (snapshot.py)
      codes/by_latent/, by_image/    sparse codes in two sorted arrangements (codes.py); codes/parts/ staging
      index/*.faiss                  FAISS indexes of decoder directions (index.py)
      masks/<image>/<object>.png     object masks

Reading: `open_atlas(path)` gives an `Atlas`: typed reads (concepts, top_images, activation_map, nearest, ...),
`query(sql, params)` for the API's own parameterised SQL, and `sql(text)` for user SQL (one sandboxed SELECT
with a time limit and a row cap). A reader has no write methods and never opens the catalog file, so it works
while a build writes.

Writing: a `Writer` (atlas.store.writer), opened explicitly and closed by its `with` block:

    with open_writer(path) as w:                  # or Atlas.create(path), then `with atlas.writer() as w:`
        w.catalog.add_prompts([("a dog", "train")])   # catalog rows (catalog_writer.py)
        w.codes.write(sae_id, image_id, row, col, latent, value)   # sparse codes (codes_writer.py)
        w.objects.add(objects, source="sam")      # annotated objects and masks (objects_writer.py)
        w.index.add(sae_id, decoder)              # FAISS indexes (index_writer.py)
        w.atlas.saes()                            # its reader, which sees every commit

Opening a writer upgrades an atlas made by an older version first, publishes what a writer killed between
its commit and its publication left unpublished (atlas.store.snapshot) and rewrites a damaged catalog
snapshot from the catalog; an atlas made by a newer version is refused before anything is opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas.errors import NotFoundError
from atlas.store import codes, revisions, snapshot
from atlas.store.errors import (
    AtlasNotFoundError,
    CorruptFileError,
    InvalidInputError,
    NoIndexError,
    NoLabelsError,
    SchemaTooNewError,
    UnknownLabelError,
    UnknownSaeError,
)
from atlas.store.ids import DEFAULT_BRANCH, DEFAULT_VARIANT, ConceptRef, block_key, concept_id, parse_concept_id
from atlas.store.limits import MAX_RESULT_BYTES, MAX_ROWS, TIMEOUT
from atlas.store.lookup import SortedFiles
from atlas.store.reads import FOLLOW_LINEAGE_SQL, LINK_RANK, ConceptInfo, ImageHit, Neighbor
from atlas.store.views import QueryResult, SaeInfo, SqlStream, Views

if TYPE_CHECKING:
    from types import ModuleType

    from atlas.store.catalog import Catalog
    from atlas.store.writer import Writer


def _faiss() -> ModuleType:
    """atlas.store.index, imported on the first neighbour search: FAISS is not needed to read anything else."""
    from atlas.store import index

    return index

DEFAULT_DIR = Path("atlas-data")
"""Not ./atlas: a folder of that name beside a script would shadow the package (`import atlas` finds it first)."""
SOURCE_CHECKOUT_DEFAULT = Path("demo") / "atlas"
_TOL = 1e-9


def default_path() -> Path:
    """--atlas default: $ATLAS_DIR, else ./atlas-data; in a source checkout (where `make demo` builds it),
    demo/atlas."""
    if os.environ.get("ATLAS_DIR"):
        return Path(os.environ["ATLAS_DIR"])
    return SOURCE_CHECKOUT_DEFAULT if (Path("atlas") / "__init__.py").exists() else DEFAULT_DIR


class Atlas:
    """The reader: typed reads, `query` (the API's SQL), `sql` (user SQL) and `writer()`; nothing else writes.

    `threads` bounds DuckDB's threads (default: $ATLAS_THREADS, else all cores), `memory_limit` (e.g. "512MB",
    default DuckDB's own: most of the machine's memory) the memory its queries may take, user SQL and the API's
    alike. Hot paths read the one
    Parquet file that holds the answer (the by_latent bucket of a concept, the by_image bucket of an image)
    through atlas.store.lookup instead of the all-files `codes` view; FAISS indexes are loaded once per file.
    """

    def __init__(self, root: str | Path, threads: int | None = None, memory_limit: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.threads = threads = threads or int(os.environ.get("ATLAS_THREADS") or 0) or None
        self._views = Views(self.root, threads=threads, memory_limit=memory_limit)
        self._lookup = SortedFiles(self.root)
        self._indexes: dict = {}

    @classmethod
    def create(cls, path: str | Path, model_name: str | None = None, threads: int | None = None) -> Atlas:
        """Make a new atlas directory (or bring an existing one to the newest schema) and open it for reading;
        `model_name` records its model."""
        root = Path(path)
        if (root / "__init__.py").exists():
            raise InvalidInputError(f"{root} is a Python package, not an atlas; choose another --atlas directory")
        _refuse_newer(root)
        root.mkdir(parents=True, exist_ok=True)
        from atlas.store.catalog import Catalog

        catalog = Catalog(root, threads=threads)
        if snapshot.current(root) is None or catalog.revision() != revisions.head():
            catalog.upgrade()
        catalog.recover()
        atlas = cls(root, threads=threads)
        if model_name:
            with atlas.writer() as writer:
                writer.catalog.add_model(model_name)
        return atlas

    def writer(self) -> Writer:
        """A writer on this atlas that reads through this reader (closing the writer leaves it open)."""
        from atlas.store.writer import Writer

        return Writer(self, _writable_catalog(self.root, self.threads))

    def close(self) -> None:
        self._views.close()
        self._indexes.clear()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Atlas({str(self.root)!r})"

    def saes(self) -> list[SaeInfo]:
        self._views.refresh()
        return list(self._views.saes)

    def labels(self) -> list[str]:
        return self.query("SELECT name FROM labels ORDER BY name").column("name").to_pylist()

    def model(self) -> dict:
        """The model the atlas was built from: its `name`, the `source` to load it from again (the directory it was
        built from, else the name) and its spec (steps, guidance, ... the SAEs saw)."""
        rows = self.query("SELECT name, path, spec FROM models ORDER BY id LIMIT 1").to_pylist()
        if not rows:
            raise NotFoundError(f"{self.root} records no model; build it with `atlas build`")
        spec = rows[0]["spec"]
        spec = json.loads(spec) if isinstance(spec, str) else dict(spec or {})
        return {"name": rows[0]["name"], "source": rows[0]["path"] or rows[0]["name"], **spec}

    def file_path(self, path: str) -> Path:
        """A path the catalog stores (relative to the atlas root, or absolute) as a usable path."""
        return Path(path) if Path(path).is_absolute() else self.root / path

    def images(self, split: str | None = None) -> pa.Table:
        """Every image (id, prompt_id, seed, guidance, steps, path, prompt, split) in id order, or one split's."""
        where, params = ("WHERE split = ?", [split]) if split else ("", [])
        return self.query(f"SELECT * FROM images {where} ORDER BY id", params)

    def sae_codes(self, sae_id: int, splits: tuple[str, ...] | None = None) -> pa.Table:
        """All codes (image_id, row, col, latent, value) of one SAE, optionally only on images of `splits`."""
        where, params = "sae_id = ?", [int(sae_id)]
        if splits:
            where += f" AND image_id IN (SELECT id FROM images WHERE split IN ({', '.join('?' * len(splits))}))"
            params += list(splits)
        return self.query(f"SELECT image_id, row, col, latent, value FROM codes WHERE {where}", params)

    def query(self, sql: str, params: Sequence | Mapping | None = None) -> pa.Table:
        """The API's own SQL over the atlas views, parameterised (`?` with a list, `$name` with a dict): no
        statement check, no row cap, no time limit. Values always go in `params`, never into the text."""
        return self._views.query(sql, params or ())

    def sql(self, query: str, timeout: float = TIMEOUT, max_rows: int | None = MAX_ROWS,
            max_bytes: int = MAX_RESULT_BYTES) -> QueryResult:
        """User SQL (`atlas sql`, the web /sql page): one read-only SELECT over the atlas views, with a time
        limit, a row cap (None: none) and a cap on the bytes of the result (see atlas.store.views for what is
        allowed). Limits that bound nothing (nan, inf, 0, negative) are refused."""
        return self._views.sql(query, timeout=timeout, max_rows=max_rows, max_bytes=max_bytes)

    def sql_stream(self, query: str, timeout: float = TIMEOUT, max_rows: int | None = None,
                   max_bytes: int = MAX_RESULT_BYTES) -> SqlStream:
        """User SQL as Arrow batches read while they are used (exports of any size in bounded memory), under the
        same limits as `sql` but without a row cap by default; use it in a `with` block."""
        return self._views.stream(query, timeout=timeout, max_rows=max_rows, max_bytes=max_bytes)

    def stage_done(self, name: str) -> bool:
        return self.query("SELECT count(*) AS n FROM stages WHERE name = ?", [name])["n"][0].as_py() > 0

    # -- resolving names -------------------------------------------------------------------------------------

    def select_saes(self, block: str | None = None, t: float | None = None, branch: str | None = None,
                    variant: str | None = None, k: int | None = None) -> list[SaeInfo]:
        """The SAEs matching every filter given (None: any). A value no SAE has raises UnknownSaeError listing the
        valid ones among the SAEs the filters before it left (block, branch, variant, k, then t)."""
        chosen = self.saes()
        for what, value in (("block", block), ("branch", branch), ("variant", variant), ("k", k), ("t", t)):
            if value is None:
                continue
            valid = sorted({getattr(s, what) for s in chosen}, reverse=what == "t")
            chosen = [s for s in chosen
                      if (abs(s.t - float(value)) < _TOL if what == "t" else getattr(s, what) == value)]
            if not chosen:
                raise UnknownSaeError(what, value, valid)
        return chosen

    def resolve(self, concept: str | ConceptRef) -> tuple[SaeInfo, int]:
        """The SAE and latent of a concept id; an unknown block, t, branch, variant or latent lists the valid ones."""
        ref = concept if isinstance(concept, ConceptRef) else parse_concept_id(concept)
        sae = self.select_saes(ref.block, ref.t, ref.branch, ref.variant)[0]
        if ref.latent >= sae.n_latents:
            raise NotFoundError(f"{ref} does not exist: the SAE {sae.prefix} has latents 0..{sae.n_latents - 1}")
        return sae, ref.latent

    def _files(self, kind: str, sae_id: int | None = None, bucket: int | None = None,
               key: str | None = None) -> list[Path]:
        self._views.refresh()
        return [self.root / f["path"] for f in self._views.files if f["kind"] == kind
                and (sae_id is None or f["sae_id"] == sae_id) and (bucket is None or f["bucket"] == bucket)
                and (key is None or f["key"] == key)]

    def _rows(self, kind: str, key: str, value: int, columns: list[str], **where: int) -> pa.Table | None:
        """Rows of the file of `kind` holding key == value; None when there is no such file. Retried once
        when the file vanished because newer snapshots superseded it while this reader looked."""
        for attempt in (0, 1):
            files = self._files(kind, **where)
            generation = self._views.generation
            if not files:
                return None
            try:
                return self._lookup.rows(files, key, value, columns)
            except CorruptFileError:
                if attempt or snapshot.current(self.root) == generation:
                    raise
        raise AssertionError("unreachable")

    # -- concepts ----------------------------------------------------------------------------------------------

    def concepts(self, label: str | None = None, t: float | None = None, block: str | None = None,
                 branch: str | None = DEFAULT_BRANCH, limit: int = 50, variant: str | None = None,
                 sae_k: int | None = None) -> list[ConceptInfo]:
        """Concepts ranked by frequency, or with `label` by how well they predict it (IoU, hit rate, support).
        They come from the primary SAE of each (block, t, branch) unless `variant` (e.g. "k20") or `sae_k` (the
        SAEs' k) picks others."""
        _at_least("limit", limit, 1)
        saes = {s.id: s for s in self.select_saes(block, t, branch, one_variant(variant, sae_k), sae_k)}
        if not saes:
            return []
        in_saes = f"sae_id IN ({', '.join(map(str, saes))})"
        if label is None:
            query, params = (f"SELECT * FROM snapshot.concepts WHERE {in_saes} "
                             f"ORDER BY frequency DESC NULLS LAST, sae_id, latent LIMIT {int(limit)}"), []
        else:
            if not self._views.linked_labels:
                raise NoLabelsError()
            if label not in self._views.linked_labels:
                raise UnknownLabelError(label, self._views.linked_labels)
            query = ("WITH ranked AS (SELECT * FROM snapshot.concept_labels WHERE label_id = (SELECT id FROM "
                     f"snapshot.labels WHERE name = $label) AND {in_saes} ORDER BY {LINK_RANK} LIMIT {int(limit)}) "
                     "SELECT r.*, $label AS label, k.frequency, k.mean_activation, k.decoder_norm, k.best_label, "
                     "k.name, k.note FROM ranked r LEFT JOIN snapshot.concepts k USING (sae_id, latent) "
                     f"ORDER BY {LINK_RANK}")
            params = {"label": label}
        return [_concept_info(saes[row["sae_id"]], row) for row in self.query(query, params).to_pylist()]

    def concept(self, concept: str) -> ConceptInfo:
        """One concept by id (statistics empty until add_concepts)."""
        sae, latent = self.resolve(concept)
        rows = self.query("SELECT * FROM snapshot.concepts WHERE sae_id = ? AND latent = ?", [sae.id, latent])
        return _concept_info(sae, rows.to_pylist()[0] if rows.num_rows else {"latent": latent})

    # -- codes ---------------------------------------------------------------------------------------------------

    def top_images(self, concept: str, n: int = 20) -> list[ImageHit]:
        """Images where the concept fires most strongly (largest value; ties: more cells, lower id), each with the
        absolute path of its image file."""
        _at_least("n", n, 1)
        sae, latent = self.resolve(concept)
        rows = self._rows(codes.BY_LATENT, "latent", latent, ["image_id", "row", "col", "q"], sae_id=sae.id,
                          bucket=latent // codes.LATENTS_PER_BUCKET)
        if rows is None or rows.num_rows == 0:
            return []
        image, q = rows["image_id"].to_numpy(), rows["q"].to_numpy().astype(np.int64)
        cell = rows["row"].to_numpy().astype(np.int64) * 65536 + rows["col"].to_numpy()
        order = np.lexsort((cell, -q, image))  # per image: strongest cell first
        image, q, cell = image[order], q[order], cell[order]
        starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])
        counts = np.diff(np.r_[starts, len(image)])
        best = np.lexsort((image[starts], -counts, -q[starts]))[:n]
        chosen = starts[best]
        ids = image[chosen].tolist()
        info = {r["id"]: r for r in self.query(
            "SELECT i.id, i.path, p.text AS prompt FROM snapshot.images i LEFT JOIN snapshot.prompts p "
            f"ON p.id = i.prompt_id WHERE i.id IN ({', '.join(map(str, ids))})").to_pylist()}
        values = codes.dequantize(q[chosen], sae.value_qbase)
        paths = {i: str(self.file_path(r["path"]).absolute()) for i, r in info.items() if r["path"]}
        return [ImageHit(int(i), float(v), int(c), int(x // 65536), int(x % 65536), paths.get(i),
                         info.get(i, {}).get("prompt"))
                for i, v, c, x in zip(ids, values, counts[best], cell[chosen])]

    def image_codes(self, image_id: int, block: str | None = None, t: float | None = None,
                    branch: str | None = None, variant: str | None = None) -> pa.Table:
        """Every stored code of one image (optionally of some SAEs) with the `codes` view's columns, ordered
        by sae_id, row, col, latent (the file's order). The SAE columns are joined here, not in SQL: that
        halves the time of this hot lookup."""
        saes = {s.id: s for s in self.select_saes(block, t, branch, variant)}
        raw = self._rows(codes.BY_IMAGE, "image_id", int(image_id), ["sae_id", "row", "col", "latent", "q"],
                         bucket=int(image_id) // codes.IMAGES_PER_BUCKET) if saes else None
        if raw is None:
            return self.query("SELECT * FROM codes_by_image WHERE false")
        raw = raw.filter(pc.is_in(raw["sae_id"], pa.array(list(saes), raw["sae_id"].type)))
        order = sorted(saes)
        slot = np.zeros(max(order) + 1, np.int64)
        slot[order] = np.arange(len(order))
        which = pa.array(slot[raw["sae_id"].to_numpy()])
        info = [saes[i] for i in order]
        qbase = np.array([s.value_qbase or 0 for s in info])[which.to_numpy()]
        prefix = pc.take(pa.array([s.prefix for s in info]), which)
        return pa.table({
            "image_id": pa.array(np.full(raw.num_rows, int(image_id), np.int32)),
            "sae_id": raw["sae_id"].cast(pa.int32()),
            "block": pc.take(pa.array([s.block for s in info]), which),
            "t": pc.take(pa.array([s.t for s in info], pa.float64()), which),
            "branch": pc.take(pa.array([s.branch for s in info]), which),
            "variant": pc.take(pa.array([s.variant for s in info]), which),
            "row": raw["row"], "col": raw["col"], "latent": raw["latent"],
            "value": pa.array(codes.dequantize(raw["q"].to_numpy(), qbase)),
            "concept_id": pc.binary_join_element_wise(prefix, pc.cast(raw["latent"], pa.string()), "/"),
        })

    def activation_map(self, image_id: int, concept: str) -> np.ndarray:
        """The concept's value on the SAE's grid (grid_h, grid_w) for one image; zeros where it is silent."""
        sae, latent = self.resolve(concept)
        if self.query("SELECT count(*) AS n FROM images WHERE id = ?", [int(image_id)])["n"][0].as_py() == 0:
            raise InvalidInputError(f"unknown image {image_id}: see `atlas sql \"SELECT id, prompt FROM images\"`")
        if not sae.grid_h or not sae.grid_w:
            raise InvalidInputError(f"the SAE of {concept} has no codes yet (no grid known): run `atlas encode`")
        out = np.zeros((sae.grid_h, sae.grid_w), np.float32)
        cells = self._rows(codes.BY_IMAGE, "image_id", int(image_id), ["sae_id", "latent", "row", "col", "q"],
                           bucket=int(image_id) // codes.IMAGES_PER_BUCKET)
        if cells is not None:
            cells = cells.filter(pc.and_(pc.equal(cells["sae_id"], sae.id), pc.equal(cells["latent"], latent)))
            rows, cols = cells["row"].to_numpy(), cells["col"].to_numpy()
            out[rows, cols] = codes.dequantize(cells["q"].to_numpy(), sae.value_qbase)
        return out

    # -- FAISS ---------------------------------------------------------------------------------------------------

    def _index(self, kind: str, what: str, sae_id: int | None = None, key: str | None = None):
        files = self._files(kind, sae_id=sae_id, key=key)
        if not files:
            raise NoIndexError(what)
        path = files[0]
        if path not in self._indexes:
            self._indexes[path] = _faiss().read(path, str(path.relative_to(self.root)))
        return self._indexes[path]

    def _neighbors(self, scores: np.ndarray, ids: np.ndarray, sae: SaeInfo | None, skip: tuple[int, int] | None,
                   k: int) -> list[Neighbor]:
        by_id = {s.id: s for s in self.saes()}
        found = []
        for score, packed in zip(scores, ids):
            sae_id, latent = (sae.id, int(packed)) if sae else map(int, _faiss().unpack_id(packed))
            if (sae_id, latent) == skip or sae_id not in by_id:
                continue
            s = by_id[sae_id]
            found.append(Neighbor(concept_id(s.block, s.t, s.branch, latent, s.variant), float(score), sae_id, latent,
                                  s.block, s.t, s.branch, s.variant))
        return found[:k]

    def nearest(self, concept: str, k: int = 10, across_t: bool = True, t: float | None = None) -> list[Neighbor]:
        """Concepts with the most similar decoder direction (cosine): across every t of the block, only
        within the concept's own SAE (across_t=False), or within the SAE at one other `t` (always among the SAEs of
        the concept's branch and variant)."""
        _at_least("k", k, 1)
        sae, latent = self.resolve(concept)
        own = self._index("faiss_sae", f"SAE {sae.name}", sae_id=sae.id)
        vector = own.reconstruct(latent)
        if t is not None:
            target = self.select_saes(sae.block, t, sae.branch, sae.variant)[0]
            found = _faiss().search(self._index("faiss_sae", f"SAE {target.name}", target.id), vector, k + 1)
            return self._neighbors(*found, target, (sae.id, latent), k)
        if not across_t:
            return self._neighbors(*_faiss().search(own, vector, k + 1), sae, (sae.id, latent), k)
        key = block_key(sae.block, sae.branch, sae.variant)
        found = _faiss().search(self._index("faiss_block", f"block {key}", key=key), vector, k + 1)
        return self._neighbors(*found, None, (sae.id, latent), k)

    def lineage(self, concept: str, k: int = 10, t: float | None = None) -> list[Neighbor]:
        """Concepts the concept descends from or into over denoising (the `lineage` links of `atlas evolve`, followed
        across any number of timesteps), scored by the weakest link of the best path: all of the block's other
        timesteps, or only `t`."""
        _at_least("k", k, 1)
        sae, latent = self.resolve(concept)
        if t is not None:
            self.select_saes(sae.block, t, sae.branch, sae.variant)
        rows = self.query(FOLLOW_LINEAGE_SQL, {"sae": sae.id, "latent": latent, "k": k,
                                               "t": None if t is None else float(t)}).to_pylist()
        if not rows and not self.query("SELECT count(*) AS n FROM snapshot.lineage")["n"][0].as_py():
            raise NotFoundError(f"{self.root} has no lineage links yet: `atlas evolve` measures them")
        return [Neighbor(**row) for row in rows]

    def search_vector(self, vector: np.ndarray, block: str, t: float | None = None, k: int = 10,
                      branch: str = DEFAULT_BRANCH, variant: str | None = None,
                      sae_k: int | None = None) -> list[Neighbor]:
        """Concepts whose decoder direction is closest to `vector` (e.g. a label prompt's activation), among the
        primary SAEs of the block unless `variant` or `sae_k` picks others."""
        _at_least("k", k, 1)
        saes = self.select_saes(block, t, branch, one_variant(variant, sae_k), sae_k)
        if t is not None:
            sae = saes[0]
            return self._neighbors(*_faiss().search(self._index("faiss_sae", f"SAE {sae.name}", sae.id), vector, k),
                                   sae, None, k)
        key = block_key(block, branch, saes[0].variant)
        return self._neighbors(*_faiss().search(self._index("faiss_block", f"block {key}", key=key), vector, k),
                               None, None, k)


def _concept_info(sae: SaeInfo, row: dict) -> ConceptInfo:
    fields = ConceptInfo.__dataclass_fields__
    known = {k: v for k, v in row.items() if k in fields and k not in ("block", "t", "branch", "variant", "sae_id")}
    return ConceptInfo(**known | {"concept_id": concept_id(sae.block, sae.t, sae.branch, row["latent"], sae.variant),
                                  "sae_id": sae.id, "block": sae.block, "t": sae.t, "branch": sae.branch,
                                  "variant": sae.variant})


def one_variant(variant: str | None, sae_k: int | None) -> str | None:
    """The variant filter of a read that expects one SAE per (block, t, branch): the one asked for, else the
    primary, unless `sae_k` picks the SAE of a k (whatever its variant is called)."""
    return DEFAULT_VARIANT if variant is None and sae_k is None else variant


ATLAS_ENTRIES = frozenset({"catalog.duckdb", "catalog.duckdb.wal", "catalog.duckdb.damaged",
                           "catalog.duckdb.wal.damaged", "writers.lock", snapshot.TABLES_DIR, "codes", "index", "masks",
                           "activations", "saes", "annotations", "dictionary", "report", "edits"})
"""What an atlas directory holds: the store's files (with a damaged catalog `atlas check --repair` set aside), the
pipeline's activations, SAEs, annotations, dictionary files (attribute links, guesses), report and edits."""


def refuse_foreign(root: Path) -> None:
    """Refuse to build into a directory that holds anything else (hidden files and temporary files aside)."""
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"--atlas {root} is a file, not a directory; choose another --atlas")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in ATLAS_ENTRIES and not p.name.startswith(".")
                     and not p.name.endswith(".tmp")) if root.is_dir() else []
    if foreign:
        raise InvalidInputError(f"{root} holds {len(foreign)} entries no atlas has (e.g. {foreign[0]}); give "
                                "--atlas an empty or new directory, or pass --any-directory to build there anyway")


def _refuse_newer(root: Path) -> None:
    generation = snapshot.current(root) if root.is_dir() else None
    if generation is not None:
        schema = snapshot.meta(generation).get("schema")
        if schema not in revisions.revisions():
            raise SchemaTooNewError(root, schema, revisions.head())


def _existing(path: str | Path | None) -> Path:
    root = Path(path) if path is not None else default_path()
    if not root.is_dir() or snapshot.current(root) is None:
        raise AtlasNotFoundError(root)
    _refuse_newer(root)
    return root


def _writable_catalog(root: Path, threads: int | None) -> Catalog:
    """The catalog, upgraded from an older schema and with an unpublished commit published; a catalog stamped by
    a newer version is refused."""
    from atlas.store.catalog import CATALOG_FILE, Catalog

    if not (root / CATALOG_FILE).exists():
        raise AtlasNotFoundError(root)
    catalog = Catalog(root, threads=threads)
    revision = catalog.revision()
    if revision not in revisions.revisions():
        raise SchemaTooNewError(root, revision, revisions.head())
    if snapshot.meta(snapshot.current(root))["schema"] != revisions.head() or revision != revisions.head():
        catalog.upgrade()
    catalog.catch_up()
    catalog.recover()
    return catalog


def _at_least(name: str, value: object, low: int) -> None:
    """A count argument of the API refused in one line unless it is a whole number >= `low`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidInputError(f"bad {name} {value!r}: give a whole number of at least {low}")


def open_atlas(path: str | Path | None = None, threads: int | None = None, memory_limit: str | None = None
               ) -> Atlas:
    """Open an atlas for reading (default: `default_path()`); see open_writer to write."""
    return Atlas(_existing(path), threads=threads, memory_limit=memory_limit)


def open_writer(path: str | Path | None = None, threads: int | None = None) -> Writer:
    """Open an atlas for writing (default: `default_path()`), upgrading an older schema first; the writer owns its
    reader (`writer.atlas`) and closes it with itself."""
    from atlas.store.writer import Writer

    root = _existing(path)
    catalog = _writable_catalog(root, threads)
    try:
        reader = Atlas(root, threads=threads)
    except CorruptFileError as err:
        if not err.path.startswith(snapshot.TABLES_DIR + "/"):
            raise
        catalog.republish()  # the catalog is the source of truth of the snapshot
        reader = Atlas(root, threads=threads)
    return Writer(reader, catalog, owns_reader=True)


def upgrade_atlas(path: str | Path) -> str:
    """Bring an atlas to the newest schema; returns the revision."""
    open_writer(path).close()
    return revisions.head()
