"""Typed read methods of an atlas (mixed into `Atlas`): concepts, top images, maps, SQL, neighbours.

Hot paths read the one Parquet file that holds the answer (the by_latent bucket of a concept, the
by_image bucket of an image) through atlas.store.lookup instead of the all-files `codes` view; FAISS
indexes are loaded once per file and kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas.store import codes, snapshot
from atlas.store import index as faiss_index
from atlas.store.errors import (
    CorruptFileError,
    InvalidInputError,
    NoIndexError,
    NoLabelsError,
    UnknownLabelError,
    UnknownSaeError,
)
from atlas.store.ids import DEFAULT_BRANCH, ConceptRef, concept_id, concept_prefix, parse_concept_id
from atlas.store.lookup import SortedFiles
from atlas.store.views import QueryResult, SaeInfo, Views

_TOL = 1e-9

LINK_SCORE = "mean_iou DESC NULLS LAST, hit_rate DESC NULLS LAST, support DESC NULLS LAST"
"""How well a concept predicts a label, best first: the order of links everywhere, before a tie-breaking id."""
LINK_RANK = f"{LINK_SCORE}, sae_id, latent"
"""Links ranked down to a unique concept, so equal IoUs always pick the same one."""
BEST_CONCEPT_SQL = f"first(concept_id ORDER BY {LINK_RANK})"
"""A label's best concept, as an aggregate over `concept_labels` rows grouped by label."""


@dataclass(frozen=True)
class ConceptInfo:
    """One concept; the label fields are set when it was found through a label."""

    concept_id: str
    sae_id: int
    block: str
    t: float
    branch: str
    latent: int
    frequency: float | None = None
    mean_activation: float | None = None
    decoder_norm: float | None = None
    best_label: str | None = None
    name: str | None = None
    note: str | None = None
    label: str | None = None
    mean_iou: float | None = None
    hit_rate: float | None = None
    precision: float | None = None
    recall: float | None = None
    support: int | None = None


@dataclass(frozen=True)
class ImageHit:
    """An image where a concept fires: its largest value, at which cell, and on how many cells."""

    image_id: int
    activation: float
    n_positions: int
    row: int
    col: int
    path: str | None
    prompt: str | None


@dataclass(frozen=True)
class Neighbor:
    concept_id: str
    score: float
    sae_id: int
    latent: int
    block: str
    t: float
    branch: str


class Reads:
    root: Path
    _views: Views
    _lookup: SortedFiles
    _indexes: dict

    def saes(self) -> list[SaeInfo]:
        self._views.refresh()
        return list(self._views.saes)

    def labels(self) -> list[str]:
        return self.query("SELECT name FROM labels ORDER BY name").column("name").to_pylist()

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

    def sql(self, query: str, timeout: float = 5.0, max_rows: int = 1000) -> QueryResult:
        """User SQL (`atlas sql`, the web /sql page): one read-only SELECT over the atlas views, with a time
        limit and a row cap (see atlas.store.views for what is allowed)."""
        return self._views.sql(query, timeout=timeout, max_rows=max_rows)

    def stage_done(self, name: str) -> bool:
        return self.query("SELECT count(*) AS n FROM stages WHERE name = ?", [name])["n"][0].as_py() > 0

    # -- resolving names -------------------------------------------------------------------------------------

    def _check_filters(self, block: str | None, t: float | None, branch: str | None) -> list[SaeInfo]:
        """The SAEs matching the filters; an unknown block, t or branch lists the valid ones."""
        saes = self.saes()
        if block is not None and block not in {s.block for s in saes}:
            raise UnknownSaeError("block", block, sorted({s.block for s in saes}))
        if branch is not None and branch not in {s.branch for s in saes}:
            raise UnknownSaeError("branch", branch, sorted({s.branch for s in saes}))
        chosen = [s for s in saes if (block is None or s.block == block) and (branch is None or s.branch == branch)]
        if t is not None:
            valid = sorted({s.t for s in chosen}, reverse=True)
            chosen = [s for s in chosen if abs(s.t - float(t)) < _TOL]
            if not chosen:
                raise UnknownSaeError("t", float(t), valid)
        return chosen

    def _resolve(self, concept: str | ConceptRef) -> tuple[SaeInfo, int]:
        ref = concept if isinstance(concept, ConceptRef) else parse_concept_id(concept)
        sae = self._check_filters(ref.block, ref.t, ref.branch)[0]
        if ref.latent >= sae.n_latents:
            raise InvalidInputError(f"{ref} does not exist: the SAE {ref.block}/{ref.t!r} has latents "
                                    f"0..{sae.n_latents - 1}")
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
                 branch: str | None = DEFAULT_BRANCH, limit: int = 50) -> list[ConceptInfo]:
        """Concepts ranked by frequency, or with `label` by how well they predict it (IoU, hit rate, support)."""
        saes = {s.id: s for s in self._check_filters(block, t, branch)}
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
        sae, latent = self._resolve(concept)
        rows = self.query("SELECT * FROM snapshot.concepts WHERE sae_id = ? AND latent = ?", [sae.id, latent])
        return _concept_info(sae, rows.to_pylist()[0] if rows.num_rows else {"latent": latent})

    # -- codes ---------------------------------------------------------------------------------------------------

    def top_images(self, concept: str, n: int = 20) -> list[ImageHit]:
        """Images where the concept fires most strongly (largest value; ties: more cells, lower id)."""
        sae, latent = self._resolve(concept)
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
        return [ImageHit(int(i), float(v), int(c), int(x // 65536), int(x % 65536), info.get(i, {}).get("path"),
                         info.get(i, {}).get("prompt"))
                for i, v, c, x in zip(ids, values, counts[best], cell[chosen])]

    def image_codes(self, image_id: int, block: str | None = None, t: float | None = None,
                    branch: str | None = None) -> pa.Table:
        """Every stored code of one image (optionally of some SAEs) with the `codes` view's columns, ordered
        by sae_id, row, col, latent (the file's order). The SAE columns are joined here, not in SQL: that
        halves the time of this hot lookup."""
        saes = {s.id: s for s in self._check_filters(block, t, branch)}
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
        prefix = pc.take(pa.array([concept_prefix(s.block, s.t, s.branch) for s in info]), which)
        return pa.table({
            "image_id": pa.array(np.full(raw.num_rows, int(image_id), np.int32)),
            "sae_id": raw["sae_id"].cast(pa.int32()),
            "block": pc.take(pa.array([s.block for s in info]), which),
            "t": pc.take(pa.array([s.t for s in info], pa.float64()), which),
            "branch": pc.take(pa.array([s.branch for s in info]), which),
            "row": raw["row"], "col": raw["col"], "latent": raw["latent"],
            "value": pa.array(codes.dequantize(raw["q"].to_numpy(), qbase)),
            "concept_id": pc.binary_join_element_wise(prefix, pc.cast(raw["latent"], pa.string()), "/"),
        })

    def activation_map(self, image_id: int, concept: str) -> np.ndarray:
        """The concept's value on the SAE's grid (grid_h, grid_w) for one image; zeros where it is silent."""
        sae, latent = self._resolve(concept)
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
            self._indexes[path] = faiss_index.read(path, str(path.relative_to(self.root)))
        return self._indexes[path]

    def _neighbors(self, scores: np.ndarray, ids: np.ndarray, sae: SaeInfo | None, skip: tuple[int, int] | None,
                   k: int) -> list[Neighbor]:
        by_id = {s.id: s for s in self.saes()}
        found = []
        for score, packed in zip(scores, ids):
            sae_id, latent = (sae.id, int(packed)) if sae else map(int, faiss_index.unpack_id(packed))
            if (sae_id, latent) == skip or sae_id not in by_id:
                continue
            s = by_id[sae_id]
            found.append(Neighbor(concept_id(s.block, s.t, s.branch, latent), float(score), sae_id, latent,
                                  s.block, s.t, s.branch))
        return found[:k]

    def nearest(self, concept: str, k: int = 10, across_t: bool = True, t: float | None = None) -> list[Neighbor]:
        """Concepts with the most similar decoder direction (cosine): across every t of the block, only
        within the concept's own SAE (across_t=False), or within the SAE at one other `t`."""
        sae, latent = self._resolve(concept)
        own = self._index("faiss_sae", f"SAE {sae.block}/{sae.t!r}/{sae.branch}", sae_id=sae.id)
        vector = own.reconstruct(latent)
        if t is not None:
            target = self._check_filters(sae.block, t, sae.branch)[0]
            found = faiss_index.search(self._index("faiss_sae", f"SAE {target.block}/{target.t!r}", target.id),
                                       vector, k + 1)
            return self._neighbors(*found, target, (sae.id, latent), k)
        if not across_t:
            return self._neighbors(*faiss_index.search(own, vector, k + 1), sae, (sae.id, latent), k)
        key = f"{sae.block}/{sae.branch}"
        found = faiss_index.search(self._index("faiss_block", f"block {key}", key=key), vector, k + 1)
        return self._neighbors(*found, None, (sae.id, latent), k)

    def search_vector(self, vector: np.ndarray, block: str, t: float | None = None, k: int = 10,
                      branch: str = DEFAULT_BRANCH) -> list[Neighbor]:
        """Concepts whose decoder direction is closest to `vector` (e.g. a label prompt's activation)."""
        saes = self._check_filters(block, t, branch)
        if t is not None:
            sae = saes[0]
            return self._neighbors(*faiss_index.search(self._index("faiss_sae", f"SAE {block}/{sae.t!r}", sae.id),
                                                       vector, k), sae, None, k)
        key = f"{block}/{branch}"
        return self._neighbors(*faiss_index.search(self._index("faiss_block", f"block {key}", key=key), vector, k),
                               None, None, k)


def _concept_info(sae: SaeInfo, row: dict) -> ConceptInfo:
    fields = ConceptInfo.__dataclass_fields__
    known = {k: v for k, v in row.items() if k in fields and k not in ("block", "t", "branch", "sae_id")}
    return ConceptInfo(**known | {"concept_id": concept_id(sae.block, sae.t, sae.branch, row["latent"]),
                                  "sae_id": sae.id, "block": sae.block, "t": sae.t, "branch": sae.branch})
