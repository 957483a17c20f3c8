"""A writer's catalog rows (`w.catalog`): models, prompts, images, SAEs, concept statistics, labels, concept
labels, names and notes, interventions and stages.

Each call is one transaction on catalog.duckdb that publishes a snapshot when it commits (atlas.store.catalog).
Adding the same model, prompt, image, label or SAE again returns the existing id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from sqlalchemy import select

from atlas.files import sha256
from atlas.store import snapshot
from atlas.store.catalog import Catalog, Transaction
from atlas.store.errors import InvalidInputError
from atlas.store.ids import DEFAULT_VARIANT, VARIANT_MARK, check_variant, concept_id, parse_concept_id
from atlas.store.reads import LINK_SCORE
from atlas.store.revisions import SAE_CHECKPOINT
from atlas.store.schema import Concept, Intervention, Model, Sae, Stage
from atlas.store.views import SaeInfo

if TYPE_CHECKING:
    from atlas.store.writer import Writer

CONCEPT_STATS = ("frequency", "mean_activation", "decoder_norm")


class CatalogWriter:
    def __init__(self, writer: Writer, catalog: Catalog) -> None:
        self._writer = writer
        self._db = catalog
        self._added_sae: tuple[Path | None, SaeInfo | None] = (None, None)  # with the generation that published it

    def add_model(self, name: str, path: str | None = None, spec: dict | None = None) -> int:
        with self._db.write("models") as tx:
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
        with self._db.write("prompts") as tx:
            ids = existing_ids(tx, "prompts", "text", texts)
            new = [t for t in dict.fromkeys(texts) if t not in ids]
            start = tx.next_id("prompts")
            ids.update({t: start + i for i, t in enumerate(new)})
            tx.insert_arrow("prompts", pa.table({"id": pa.array([ids[t] for t in new], pa.int32()),
                                                 "text": pa.array(new, pa.string()),
                                                 "split": pa.array([splits[t] for t in new], pa.string())}))
            return [ids[t] for t in texts]

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
        with self._db.write("images") as tx:
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
                    "SELECT ? + (dense_rank() OVER (ORDER BY n.ord)) - 1, n.prompt_id, n.seed, "
                    "n.guidance, n.steps, n.path FROM _new n JOIN _ids d ON d.ord = n.ord "
                    "WHERE d.old_id IS NULL AND d.first = n.ord", [start])
                tx.raw.execute(f"UPDATE images i SET path = n.path FROM _new n WHERE {key} AND n.path IS NOT NULL "
                               "AND i.path IS DISTINCT FROM n.path")
                ids = tx.query(f"SELECT n.ord, i.id FROM _new n JOIN images i ON {key} ORDER BY n.ord")
            finally:
                tx.raw.unregister("_new")
                tx.raw.execute("DROP TABLE IF EXISTS _ids")
            return [int(i) for _, i in ids]

    def add_sae(self, block: str, t: float, branch: str, k: int, n_latents: int, d_in: int, metrics: dict | None = None,
                path: str | None = None, grid: tuple[int, int] | None = None, decoder: np.ndarray | None = None,
                concepts: Mapping[str, np.ndarray] | None = None, variant: str = DEFAULT_VARIANT,
                checkpoint: Sequence[str | Path] = ()) -> int:
        """The id of the SAE of (block, t, branch, variant), added or updated (variant "" is the key's primary SAE,
        see atlas.store.ids); `decoder` (n_latents, d_in) also indexes it, `concepts` (frequency,
        mean_activation, decoder_norm: what add_concepts takes) sets its per-latent statistics and `checkpoint`
        (its files) lists them with their checksums for `atlas check`. All of it commits in one transaction, so
        readers see one new snapshot, not three."""
        if not block or not branch or any(c in block + branch for c in "/" + VARIANT_MARK):
            raise InvalidInputError(f"block {block!r} and branch {branch!r} must be non-empty and free of '/' and "
                                    f"{VARIANT_MARK!r}")
        check_variant(variant)
        if not math.isfinite(float(t)) or not 0 < int(n_latents) <= 65536 or int(k) < 1 or int(d_in) < 1:
            raise InvalidInputError(f"add_sae: need finite t, 1 <= n_latents <= 65536, k >= 1, d_in >= 1 "
                                    f"(got t={t}, n_latents={n_latents}, k={k}, d_in={d_in})")
        if decoder is not None and np.shape(decoder) != (int(n_latents), int(d_in)):
            raise InvalidInputError(f"decoder has shape {np.shape(decoder)}, expected ({n_latents}, {d_in})")
        stats = _concept_stats("add_sae", int(n_latents), concepts) if concepts is not None else None
        changed = ["saes", *(["files"] if decoder is not None or checkpoint else []),
                   *(["concepts"] if stats is not None else [])]
        with self._db.write(*changed) as tx:
            sae = tx.session.scalars(select(Sae).where(Sae.block == block, Sae.t == float(t), Sae.branch == branch,
                                                       Sae.variant == variant)).first()
            if sae is None:
                sae = Sae(id=tx.next_id("saes"), block=block, t=float(t), branch=branch, variant=variant, n_codes=0)
                tx.session.add(sae)
            sae.k, sae.n_latents, sae.d_in, sae.metrics, sae.path = int(k), int(n_latents), int(d_in), \
                dict(metrics or {}), path
            if grid is not None:
                sae.grid_h, sae.grid_w = int(grid[0]), int(grid[1])
            tx.session.flush()
            info = SaeInfo(**{name: getattr(sae, name) for name in SaeInfo.__dataclass_fields__})
            if decoder is not None:
                self._writer.index.add_in(tx, info, decoder)
            if stats is not None:
                _upsert_concepts(tx, info.id, stats)
            if checkpoint:
                tx.query("DELETE FROM files WHERE kind = ? AND sae_id = ?", [SAE_CHECKPOINT, info.id])
                list_files(tx, self._writer.atlas.root, checkpoint, SAE_CHECKPOINT, info.id)
        self._added_sae = (tx.published, info)
        return info.id

    def sae(self, sae_id: int) -> SaeInfo:
        """An SAE's row. The one this writer just added comes without reloading the reader's views, as long as no
        later generation could have changed it (encode's codes right after add_sae)."""
        published, added = self._added_sae
        if added is not None and added.id == int(sae_id) and snapshot.current(self._writer.root) == published:
            return added
        saes = self._writer.atlas.saes()
        for sae in saes:
            if sae.id == int(sae_id):
                return sae
        raise InvalidInputError(f"unknown SAE id {sae_id}; this atlas has SAE ids {[s.id for s in saes]}")

    def add_concepts(self, sae_id: int, frequency: np.ndarray, mean_activation: np.ndarray,
                     decoder_norm: np.ndarray) -> None:
        """Per-latent statistics of one SAE (arrays of length n_latents); names and notes are kept."""
        sae = self.sae(sae_id)
        stats = _concept_stats("add_concepts", sae.n_latents, {"frequency": frequency, "mean_activation":
                                                               mean_activation, "decoder_norm": decoder_norm})
        with self._db.write("concepts") as tx:
            _upsert_concepts(tx, sae.id, stats)

    def add_labels(self, names: list[str], source: str | None = None) -> list[int]:
        with self._db.write("labels") as tx:
            return label_ids(tx, [str(n) for n in names], source)

    def set_concept_labels(self, rows: list[dict] | pa.Table, replace: bool = False) -> int:
        """Store how concepts predict labels: dicts (or an Arrow table) with `concept` (id) or sae_id + latent,
        `label`, and mean_iou, hit_rate (share of images with IoU > 0.5), precision, recall, support. With
        `replace`, earlier rows of the same SAEs go first. Also sets each concept's best_label (highest mean
        IoU). Other keys (e.g. `atlas.concepts.link`'s hits, passes) are ignored."""
        rows = rows.to_pylist() if isinstance(rows, pa.Table) else rows
        atlas = self._writer.atlas
        saes = {s.id: s for s in atlas.saes()}
        by_name = {(s.block, s.t, s.branch, s.variant): s for s in saes.values()}
        resolved = []
        for r in rows:
            if "concept" in r:
                ref = parse_concept_id(r["concept"])
                sae = by_name.get((ref.block, ref.t, ref.branch, ref.variant)) or atlas.resolve(r["concept"])[0]
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
        with self._db.write("concept_labels", "labels", "concepts") as tx:
            ids = label_ids(tx, [label for _, _, label in resolved], None)
            table = pa.table({"sae_id": pa.array([s for s, _, _ in resolved], pa.int32()),
                              "latent": pa.array([latent for _, latent, _ in resolved], pa.int32()),
                              "label_id": pa.array(ids, pa.int32()),
                              **{k: pa.array([r.get(k) for r in rows], pa.float64()) for k in stats},
                              "support": pa.array([r.get("support") for r in rows], pa.int32())})
            if replace and touched:
                tx.query("DELETE FROM concept_labels WHERE list_contains(?, sae_id)", [touched])
            tx.insert_arrow("concept_labels", table, "ON CONFLICT (sae_id, latent, label_id) DO UPDATE SET " +
                            ", ".join(f"{k} = excluded.{k}" for k in stats + ["support"]))
            if touched:
                tx.query("UPDATE concepts SET best_label = NULL WHERE list_contains(?, sae_id)", [touched])
                tx.query("UPDATE concepts SET best_label = b.label FROM (SELECT c.sae_id, c.latent, "
                         f"first(l.name ORDER BY {LINK_SCORE}, l.name) AS label FROM concept_labels c JOIN labels l "
                         "ON l.id = c.label_id WHERE list_contains(?, c.sae_id) GROUP BY ALL) b "
                         "WHERE concepts.sae_id = b.sae_id AND concepts.latent = b.latent", [touched])
        return len(resolved)

    def rename_concept(self, concept: str, name: str | None, note: str | None = None) -> None:
        """Set a concept's user-visible name (and note); None clears it."""
        sae, latent = self._writer.atlas.resolve(concept)
        with self._db.write("concepts") as tx:
            row = tx.session.get(Concept, (sae.id, latent))
            if row is None:
                row = Concept(sae_id=sae.id, latent=latent)
                tx.session.add(row)
            row.name, row.note = name, note

    def log_intervention(self, concept: str, kind: str, strength: float | None = None, params: dict | None = None,
                         output_path: str | None = None, note: str | None = None) -> int:
        sae, latent = self._writer.atlas.resolve(concept)
        with self._db.write("interventions") as tx:
            row = Intervention(id=tx.next_id("interventions"), concept_id=concept_id(sae.block, sae.t, sae.branch,
                                                                                      latent, sae.variant),
                               sae_id=sae.id, latent=latent, kind=kind, strength=strength, params=dict(params or {}),
                               output_path=output_path, note=note)
            tx.session.add(row)
            return row.id

    def add_file(self, path: str | Path, kind: str) -> None:
        """List a file the pipeline keeps beside the store's own (the capture's manifest: kind `activations`) with
        its size and checksum, so `atlas check` notices when it changes; the path is stored relative to the atlas
        when inside it."""
        self.add_files([path], kind)

    def add_files(self, paths: Sequence[str | Path], kind: str, sae_id: int | None = None) -> None:
        """`add_file` for many files of one kind (e.g. the capture's images), in one transaction."""
        with self._db.write("files") as tx:
            list_files(tx, self._writer.atlas.root, paths, kind, sae_id)

    def set_evolution(self, trajectories: pa.Table, lineage: pa.Table | None, stage: str = "evolve",
                      info: dict | None = None) -> None:
        """Replace the concept trajectories and lineage of the SAEs they name (atlas.store.schema: Trajectory and
        Lineage give the columns) and mark `stage` done, in one transaction. Rows are checked first: known SAEs,
        latents in range, finite measures."""
        saes = {s.id: s for s in self._writer.atlas.saes()}
        _check_rows("trajectories", trajectories, saes, [("sae_id", "latent")],
                    ["at_t", "mass", "active_fraction", "mean_activation"])
        if lineage is not None:
            pairs = [("parent_sae_id", "parent_latent"), ("child_sae_id", "child_latent")]
            _check_rows("lineage", lineage, saes, pairs, ["cosine", "coactivation", "score"])
        touched = sorted({*trajectories["sae_id"].to_pylist(),
                          *(lineage["parent_sae_id"].to_pylist() if lineage is not None else [])})
        with self._db.write("trajectories", "lineage", "stages") as tx:
            tx.query("DELETE FROM trajectories WHERE list_contains(?, sae_id)", [touched])
            tx.query("DELETE FROM lineage WHERE list_contains(?, parent_sae_id)", [touched])
            tx.insert_arrow("trajectories", trajectories)
            if lineage is not None:
                tx.insert_arrow("lineage", lineage)
            merge_stage(tx, stage, info)

    def mark_stage(self, name: str, info: dict | None = None) -> None:
        """Record that a pipeline stage finished (the reader's `stage_done(name)` is then True)."""
        with self._db.write("stages") as tx:
            merge_stage(tx, name, info)


def list_files(tx: Transaction, root: Path, paths: Sequence[str | Path], kind: str, sae_id: int | None = None) -> None:
    """List files in `files` with their size and sha256 inside `tx` (replacing rows of the same paths); paths inside
    the atlas `root` are stored relative to it. A relative path is read relative to the atlas, else to the working
    directory (an atlas given as a relative path hands out paths such as demo/atlas/saes/...)."""
    rows = []
    for path in paths:
        full = Path(path) if Path(path).is_absolute() or not (root / path).exists() else root / path
        full = full.resolve()
        try:
            size, digest = full.stat().st_size, sha256(full)
        except OSError as err:
            raise InvalidInputError(f"add_file: cannot read {path} ({err.strerror})") from None
        rows.append((str(full.relative_to(root)) if full.is_relative_to(root) else str(full), size, digest))
    if not rows:
        return
    stored = [r[0] for r in rows]
    tx.query("DELETE FROM files WHERE list_contains(?, path)", [stored])
    tx.insert_arrow("files", pa.table({"path": pa.array(stored, pa.string()),
                                       "kind": pa.array([kind] * len(rows), pa.string()),
                                       "sae_id": pa.array([sae_id] * len(rows), pa.int32()),
                                       "rows": pa.array([0] * len(rows), pa.int64()),
                                       "bytes": pa.array([r[1] for r in rows], pa.int64()),
                                       "sha256": pa.array([r[2] for r in rows], pa.string())}))


def existing_ids(tx: Transaction, table: str, column: str, values: list) -> dict:
    """The ids of the rows whose `column` (a text column of `table`) is one of `values`, by value."""
    tx.raw.register("_lookup", pa.table({"v": pa.array(list(set(values)), pa.string())}))
    try:
        return dict(tx.raw.execute(f"SELECT {column}, id FROM {table} WHERE {column} IN (SELECT v FROM _lookup)"
                                   ).fetchall())
    finally:
        tx.raw.unregister("_lookup")


def label_ids(tx: Transaction, names: list[str], source: str | None) -> list[int]:
    """The ids of labels by name, inside `tx`; new names are added with `source`."""
    if any(not n.strip() for n in names):
        raise InvalidInputError("labels must be non-empty strings")
    ids = existing_ids(tx, "labels", "name", names)
    new = [n for n in dict.fromkeys(names) if n not in ids]
    start = tx.next_id("labels")
    ids.update({n: start + i for i, n in enumerate(new)})
    tx.insert_arrow("labels", pa.table({"id": pa.array([ids[n] for n in new], pa.int32()),
                                        "name": pa.array(new, pa.string()),
                                        "source": pa.array([source] * len(new), pa.string())}))
    return [ids[n] for n in names]


def merge_stage(tx: Transaction, name: str, info: dict | None) -> None:
    """Mark a stage done inside `tx` (with the commit of what it wrote)."""
    tx.session.merge(Stage(name=name, info=dict(info or {})))


def _check_rows(table: str, rows: pa.Table, saes: dict[int, SaeInfo], concepts: list[tuple[str, str]],
               measures: list[str]) -> None:
    """Refuse rows naming an unknown SAE or a latent outside it, or holding a missing or non-finite measure."""
    missing = [c for pair in concepts for c in pair if c not in rows.column_names] + \
        [c for c in measures if c not in rows.column_names]
    if missing:
        raise InvalidInputError(f"{table}: missing columns {missing}")
    sizes = {sae_id: sae.n_latents for sae_id, sae in saes.items()}
    for sae_column, latent_column in concepts:
        sae_ids = rows[sae_column].to_numpy(zero_copy_only=False)
        unknown = sorted(set(sae_ids.tolist()) - set(sizes))
        if unknown:
            raise InvalidInputError(f"{table}: unknown SAE ids {unknown[:5]}")
        latents = rows[latent_column].to_numpy(zero_copy_only=False)
        outside = (latents < 0) | (latents >= np.array([sizes[i] for i in sae_ids.tolist()], np.int64))
        if outside.any():
            where = int(np.argmax(outside))
            raise InvalidInputError(f"{table}: latent {latents[where]} outside SAE {saes[int(sae_ids[where])].name} "
                                    f"(0..{sizes[int(sae_ids[where])] - 1})")
    for column in measures:
        values = rows[column].to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.isfinite(values).all():
            raise InvalidInputError(f"{table}: {column} holds a missing or non-finite value")


def _concept_stats(what: str, n_latents: int, stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-latent statistics of CONCEPT_STATS as float64 arrays, checked before anything is written."""
    missing = [name for name in CONCEPT_STATS if name not in stats]
    if missing:
        raise InvalidInputError(f"{what}: concept statistics need {', '.join(CONCEPT_STATS)}; missing {missing}")
    for name in CONCEPT_STATS:
        if np.shape(stats[name]) != (n_latents,):
            raise InvalidInputError(f"{what}: {name} has shape {np.shape(stats[name])}, expected ({n_latents},)")
    return {name: np.asarray(stats[name], np.float64) for name in CONCEPT_STATS}


def _upsert_concepts(tx: Transaction, sae_id: int, stats: dict[str, np.ndarray]) -> None:
    """Set the statistics of every latent of an SAE; rows that exist keep their names and notes."""
    n_latents = len(stats[CONCEPT_STATS[0]])
    table = pa.table({"sae_id": pa.array(np.full(n_latents, sae_id, np.int32)),
                      "latent": pa.array(np.arange(n_latents, dtype=np.int32)),
                      **{name: pa.array(values) for name, values in stats.items()}})
    tx.insert_arrow("concepts", table, "ON CONFLICT (sae_id, latent) DO UPDATE SET " +
                    ", ".join(f"{name} = excluded.{name}" for name in CONCEPT_STATS))
