"""`atlas check --repair`: rebuild what `atlas check` found damaged from what it derives from.

    catalog.duckdb         from the newest snapshot generation (every commit published one)
    tables/CURRENT         points at the newest complete generation
    orphans                removed (files no kept generation lists)
    codes_by_image file    its bucket re-sorted from the by_latent files
    codes_by_latent file   its SAE encoded again from the capture and the SAE's checkpoint
    FAISS index            from the SAE checkpoints' decoders

The first three run with the atlas to this process alone (refused while another process writes); the codes and
indexes are rewritten through an ordinary writer, so readers see each repair whole. What cannot be derived (a
changed capture manifest, a checkpoint that does not load, a missing image) stays reported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from atlas.pipeline.encode import capture_of, encode_atlas, stage_name
from atlas.pipeline.train import sae_dir
from atlas.store import codes, default_path, open_writer, snapshot
from atlas.store.catalog import Catalog
from atlas.store.check import CheckReport, check_atlas, rebuild_catalog, remove_orphans
from atlas.store.errors import AtlasNotFoundError
from atlas.store.ids import block_key
from atlas.store.views import SaeInfo
from atlas.store.writer import Writer


def repair_atlas(root: str | Path | None = None, say: Callable[[str], None] = print) -> CheckReport:
    """Repair what can be derived (see the module docstring), saying one line per repair; returns the check after."""
    root = Path(root) if root is not None else default_path()
    if not root.is_dir() or snapshot.newest(root) is None:
        raise AtlasNotFoundError(root)
    found = check_atlas(root)
    with Catalog(root).exclusive():
        if found.catalog_damaged:
            used = rebuild_catalog(root)
            say(f"rebuilt catalog.duckdb from {snapshot.TABLES_DIR}/{used.name} (the damaged file is kept as "
                "catalog.duckdb.damaged)")
        if snapshot.catch_up(root):
            say(f"pointed {snapshot.TABLES_DIR}/{snapshot.POINTER} at {snapshot.pointed(root).name}")
        for rel in remove_orphans(root):
            say(f"removed {rel}")
    if found.damaged:
        with open_writer(root) as writer:
            _rebuild_files(writer, found, say)
    return check_atlas(root)


def _rebuild_files(writer: Writer, found: CheckReport, say: Callable[[str], None]) -> None:
    saes = {s.id: s for s in writer.atlas.saes()}
    usable = {i for i in saes if i not in found.broken_saes}
    reencode = {r["sae_id"] for r in found.damaged if r["kind"] == codes.BY_LATENT} & usable
    buckets = {r["bucket"] for r in found.damaged if r["kind"] == codes.BY_IMAGE}
    reindex = {r["sae_id"] for r in found.damaged if r["kind"] == "faiss_sae"} & usable
    for row in (r for r in found.damaged if r["kind"] == "faiss_block"):
        members = [s for s in saes.values() if s.id in usable and block_key(s.block, s.branch, s.variant) == row["key"]]
        reindex |= {members[0].id} if members and not reindex & {m.id for m in members} else set()
    for sae_id in sorted(reindex - reencode):  # re-encoding indexes the SAE anew
        writer.index.add(sae_id, _decoder(writer, saes[sae_id]))
        say(f"rebuilt the FAISS indexes of SAE {saes[sae_id].name} from its checkpoint")
    if reencode:
        _reencode(writer, [saes[i] for i in sorted(reencode)])
        say(f"encoded SAE {', '.join(saes[i].name for i in sorted(reencode))} again from the capture")
    if buckets - {None}:
        codes.mark_stale_image_buckets(writer.root, codes.stale_image_buckets(writer.root) | (buckets - {None}))
        writer.codes.finalize()
        say(f"re-sorted image buckets {', '.join(map(str, sorted(buckets - {None})))} from the by-latent codes")


def _decoder(writer: Writer, sae: SaeInfo):  # -> np.ndarray
    from atlas.sae import Sae

    return Sae.from_pretrained(writer.atlas.file_path(sae.path)).W_dec.detach().float().cpu().numpy()


def _reencode(writer: Writer, saes: list[SaeInfo]) -> None:
    """Forget the SAEs' codes files and encode marks, then encode: only they are encoded again."""
    acts = capture_of(writer.atlas)
    writer.codes.forget([s.id for s in saes], [stage_name(s.block, s.t, s.branch, s.variant) for s in saes])
    for sae in saes:
        depth = len(sae_dir(".", sae.block, sae.t, sae.branch, sae.variant).parts)
        saes_root = writer.atlas.file_path(sae.path).parents[depth - 1]
        encode_atlas(writer, acts, saes_root, branch=sae.branch, progress=False)
