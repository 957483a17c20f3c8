"""`atlas check --repair`: rebuild what `atlas check` found damaged from what it derives from.

    catalog.duckdb         from the newest snapshot generation (every commit published one)
    tables/CURRENT         points at the newest complete generation
    orphans                removed (files no kept generation lists)
    codes_by_image file    its bucket re-sorted from the by_latent files
    codes_by_latent file   its SAE encoded again from the capture and the SAE's checkpoint
    FAISS index            from the SAE checkpoints' decoders
    image                  generated again from its prompt and seed with the atlas's model, kept only when it has
                           the checksum the catalog recorded (or none was recorded)
    mask                   its image annotated again by the annotator that found the object (the object with the
                           same label and box), kept likewise

The first three run with the atlas to this process alone (refused while another process writes); the codes and
indexes are rewritten through an ordinary writer, so readers see each repair whole. What cannot be derived (a
changed capture manifest, an SAE checkpoint file, an image whose model is not on this machine) is said in one line
and stays reported.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from atlas.capture import ActivationSet
from atlas.errors import AtlasError
from atlas.files import atomic_write
from atlas.pipeline.encode import capture_of, encode_atlas, stage_name
from atlas.pipeline.train import sae_dir
from atlas.store import Atlas, codes, default_path, open_writer, snapshot
from atlas.store.catalog import Catalog
from atlas.store.check import NOT_DERIVABLE_SAE, CheckReport, check_atlas, rebuild_catalog, remove_orphans
from atlas.store.errors import AtlasNotFoundError
from atlas.store.ids import block_key
from atlas.store.objects_writer import mask_png
from atlas.store.revisions import CONTENT_KINDS, IMAGE, MASK
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
    if any(r["kind"] not in CONTENT_KINDS for r in found.damaged):
        with open_writer(root) as writer:
            _rebuild_files(writer, found, say)
    with Atlas(root) as atlas:
        _restore_images(atlas, [r for r in found.damaged if r["kind"] == IMAGE], say)
        _restore_masks(atlas, [r for r in found.damaged if r["kind"] == MASK], say)
        for sae in atlas.saes():
            if sae.id in found.broken_saes:
                say(f"cannot rebuild the checkpoint of SAE {sae.name}: {NOT_DERIVABLE_SAE}")
    return check_atlas(root)


def _restore(atlas: Atlas, row: dict, data: bytes) -> bool:
    """Write a regenerated image or mask over the damaged one if it is what the catalog recorded (or it recorded
    nothing); returns whether it was written."""
    if row.get("sha256") and hashlib.sha256(data).hexdigest() != row["sha256"]:
        return False
    path = atlas.file_path(row["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return True


def _png(pixels: np.ndarray) -> bytes:
    """An image's PNG file as capture writes it."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _restore_images(atlas: Atlas, rows: list[dict], say: Callable[[str], None]) -> None:
    """Generate damaged images again as the capture did: each with the other prompts and seeds of its capture batch
    (the numbers of a denoising step depend a little on what else is in the batch), the capture's steps and
    guidance."""
    if not rows:
        return
    from atlas.models import load_model
    from atlas.models.sampler import generate

    listed = atlas.query("SELECT path FROM files WHERE kind = 'activations'")["path"].to_pylist()
    acts = ActivationSet(atlas.file_path(listed[0]).parent) if listed else None
    local = acts.location.local if acts is not None else None
    records = {(local / f"images/{r.image_id:06d}.png").resolve(): r for r in acts.prompts} if local else {}
    wanted = {records[p].image_id: r for r in rows if (p := atlas.file_path(r["path"]).resolve()) in records}
    for row in rows:
        if atlas.file_path(row["path"]).resolve() not in records:
            say(f"cannot generate image {row['id']} again: no capture of this atlas made it; restore {row['path']} "
                "from a copy")
    if not wanted:
        return
    source = atlas.model()["source"]
    try:
        model = load_model(source)
    except AtlasError as err:
        say(f"cannot generate images {', '.join(str(r['id']) for r in wanted.values())} again: the atlas's model "
            f"{source} does not load here ({err.message}); restore them from a copy")
        return
    by_capture_id = {r.image_id: r for r in records.values()}
    for batch in acts.done:
        members = [by_capture_id[i] for i in acts.marker(batch)["image_ids"]]
        if not wanted.keys() & {m.image_id for m in members}:
            continue
        pixels = generate(model, [m.prompt for m in members], [m.seed for m in members], acts.manifest["steps"],
                          acts.manifest["guidance"], batch_size=len(members))
        for member, image in zip(members, pixels):
            row = wanted.get(member.image_id)
            if row is None:
                continue
            if _restore(atlas, row, _png(image)):
                say(f"generated image {row['id']} again from its seed ({row['path']})")
            else:
                say(f"cannot restore image {row['id']}: generated again from its seed it differs from the original "
                    f"(checksum); restore {row['path']} from a copy")


def _restore_masks(atlas: Atlas, rows: list[dict], say: Callable[[str], None]) -> None:
    """Annotate the images of damaged masks again with the annotator that found each object; the mask of the object
    found with the same label and box replaces the damaged one."""
    if not rows:
        return
    from PIL import Image

    from atlas.pipeline.presets import recorded_annotator

    objects = atlas.query("SELECT o.id, o.image_id, o.source, l.name AS label, o.x0, o.y0, o.x1, o.y1, i.path, "
                          "i.prompt FROM objects o JOIN labels l ON l.id = o.label_id JOIN images i ON i.id = "
                          "o.image_id WHERE list_contains(?, o.id) ORDER BY o.id", [[r["id"] for r in rows]]
                          ).to_pylist()
    by_id = {r["id"]: r for r in rows}
    annotators: dict[str, object] = {}
    for obj in objects:
        row, name = by_id[obj["id"]], f"mask of object {obj['id']} (image {obj['image_id']})"
        try:
            annotator = annotators.get(obj["source"]) or recorded_annotator(obj["source"], atlas.root)
            annotators[obj["source"]] = annotator
            with Image.open(atlas.file_path(obj["path"])) as picture:
                pixels = np.asarray(picture.convert("RGB"))
            found = annotator.annotate([pixels], [obj["prompt"] or ""])[0]
        except (AtlasError, OSError) as err:
            say(f"cannot rebuild the {name}: annotating its image failed ({str(err).splitlines()[0][:120]}); "
                f"restore {row['path']} from a copy")
            continue
        box = np.array([obj["x0"], obj["y0"], obj["x1"], obj["y1"]], dtype=float)
        same = [o for o in found if o.label == obj["label"] and np.allclose(np.asarray(o.box, float), box, atol=0.5)]
        if same and _restore(atlas, row, mask_png(same[0].mask)):
            say(f"rebuilt the {name} by annotating its image again ({row['path']})")
        else:
            say(f"cannot rebuild the {name}: annotated again, its image gives no identical mask; restore "
                f"{row['path']} from a copy")


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
