"""Typed read methods of an atlas (mixed into `Atlas`): concepts, top images, maps, SQL, neighbours.

Hot paths read the one Parquet file that holds the answer (the by_latent bucket of a concept, the
by_image bucket of an image) instead of going through the all-files `codes` view; FAISS indexes are
loaded once per file and kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas import index as faiss_index
from atlas.store import codes
from atlas.store.errors import (
    InvalidInputError,
    NoIndexError,
    NoLabelsError,
    UnknownLabelError,
    UnknownSaeError,
)
from atlas.store.ids import DEFAULT_BRANCH, ConceptRef, concept_id, concept_prefix, parse_concept_id
from atlas.store.views import QueryResult, SaeInfo, Views, parquet_scan

_TOL = 1e-9


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
    _indexes: dict

    def saes(self) -> list[SaeInfo]:
        self._views.refresh()
        return list(self._views.saes)

    def labels(self) -> list[str]:
        return self._views.query("SELECT name FROM labels ORDER BY name").column("name").to_pylist()

    def sql(self, query: str, timeout: float = 5.0, max_rows: int = 1000) -> QueryResult:
        """Read-only SQL over the atlas views (see atlas.store.views for what is allowed)."""
        return self._views.sql(query, timeout=timeout, max_rows=max_rows)

    def stage_done(self, name: str) -> bool:
        return self._views.query("SELECT count(*) AS n FROM stages WHERE name = ?", [name])["n"][0].as_py() > 0

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

    def _sae_of(self, ref: ConceptRef) -> SaeInfo:
        return self._check_filters(ref.block, ref.t, ref.branch)[0]

    def _resolve(self, concept: str | ConceptRef) -> tuple[SaeInfo, int]:
        ref = concept if isinstance(concept, ConceptRef) else parse_concept_id(concept)
        sae = self._sae_of(ref)
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

    # -- concepts ----------------------------------------------------------------------------------------------

    def concepts(self, label: str | None = None, t: float | None = None, block: str | None = None,
                 branch: str | None = DEFAULT_BRANCH, limit: int = 50) -> list[ConceptInfo]:
        """Concepts ranked by frequency, or with `label` by how well they predict it (IoU, hit rate, support)."""
        sae_ids = [s.id for s in self._check_filters(block, t, branch)]
        if not sae_ids:
            return []
        in_saes = f"c.sae_id IN ({', '.join(map(str, sae_ids))})"
        if label is None:
            table = self._views.query(
                f"SELECT * FROM concepts c WHERE {in_saes} ORDER BY frequency DESC NULLS LAST, concept_id LIMIT ?",
                [int(limit)])
        else:
            if not self._views.linked_labels:
                raise NoLabelsError()
            if label not in self._views.linked_labels:
                raise UnknownLabelError(label, self._views.linked_labels)
            table = self._views.query(
                "SELECT c.concept_id, c.sae_id, c.block, c.t, c.branch, c.latent, k.frequency, k.mean_activation, "
                "k.decoder_norm, k.best_label, k.name, k.note, c.label, c.mean_iou, c.hit_rate, c.precision, "
                "c.recall, c.support FROM concept_labels c LEFT JOIN concepts k USING (sae_id, latent) "
                f"WHERE c.label = ? AND {in_saes} ORDER BY c.mean_iou DESC NULLS LAST, c.hit_rate DESC NULLS LAST, "
                "c.support DESC NULLS LAST, c.concept_id LIMIT ?", [label, int(limit)])
        fields = ConceptInfo.__dataclass_fields__
        return [ConceptInfo(**{k: v for k, v in row.items() if k in fields}) for row in table.to_pylist()]

    def concept(self, concept: str) -> ConceptInfo:
        """One concept by id (statistics empty until add_concepts)."""
        sae, latent = self._resolve(concept)
        rows = self._views.query("SELECT * FROM concepts WHERE sae_id = ? AND latent = ?", [sae.id, latent])
        if rows.num_rows:
            fields = ConceptInfo.__dataclass_fields__
            return ConceptInfo(**{k: v for k, v in rows.to_pylist()[0].items() if k in fields})
        return ConceptInfo(concept_id(sae.block, sae.t, sae.branch, latent), sae.id, sae.block, sae.t, sae.branch,
                           latent)

    # -- codes ---------------------------------------------------------------------------------------------------

    def top_images(self, concept: str, n: int = 20) -> list[ImageHit]:
        """Images where the concept fires most strongly (largest value; ties: more cells, lower id)."""
        sae, latent = self._resolve(concept)
        files = self._files(codes.BY_LATENT, sae.id, latent // codes.LATENTS_PER_BUCKET)
        if not files:
            return []
        table = self._views.query(
            "WITH top AS (SELECT image_id, max(q) AS q, count(*) AS n_positions, "
            "arg_max(row::INTEGER * 65536 + col, q) AS cell "
            f"FROM {parquet_scan(files)} WHERE latent = ? GROUP BY image_id "
            "ORDER BY q DESC, n_positions DESC, image_id LIMIT ?) "
            f"SELECT top.image_id, {codes.value_sql('top.q', str(sae.value_qbase))} AS activation, "
            "top.n_positions, top.cell // 65536 AS row, top.cell % 65536 AS col, i.path, i.prompt "
            "FROM top LEFT JOIN images i ON i.id = top.image_id "
            "ORDER BY top.q DESC, top.n_positions DESC, top.image_id", [latent, int(n)])
        return [ImageHit(**row) for row in table.to_pylist()]

    def image_codes(self, image_id: int, block: str | None = None, t: float | None = None,
                    branch: str | None = None) -> pa.Table:
        """Every stored code of one image (optionally of some SAEs) with the `codes` view's columns, ordered
        by sae_id, row, col, latent (the file's order). The SAE columns are joined here, not in SQL: that
        halves the time of this hot lookup."""
        saes = {s.id: s for s in self._check_filters(block, t, branch)}
        files = self._files(codes.BY_IMAGE, bucket=int(image_id) // codes.IMAGES_PER_BUCKET)
        if not files or not saes:
            return self._views.query("SELECT * FROM codes_by_image WHERE false")
        raw = self._views.query(f"SELECT sae_id, row, col, latent, q FROM {parquet_scan(files)} WHERE image_id = ? "
                                f"AND sae_id IN ({', '.join(map(str, saes))})", [int(image_id)])
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
        if self._views.query("SELECT count(*) AS n FROM images WHERE id = ?", [int(image_id)])["n"][0].as_py() == 0:
            raise InvalidInputError(f"unknown image {image_id}: see `atlas sql \"SELECT id, prompt FROM images\"`")
        if not sae.grid_h or not sae.grid_w:
            raise InvalidInputError(f"the SAE of {concept} has no codes yet (no grid known): run `atlas encode`")
        out = np.zeros((sae.grid_h, sae.grid_w), np.float32)
        files = self._files(codes.BY_IMAGE, bucket=int(image_id) // codes.IMAGES_PER_BUCKET)
        if files:
            cells = self._views.query(f"SELECT row, col, q FROM {parquet_scan(files)} "
                                      "WHERE image_id = ? AND sae_id = ? AND latent = ?",
                                      [int(image_id), sae.id, latent])
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
