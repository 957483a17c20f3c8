"""A writer's FAISS indexes (`w.index`): one per SAE and one per (block, branch, variant) across its SAEs' timesteps
(atlas.store.index), written before the commit that lists them in `files`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from atlas.store import codes
from atlas.store import index as faiss_index
from atlas.store.catalog import Catalog, Transaction
from atlas.store.errors import InvalidInputError
from atlas.store.ids import block_key, branch_part
from atlas.store.schema import File
from atlas.store.views import SaeInfo

if TYPE_CHECKING:
    from atlas.store.writer import Writer


class IndexWriter:
    def __init__(self, writer: Writer, catalog: Catalog) -> None:
        self._writer = writer
        self._db = catalog

    def add(self, sae_id: int, decoder: np.ndarray) -> None:
        """Index one SAE's decoder rows (n_latents, d_in) and rebuild the index of its block, branch and variant."""
        sae = self._writer.catalog.sae(sae_id)
        if np.shape(decoder) != (sae.n_latents, sae.d_in):
            raise InvalidInputError(f"decoder has shape {np.shape(decoder)}, expected ({sae.n_latents}, {sae.d_in})")
        with self._db.write("files") as tx:
            self.add_in(tx, sae, decoder)

    def add_in(self, tx: Transaction, sae: SaeInfo, decoder: np.ndarray) -> None:
        """Write the SAE's index and its block's and list them, inside `tx` (the catalog writer's add_sae uses it):
        under catalog.hold, since the files are orphans until the commit lists them. The block's other SAEs come
        from the catalog itself."""
        root = self._writer.root
        own = faiss_index.sae_index(decoder)
        token = codes.token()
        own_path = root / "index" / f"sae-{sae.id}-{token}.faiss"
        own_bytes = faiss_index.write(own, own_path)
        members = [(sae.id, own)]
        others = tx.query("SELECT f.sae_id, min(f.path) FROM files f JOIN saes s ON s.id = f.sae_id "
                          "WHERE f.kind = 'faiss_sae' AND s.block = ? AND s.branch = ? AND s.variant = ? AND s.id <> ? "
                          "GROUP BY f.sae_id", [sae.block, sae.branch, sae.variant, sae.id])
        members += [(other, faiss_index.read(root / path, path)) for other, path in others]
        key = block_key(sae.block, sae.branch, sae.variant)
        block = faiss_index.block_index(sorted(members, key=lambda m: m[0]))
        block_path = root / "index" / f"block-{sae.block}-{branch_part(sae.branch, sae.variant)}-{token}.faiss"
        block_bytes = faiss_index.write(block, block_path)
        tx.query("DELETE FROM files WHERE (kind = 'faiss_sae' AND sae_id = ?) OR (kind = 'faiss_block' AND key = ?)",
                 [sae.id, key])
        tx.session.add(File(path=str(own_path.relative_to(root)), kind="faiss_sae", sae_id=sae.id,
                            rows=own.ntotal, bytes=own_bytes))
        tx.session.add(File(path=str(block_path.relative_to(root)), kind="faiss_block", key=key,
                            rows=block.ntotal, bytes=block_bytes))
