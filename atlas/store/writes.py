"""Write methods of an atlas (mixed into `Atlas`): every one idempotent, atomic and checked first.

Inputs are validated before anything touches the disk; catalog rows change in one transaction that
publishes a snapshot when it commits (atlas.store.catalog); files are written under a temporary name
and renamed before the catalog lists them. Adding the same prompt, image, label or SAE again returns
the existing id; writing the codes of the same images again replaces them.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from PIL import Image as PILImage
from sqlalchemy import select

from atlas.files import atomic_write, file_lock
from atlas.store import codes, snapshot
from atlas.store import index as faiss_index
from atlas.store.catalog import Catalog, Transaction
from atlas.store.errors import InvalidInputError, ReadOnlyAtlasError
from atlas.store.ids import concept_id, parse_concept_id
from atlas.store.reads import LINK_SCORE
from atlas.store.schema import Concept, File, Intervention, Model, Sae, Stage
from atlas.store.views import SaeInfo, Views

CONCEPT_STATS = ("frequency", "mean_activation", "decoder_norm")


class Writes:
    root: Path
    readonly: bool
    threads: int | None
    _catalog: Catalog
    _views: Views
    _added_sae: tuple[Path | None, SaeInfo | None] = (None, None)  # with the generation that published it

    def _writable(self, what: str) -> Catalog:
        if self.readonly:
            raise ReadOnlyAtlasError(what)
        return self._catalog

    def add_model(self, name: str, path: str | None = None, spec: dict | None = None) -> int:
        with self._writable("add a model").write("models") as tx:
            model = tx.session.scalars(select(Model).where(Model.name == name)).first()
            if model is None:
                model = Model(id=tx.next_id("models"), name=name)
                tx.session.add(model)
            model.path, model.spec = path, dict(spec or {})
            tx.session.flush()
            return model.id

    def add_prompts(self, prompts: list[tuple[str, str]]) -> list[int]:
        """Ids of (text, split) pairs in order; a text already present keeps its id and split."""
        texts = [str(text) for text, _ in prompts]
        splits = {str(text): str(split) for text, split in reversed(prompts)}
        with self._writable("add prompts").write("prompts") as tx:
            ids = self._existing(tx, "prompts", "text", texts)
            new = [t for t in dict.fromkeys(texts) if t not in ids]
            start = tx.next_id("prompts")
            ids.update({t: start + i for i, t in enumerate(new)})
            tx.insert_arrow("prompts", pa.table({"id": pa.array([ids[t] for t in new], pa.int32()),
                                                 "text": pa.array(new, pa.string()),
                                                 "split": pa.array([splits[t] for t in new], pa.string())}))
            return [ids[t] for t in texts]

    @staticmethod
    def _existing(tx: Transaction, table: str, column: str, values: list) -> dict:
        tx.raw.register("_lookup", pa.table({"v": pa.array(list(set(values)), pa.string())}))
        try:
            return dict(tx.raw.execute(f"SELECT {column}, id FROM {table} WHERE {column} IN (SELECT v FROM _lookup)"
                                       ).fetchall())
        finally:
            tx.raw.unregister("_lookup")

    def add_images(self, records: list[dict]) -> list[int]:
        """Ids of images given as dicts (prompt_id, seed, guidance, steps, path); known ones keep their id."""
        try:
            table = pa.table({"prompt_id": pa.array([int(r["prompt_id"]) for r in records], pa.int32()),
                              "seed": pa.array([int(r["seed"]) for r in records], pa.int64()),
                              "guidance": pa.array([float(r["guidance"]) for r in records], pa.float64()),
                              "steps": pa.array([int(r["steps"]) for r in records], pa.int32()),
                              "path": pa.array([r.get("path") and str(r["path"]) for r in records], pa.string()),
                              "ord": pa.array(range(len(records)), pa.int32())})
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInputError(f"add_images: each record needs prompt_id, seed, guidance, steps ({err})") from None
        key = "i.prompt_id = n.prompt_id AND i.seed = n.seed AND i.guidance = n.guidance AND i.steps = n.steps"
        with self._writable("add images").write("images") as tx:
            tx.raw.register("_new", table)
            try:
                missing = tx.query("SELECT DISTINCT prompt_id FROM _new "
                                   "WHERE prompt_id NOT IN (SELECT id FROM prompts)")
                if missing:
                    raise InvalidInputError(f"add_images: unknown prompt ids {sorted(m[0] for m in missing)[:5]}; "
                                            "add the prompts first (add_prompts)")
                start = tx.next_id("images")
                tx.raw.execute(
                    "CREATE TEMP TABLE _ids AS SELECT n.ord, n.path, i.id AS old_id, "
                    "min(n.ord) OVER (PARTITION BY n.prompt_id, n.seed, n.guidance, n.steps) AS first "
                    f"FROM _new n LEFT JOIN images i ON {key}")
                tx.raw.execute(
                    "INSERT INTO images (id, prompt_id, seed, guidance, steps, path) "
                    f"SELECT {start} + (dense_rank() OVER (ORDER BY n.ord)) - 1, n.prompt_id, n.seed, "
                    "n.guidance, n.steps, n.path FROM _new n JOIN _ids d ON d.ord = n.ord "
                    "WHERE d.old_id IS NULL AND d.first = n.ord")
                tx.raw.execute(f"UPDATE images i SET path = n.path FROM _new n WHERE {key} AND n.path IS NOT NULL "
                               "AND i.path IS DISTINCT FROM n.path")
                ids = tx.query(f"SELECT n.ord, i.id FROM _new n JOIN images i ON {key} ORDER BY n.ord")
            finally:
                tx.raw.unregister("_new")
                tx.raw.execute("DROP TABLE IF EXISTS _ids")
            return [int(i) for _, i in ids]

    def add_sae(self, block: str, t: float, branch: str, k: int, n_latents: int, d_in: int, metrics: dict | None = None,
                path: str | None = None, grid: tuple[int, int] | None = None, decoder: np.ndarray | None = None,
                concepts: Mapping[str, np.ndarray] | None = None) -> int:
        """The id of the SAE of (block, t, branch), added or updated; `decoder` (n_latents, d_in) also indexes it
        and `concepts` (frequency, mean_activation, decoder_norm: what add_concepts takes) sets its per-latent
        statistics. All of it commits in one transaction, so readers see one new snapshot, not three."""
        if not block or "/" in block or not branch or "/" in branch:
            raise InvalidInputError(f"block {block!r} and branch {branch!r} must be non-empty and free of '/'")
        if not math.isfinite(float(t)) or not 0 < int(n_latents) <= 65536 or int(k) < 1 or int(d_in) < 1:
            raise InvalidInputError(f"add_sae: need finite t, 1 <= n_latents <= 65536, k >= 1, d_in >= 1 "
                                    f"(got t={t}, n_latents={n_latents}, k={k}, d_in={d_in})")
        if decoder is not None and np.shape(decoder) != (int(n_latents), int(d_in)):
            raise InvalidInputError(f"decoder has shape {np.shape(decoder)}, expected ({n_latents}, {d_in})")
        stats = _concept_stats("add_sae", int(n_latents), concepts) if concepts is not None else None
        changed = ["saes", *(["files"] if decoder is not None else []), *(["concepts"] if stats is not None else [])]
        with self._writable("add an SAE").write(*changed) as tx:
            sae = tx.session.scalars(select(Sae).where(Sae.block == block, Sae.t == float(t),
                                                       Sae.branch == branch)).first()
            if sae is None:
                sae = Sae(id=tx.next_id("saes"), block=block, t=float(t), branch=branch, n_codes=0)
                tx.session.add(sae)
            sae.k, sae.n_latents, sae.d_in, sae.metrics, sae.path = int(k), int(n_latents), int(d_in), \
                dict(metrics or {}), path
            if grid is not None:
                sae.grid_h, sae.grid_w = int(grid[0]), int(grid[1])
            tx.session.flush()
            info = SaeInfo(**{name: getattr(sae, name) for name in SaeInfo.__dataclass_fields__})
            if decoder is not None:
                self._write_index(tx, info, decoder)
            if stats is not None:
                _upsert_concepts(tx, info.id, stats)
        self._added_sae = (tx.published, info)
        return info.id

    def _sae_by_id(self, sae_id: int) -> SaeInfo:
        """The SAE's row. The one this writer just added comes without reloading the reader views, as long as no
        later generation could have changed it (encode's write_codes right after add_sae)."""
        published, added = self._added_sae
        if added is not None and added.id == int(sae_id) and snapshot.current(self.root) == published:
            return added
        saes = self.saes()
        for sae in saes:
            if sae.id == int(sae_id):
                return sae
        raise InvalidInputError(f"unknown SAE id {sae_id}; this atlas has SAE ids {[s.id for s in saes]}")

    def add_concepts(self, sae_id: int, frequency: np.ndarray, mean_activation: np.ndarray,
                     decoder_norm: np.ndarray) -> None:
        """Per-latent statistics of one SAE (arrays of length n_latents); names and notes are kept."""
        sae = self._sae_by_id(sae_id)
        stats = _concept_stats("add_concepts", sae.n_latents, {"frequency": frequency, "mean_activation":
                                                               mean_activation, "decoder_norm": decoder_norm})
        with self._writable("add concepts").write("concepts") as tx:
            _upsert_concepts(tx, sae.id, stats)

    # -- codes ---------------------------------------------------------------------------------------------------

    def write_codes(self, sae_id: int, image_id: np.ndarray, row: np.ndarray, col: np.ndarray, latent: np.ndarray,
                    value: np.ndarray) -> int:
        """Stage codes of some images for one SAE; each call must hold all codes of its images for this SAE.
        Visible after `finalize_codes()`. Returns the number of rows staged (values <= 0 are dropped)."""
        self._writable("write codes")
        sae = self._sae_by_id(sae_id)
        if sae.grid_h and len(row) and (np.max(row) >= sae.grid_h or np.max(col) >= sae.grid_w):
            raise InvalidInputError(f"write_codes: row/col outside the SAE's {sae.grid_h}x{sae.grid_w} grid")
        table = codes.prepare_part(sae.id, sae.n_latents, image_id, row, col, latent, value)
        if table is None:
            return 0
        with self._catalog.hold(), self._codes_lock(shared=True):
            codes.stage_part(self.root, sae.id, table)
        return table.num_rows

    def _codes_lock(self, shared: bool = False) -> AbstractContextManager[None]:
        """Staging writes share it; finalize_codes holds it alone (across processes)."""
        return file_lock(self.root / "codes" / ".lock", shared)

    def finalize_codes(self, sae_ids: list[int] | None = None, stage: str | None = None,
                       info: dict | None = None) -> dict[int, int]:
        """Merge staged codes into the final layout (see atlas.store.codes); returns rows per SAE compacted.
        Call it once after a run of write_codes: it re-sorts every image bucket the new codes touch. With `stage`,
        also mark that stage done (as mark_stage) in the same transaction: the codes and the mark commit together."""
        catalog = self._writable("finalize codes")
        with catalog.hold(), self._codes_lock():
            catalog.recover()  # a finalize killed before publishing: its files are listed once this publishes
            generations = sorted(p for p in (self.root / snapshot.TABLES_DIR).glob("g[0-9]*") if p.is_dir())
            codes.remove_orphans(self.root, set().union(*(snapshot.listed_files(g) for g in generations)))
            pending = {s: p for s, p in codes.pending_parts(self.root).items() if sae_ids is None or s in sae_ids}
            if not pending:
                if stage is not None:
                    self.mark_stage(stage, info)
                return {}
            saes = {s.id: s for s in self.saes()}
            by_latent = {s: self._files(codes.BY_LATENT, sae_id=s) for s in saes}
            buckets = set()
            temp = self.root / "codes" / ".tmp"
            con = duckdb.connect(":memory:", config={"temp_directory": str(temp),
                                                     **({"threads": self.threads} if self.threads else {})})
            try:
                done = {}
                for sae_id, parts in pending.items():
                    sae = saes[sae_id]
                    result = codes.compact(con, self.root, sae_id, parts, by_latent[sae_id], sae.value_qbase)
                    if by_latent[sae_id] and result.qbase != sae.value_qbase:
                        buckets |= {f["bucket"] for f in self._views.files if f["kind"] == codes.BY_IMAGE}
                    buckets |= result.image_buckets
                    by_latent[sae_id] = [self.root / f.path for f in result.files]
                    done[sae_id] = result
                by_image = codes.rebuild_by_image(con, self.root, by_latent, buckets)
            finally:
                con.close()
                shutil.rmtree(temp, ignore_errors=True)
            with catalog.write("files", "saes", *(["stages"] if stage is not None else [])) as tx:
                tx.query(f"DELETE FROM files WHERE kind = '{codes.BY_LATENT}' AND sae_id IN "
                         f"({', '.join(map(str, done))})")
                if buckets:
                    tx.query(f"DELETE FROM files WHERE kind = '{codes.BY_IMAGE}' AND bucket IN "
                             f"({', '.join(map(str, buckets))})")
                for f in [f for r in done.values() for f in r.files] + by_image:
                    tx.session.add(File(path=f.path, kind=f.kind, sae_id=f.sae_id, bucket=f.bucket, rows=f.rows,
                                        bytes=f.bytes))
                for sae_id, result in done.items():
                    sae = tx.session.get(Sae, sae_id)
                    sae.value_qbase, sae.n_codes = result.qbase, result.rows
                    if not sae.grid_h:
                        sae.grid_h, sae.grid_w = result.grid
                if stage is not None:
                    _merge_stage(tx, stage, info)
            for parts in pending.values():
                for part in parts:
                    part.unlink(missing_ok=True)
            return {sae_id: result.rows for sae_id, result in done.items()}

    # -- labels, objects, concept labels ----------------------------------------------------------------------

    def add_labels(self, names: list[str], source: str | None = None) -> list[int]:
        with self._writable("add labels").write("labels") as tx:
            return self._label_ids(tx, [str(n) for n in names], source)

    def _label_ids(self, tx: Transaction, names: list[str], source: str | None) -> list[int]:
        if any(not n.strip() for n in names):
            raise InvalidInputError("labels must be non-empty strings")
        ids = self._existing(tx, "labels", "name", names)
        new = [n for n in dict.fromkeys(names) if n not in ids]
        start = tx.next_id("labels")
        ids.update({n: start + i for i, n in enumerate(new)})
        tx.insert_arrow("labels", pa.table({"id": pa.array([ids[n] for n in new], pa.int32()),
                                            "name": pa.array(new, pa.string()),
                                            "source": pa.array([source] * len(new), pa.string())}))
        return [ids[n] for n in names]

    def add_objects(self, objects: list[dict], source: str = "") -> list[int]:
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
        images = sorted({int(o["image_id"]) for o in objects})
        with self._writable("add objects").write("objects", "labels") as tx:
            known = {i for (i,) in tx.query(f"SELECT id FROM images WHERE id IN ({', '.join(map(str, images))})")} \
                if images else set()
            if set(images) - known:
                raise InvalidInputError(f"add_objects: unknown image ids {sorted(set(images) - known)[:5]}")
            labels = self._label_ids(tx, [str(o["label"]) for o in objects], source or None)
            old_masks = set()
            if images:
                where = f"image_id IN ({', '.join(map(str, images))}) AND source = ?"
                old_masks = {p for (p,) in tx.query(f"SELECT mask_path FROM objects WHERE {where}", [source]) if p}
                tx.query(f"DELETE FROM objects WHERE {where}", [source])
            start = tx.next_id("objects")
            rows = []
            for i, (o, label_id) in enumerate(zip(objects, labels)):
                object_id = start + i
                mask_path = o.get("mask_path")
                if o.get("mask") is not None:
                    mask_path = f"masks/{int(o['image_id'])}/{object_id}.png"
                    _write_mask(self.root / mask_path, np.asarray(o["mask"]))
                box = o.get("box") or (None,) * 4
                rows.append((object_id, int(o["image_id"]), label_id, o.get("score"), *box, mask_path, source))
            names = ["id", "image_id", "label_id", "score", "x0", "y0", "x1", "y1", "mask_path", "source"]
            types = [pa.int32(), pa.int32(), pa.int32()] + [pa.float64()] * 5 + [pa.string(), pa.string()]
            tx.insert_arrow("objects", pa.table({n: pa.array([r[i] for r in rows], ty)
                                                 for i, (n, ty) in enumerate(zip(names, types))}))
        for stale in old_masks - {r[8] for r in rows}:
            (self.root / stale).unlink(missing_ok=True)
        return [r[0] for r in rows]

    def set_concept_labels(self, rows: list[dict] | pa.Table, replace: bool = False) -> int:
        """Store how concepts predict labels: dicts (or an Arrow table) with `concept` (id) or sae_id + latent,
        `label`, and mean_iou, hit_rate (share of images with IoU > 0.5), precision, recall, support. With
        `replace`, earlier rows of the same SAEs go first. Also sets each concept's best_label (highest mean
        IoU). Other keys (e.g. `atlas.concepts.link`'s hits, passes) are ignored."""
        rows = rows.to_pylist() if isinstance(rows, pa.Table) else rows
        saes = {s.id: s for s in self.saes()}
        by_name = {(s.block, s.t, s.branch): s for s in saes.values()}
        resolved = []
        for r in rows:
            if "concept" in r:
                ref = parse_concept_id(r["concept"])
                sae = by_name.get((ref.block, ref.t, ref.branch)) or self._resolve(r["concept"])[0]
                latent = ref.latent
            else:
                sae, latent = saes.get(int(r["sae_id"])), int(r["latent"])
                if sae is None:
                    raise InvalidInputError(f"set_concept_labels: unknown sae_id {r['sae_id']}")
            if not 0 <= latent < sae.n_latents:
                raise InvalidInputError(f"set_concept_labels: latent {latent} outside 0..{sae.n_latents - 1}")
            resolved.append((sae.id, latent, str(r["label"])))
        stats = ["mean_iou", "hit_rate", "precision", "recall"]
        touched = sorted({s for s, _, _ in resolved})
        with self._writable("set concept labels").write("concept_labels", "labels", "concepts") as tx:
            label_ids = self._label_ids(tx, [label for _, _, label in resolved], None)
            table = pa.table({"sae_id": pa.array([s for s, _, _ in resolved], pa.int32()),
                              "latent": pa.array([latent for _, latent, _ in resolved], pa.int32()),
                              "label_id": pa.array(label_ids, pa.int32()),
                              **{k: pa.array([r.get(k) for r in rows], pa.float64()) for k in stats},
                              "support": pa.array([r.get("support") for r in rows], pa.int32())})
            if replace and touched:
                tx.query(f"DELETE FROM concept_labels WHERE sae_id IN ({', '.join(map(str, touched))})")
            tx.insert_arrow("concept_labels", table, "ON CONFLICT (sae_id, latent, label_id) DO UPDATE SET " +
                            ", ".join(f"{k} = excluded.{k}" for k in stats + ["support"]))
            if touched:
                in_saes = f"sae_id IN ({', '.join(map(str, touched))})"
                tx.query(f"UPDATE concepts SET best_label = NULL WHERE {in_saes}")
                tx.query("UPDATE concepts SET best_label = b.label FROM (SELECT c.sae_id, c.latent, "
                         f"first(l.name ORDER BY {LINK_SCORE}, l.name) AS label FROM concept_labels c JOIN labels l "
                         f"ON l.id = c.label_id WHERE c.{in_saes} GROUP BY ALL) b "
                         "WHERE concepts.sae_id = b.sae_id AND concepts.latent = b.latent")
        return len(resolved)

    # -- user edits and logs ----------------------------------------------------------------------------------

    def rename_concept(self, concept: str, name: str | None, note: str | None = None) -> None:
        """Set a concept's user-visible name (and note); None clears it."""
        sae, latent = self._resolve(concept)
        with self._writable("rename a concept").write("concepts") as tx:
            row = tx.session.get(Concept, (sae.id, latent))
            if row is None:
                row = Concept(sae_id=sae.id, latent=latent)
                tx.session.add(row)
            row.name, row.note = name, note

    def log_intervention(self, concept: str, kind: str, strength: float | None = None, params: dict | None = None,
                         output_path: str | None = None, note: str | None = None) -> int:
        sae, latent = self._resolve(concept)
        with self._writable("log an intervention").write("interventions") as tx:
            row = Intervention(id=tx.next_id("interventions"), concept_id=concept_id(sae.block, sae.t, sae.branch,
                                                                                      latent),
                               sae_id=sae.id, latent=latent, kind=kind, strength=strength, params=dict(params or {}),
                               output_path=output_path, note=note)
            tx.session.add(row)
            return row.id

    def mark_stage(self, name: str, info: dict | None = None) -> None:
        """Record that a pipeline stage finished (`stage_done(name)` is then True)."""
        with self._writable("mark a stage").write("stages") as tx:
            _merge_stage(tx, name, info)

    # -- FAISS ---------------------------------------------------------------------------------------------------

    def add_index(self, sae_id: int, decoder: np.ndarray) -> None:
        """Index one SAE's decoder rows (n_latents, d_in) and rebuild the index of its block and branch."""
        sae = self._sae_by_id(sae_id)
        if np.shape(decoder) != (sae.n_latents, sae.d_in):
            raise InvalidInputError(f"decoder has shape {np.shape(decoder)}, expected ({sae.n_latents}, {sae.d_in})")
        with self._writable("build an index").write("files") as tx:
            self._write_index(tx, sae, decoder)

    def _write_index(self, tx: Transaction, sae: SaeInfo, decoder: np.ndarray) -> None:
        """Write the SAE's index and its block's and list them, inside `tx`: under catalog.hold, since the files
        are orphans until the commit lists them. The block's other SAEs come from the catalog itself."""
        own = faiss_index.sae_index(decoder)
        token = codes.token()
        own_path = self.root / "index" / f"sae-{sae.id}-{token}.faiss"
        own_bytes = faiss_index.write(own, own_path)
        members = [(sae.id, own)]
        others = tx.query("SELECT f.sae_id, min(f.path) FROM files f JOIN saes s ON s.id = f.sae_id "
                          "WHERE f.kind = 'faiss_sae' AND s.block = ? AND s.branch = ? AND s.id <> ? GROUP BY f.sae_id",
                          [sae.block, sae.branch, sae.id])
        members += [(other, faiss_index.read(self.root / path, path)) for other, path in others]
        key = f"{sae.block}/{sae.branch}"
        block = faiss_index.block_index(sorted(members, key=lambda m: m[0]))
        block_path = self.root / "index" / f"block-{sae.block}-{sae.branch}-{token}.faiss"
        block_bytes = faiss_index.write(block, block_path)
        tx.query("DELETE FROM files WHERE (kind = 'faiss_sae' AND sae_id = ?) OR (kind = 'faiss_block' AND key = ?)",
                 [sae.id, key])
        tx.session.add(File(path=str(own_path.relative_to(self.root)), kind="faiss_sae", sae_id=sae.id,
                            rows=own.ntotal, bytes=own_bytes))
        tx.session.add(File(path=str(block_path.relative_to(self.root)), kind="faiss_block", key=key,
                            rows=block.ntotal, bytes=block_bytes))


def _concept_stats(what: str, n_latents: int, stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-latent statistics of CONCEPT_STATS as float64 arrays, checked before anything is written."""
    missing = [name for name in CONCEPT_STATS if name not in stats]
    if missing:
        raise InvalidInputError(f"{what}: concept statistics need {', '.join(CONCEPT_STATS)}; missing {missing}")
    for name in CONCEPT_STATS:
        if np.shape(stats[name]) != (n_latents,):
            raise InvalidInputError(f"{what}: {name} has shape {np.shape(stats[name])}, expected ({n_latents},)")
    return {name: np.asarray(stats[name], np.float64) for name in CONCEPT_STATS}


def _merge_stage(tx: Transaction, name: str, info: dict | None) -> None:
    tx.session.merge(Stage(name=name, info=dict(info or {})))


def _upsert_concepts(tx: Transaction, sae_id: int, stats: dict[str, np.ndarray]) -> None:
    """Set the statistics of every latent of an SAE; rows that exist keep their names and notes."""
    n_latents = len(stats[CONCEPT_STATS[0]])
    table = pa.table({"sae_id": pa.array(np.full(n_latents, sae_id, np.int32)),
                      "latent": pa.array(np.arange(n_latents, dtype=np.int32)),
                      **{name: pa.array(values) for name, values in stats.items()}})
    tx.insert_arrow("concepts", table, "ON CONFLICT (sae_id, latent) DO UPDATE SET " +
                    ", ".join(f"{name} = excluded.{name}" for name in CONCEPT_STATS))


def _write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: PILImage.fromarray((mask > 0).astype(np.uint8) * 255).save(tmp, format="PNG"))
