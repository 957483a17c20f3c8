"""A writer's sparse codes (`w.codes`): `write` stages the codes of some images for one SAE, `finalize` merges
what is staged into the final layout (atlas.store.codes) and lists the new files in the catalog.

A finalize compacts each SAE's staged parts with its existing codes into new by_latent files, then re-sorts the
by_image buckets those touch from the by_latent files of every SAE. A run that finalizes SAE after SAE (encode)
defers that second step with `by_image=False`: the touched buckets are recorded in codes/by_image.stale before
the commit that makes them stale, and the next finalize that does not defer re-sorts them all at once, so a run
of n SAEs reads each SAE's codes once for by_image instead of n (n + 1) / 2 times. Until then the by_image
arrangement (`image_codes`, `activation_map`, the `codes_by_image` view) lacks the new codes of those SAEs (or
holds their previous ones); a finalize that shifts an SAE's existing codes to a new quantisation base never
defers, since their by_image rows would read wrong values meanwhile.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from atlas.files import file_lock, sha256
from atlas.store import codes, snapshot
from atlas.store.catalog import Catalog
from atlas.store.catalog_writer import merge_stage
from atlas.store.errors import InvalidInputError
from atlas.store.schema import File, Sae

if TYPE_CHECKING:
    from atlas.store.writer import Writer


class CodesWriter:
    def __init__(self, writer: Writer, catalog: Catalog) -> None:
        self._writer = writer
        self._db = catalog
        self._staged: set[int] = set()
        self._deferred = False

    @property
    def unfinished(self) -> bool:
        """Whether this writer staged codes or deferred image buckets that no finalize has merged since."""
        return bool(self._staged) or self._deferred

    def finish(self) -> None:
        """Finalize what this writer left unfinished (the writer's `with` block calls it when it ends normally)."""
        if self.unfinished:
            self.finalize(sorted(self._staged))

    def write(self, sae_id: int, image_id: np.ndarray, row: np.ndarray, col: np.ndarray, latent: np.ndarray,
              value: np.ndarray) -> int:
        """Stage codes of some images for one SAE; each call must hold all codes of its images for this SAE.
        Visible after `finalize()`. Returns the number of rows staged (values <= 0 are dropped)."""
        sae = self._writer.catalog.sae(sae_id)
        if sae.grid_h and len(row) and (np.max(row) >= sae.grid_h or np.max(col) >= sae.grid_w):
            raise InvalidInputError(f"write_codes: row/col outside the SAE's {sae.grid_h}x{sae.grid_w} grid")
        table = codes.prepare_part(sae.id, sae.n_latents, image_id, row, col, latent, value)
        if table is None:
            return 0
        with self._db.hold(), self._lock(shared=True):
            codes.stage_part(self._writer.root, sae.id, table)
        self._staged.add(sae.id)
        return table.num_rows

    @contextmanager
    def _lock(self, shared: bool = False) -> Iterator[None]:
        """Staging writes share it; a finalize holds it alone (across processes)."""
        with file_lock(self._writer.root / "codes" / ".lock", shared):
            yield

    def forget(self, sae_ids: list[int], stages: list[str] = ()) -> None:
        """Unlist the SAEs' codes (their by_latent files become orphans, their count 0) and unmark `stages`, in one
        transaction: the next encode of them starts afresh (`atlas check --repair` after a damaged codes file)."""
        with self._db.write("files", "saes", "stages") as tx:
            tx.query("DELETE FROM files WHERE kind = ? AND list_contains(?, sae_id)", [codes.BY_LATENT, list(sae_ids)])
            tx.query("UPDATE saes SET n_codes = 0 WHERE list_contains(?, id)", [list(sae_ids)])
            tx.query("DELETE FROM stages WHERE list_contains(?, name)", [list(stages)])

    def finalize(self, sae_ids: list[int] | None = None, stage: str | None = None, info: dict | None = None,
                 by_image: bool = True) -> dict[int, int]:
        """Merge the staged codes of `sae_ids` (default: every SAE with staged codes) into the final layout; returns
        the rows each SAE now holds. With `by_image=False`, only into by_latent: the image buckets they touch are
        re-sorted by the next finalize without it (see the module docstring); a finalize without it also re-sorts
        every bucket deferred before. With `stage`, also mark that stage done (as mark_stage) in the same
        transaction: the codes and the mark commit together."""
        root = self._writer.root
        atlas = self._writer.atlas
        with self._db.hold(), self._lock():
            self._db.recover()  # a finalize killed before publishing: its files are listed once this publishes
            generations = sorted(p for p in (root / snapshot.TABLES_DIR).glob("g[0-9]*") if p.is_dir())
            codes.remove_orphans(root, set().union(*(snapshot.listed_files(g) for g in generations)))
            pending = {s: p for s, p in codes.pending_parts(root).items() if sae_ids is None or s in sae_ids}
            stale = codes.stale_image_buckets(root)
            self._staged = {s for s in self._staged if sae_ids is not None and s not in sae_ids}
            if not pending and not (by_image and stale):
                self._deferred = self._deferred and not by_image
                if stage is not None:
                    self._writer.catalog.mark_stage(stage, info)
                return {}
            saes = {s.id: s for s in atlas.saes()}
            by_latent = {s: [] for s in saes}
            for listed in atlas.query("SELECT sae_id, path FROM files WHERE kind = ? ORDER BY path",
                                      [codes.BY_LATENT]).to_pylist():
                by_latent[listed["sae_id"]].append(root / listed["path"])
            buckets: set[int] = set()
            shifted = False
            temp = root / "codes" / ".tmp"
            con = duckdb.connect(":memory:", config={"temp_directory": str(temp),
                                                     **({"threads": self._writer.threads}
                                                        if self._writer.threads else {})})
            try:
                done = {}
                for sae_id, parts in pending.items():
                    sae = saes[sae_id]
                    result = codes.compact(con, root, sae_id, parts, by_latent[sae_id], sae.value_qbase)
                    if by_latent[sae_id] and result.qbase != sae.value_qbase:  # its old codes were shifted
                        shifted = True
                        buckets |= set(atlas.query("SELECT DISTINCT bucket FROM files WHERE kind = ?",
                                                   [codes.BY_IMAGE])["bucket"].to_pylist())
                    buckets |= result.image_buckets
                    by_latent[sae_id] = [root / f.path for f in result.files]
                    done[sae_id] = result
                resort = by_image or shifted
                if resort:
                    buckets |= stale
                    by_image_files = codes.rebuild_by_image(con, root, by_latent, buckets)
                else:
                    by_image_files = []
                    codes.mark_stale_image_buckets(root, stale | buckets)  # before the commit that makes them stale
            finally:
                con.close()
                shutil.rmtree(temp, ignore_errors=True)
            with self._db.write("files", "saes", *(["stages"] if stage is not None else [])) as tx:
                if done:
                    tx.query("DELETE FROM files WHERE kind = ? AND list_contains(?, sae_id)",
                             [codes.BY_LATENT, sorted(done)])
                if resort and buckets:
                    tx.query("DELETE FROM files WHERE kind = ? AND list_contains(?, bucket)",
                             [codes.BY_IMAGE, sorted(buckets)])
                for f in [f for r in done.values() for f in r.files] + by_image_files:
                    tx.session.add(File(path=f.path, kind=f.kind, sae_id=f.sae_id, bucket=f.bucket, rows=f.rows,
                                        bytes=f.bytes, sha256=sha256(root / f.path)))
                for sae_id, result in done.items():
                    sae = tx.session.get(Sae, sae_id)
                    sae.value_qbase, sae.n_codes = result.qbase, result.rows
                    if not sae.grid_h:
                        sae.grid_h, sae.grid_w = result.grid
                if stage is not None:
                    merge_stage(tx, stage, info)
            if resort:
                codes.mark_stale_image_buckets(root, set())
            self._deferred = not resort
            for parts in pending.values():
                for part in parts:
                    part.unlink(missing_ok=True)
            return {sae_id: result.rows for sae_id, result in done.items()}
