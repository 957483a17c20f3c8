"""Put a capture and its SAEs into an atlas: prompts, images, SAEs (+ FAISS), concept statistics, sparse codes.

The trained SAEs (each variant of a (block, t, branch) too: one per k) run over every captured position; each
position keeps its top-k (latent, value) pairs. One SAE is finalised and marked done (in one transaction) at a
time, so an interrupted run loses at most one SAE and a re-run skips the finished ones; writing the same images
again replaces their codes.
The shards of an SAE are encoded on an executor (atlas.pipeline.executor: this process or Ray actors, which
get the SAE once each); the driver stages the codes they return and commits them into the catalog.
Each SAE costs two catalog transactions (each a snapshot publication): its row with its FAISS indexes
and concept statistics, then its codes (by_latent) with its done mark. The by-image arrangement is re-sorted
once per run, after the last SAE (atlas.store.codes_writer), not after each: a re-run after an interruption
does it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from atlas.capture import ActivationSet
from atlas.errors import NotFoundError
from atlas.pipeline.executor import Executor, LocalExecutor
from atlas.pipeline.train import load_sae, sae_dir, trained_variants
from atlas.progress import bar as progress_bar
from atlas.sae import Sae
from atlas.sae.model import CONFIG_NAME, LEGACY_CONFIG_NAME, WEIGHTS_NAME
from atlas.store import Atlas, Writer
from atlas.store.catalog_writer import CONCEPT_STATS
from atlas.store.ids import DEFAULT_VARIANT, sae_name
from atlas.store.revisions import IMAGE

BATCH_POSITIONS = 65536
"""Positions an SAE encodes at once (memory: this many times its cap and width)."""


def stored_path(atlas: Atlas, path: Path) -> str:
    """Paths inside the atlas are stored relative to its root (so the directory can move), others absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(atlas.root)) if path.is_relative_to(atlas.root) else str(path)


def register_capture(writer: Writer, acts: ActivationSet) -> np.ndarray:
    """Add the capture's model, prompts and images; returns atlas image ids indexed by capture image id."""
    manifest = acts.manifest
    spec = {k: manifest[k] for k in ("steps", "guidance", "blocks", "t", "branches", "resolution")}
    writer.catalog.add_model(manifest["model"], path=manifest.get("source") or None, spec=spec)
    records = acts.prompts
    prompt_ids = writer.catalog.add_prompts([(r.prompt, r.split) for r in records])
    local = acts.location.local

    def image_path(image_id: int) -> str:  # a capture on object storage keeps its URIs
        name = f"images/{image_id:06d}.png"
        return stored_path(writer.atlas, local / name) if local else acts.location.name(name)

    images = [{"prompt_id": p, "seed": r.seed, "guidance": manifest["guidance"], "steps": manifest["steps"],
               "path": image_path(r.image_id)} for r, p in zip(records, prompt_ids)]
    ids = writer.catalog.add_images(images)
    if local:
        pictures = (local / f"images/{r.image_id:06d}.png" for r in records)
        writer.catalog.add_files([p for p in pictures if p.exists()], IMAGE)  # their checksums, for `atlas check`
        writer.catalog.add_file(local / "manifest.json", "activations")
    mapping = np.full(max(r.image_id for r in records) + 1, -1, dtype=np.int64)
    mapping[[r.image_id for r in records]] = ids
    return mapping


def capture_of(atlas: Atlas) -> ActivationSet:
    """The capture the atlas's codes were encoded from (the activations manifest `files` lists, else the atlas's own
    activations/ folder)."""
    listed = [r["path"] for r in atlas.query("SELECT path FROM files WHERE kind = 'activations'").to_pylist()]
    return ActivationSet(atlas.file_path(listed[0]).parent if listed else atlas.root / "activations")


def stage_name(block: str, t: float, branch: str, variant: str = DEFAULT_VARIANT) -> str:
    return f"encode:{sae_name(block, t, branch, variant)}"


def encode_atlas(writer: Writer, acts: ActivationSet, saes_root: str | Path, branch: str | None = None,
                 batch_positions: int = BATCH_POSITIONS, progress: bool = True,
                 executor: Executor | None = None) -> dict[str, int]:
    """Encode with every trained SAE of a captured (block, t, branch), each variant too; returns codes written per
    SAE name."""
    keys = encode_keys(acts, saes_root, branch)
    with writer.stage():  # other readers see the new images, SAEs and codes at once, when all are written
        return _encode(writer, acts, saes_root, keys, batch_positions, progress, executor)


def encode_keys(acts: ActivationSet, saes_root: str | Path, branch: str | None = None
                ) -> list[tuple[str, float, str, str]]:
    """The (block, t, branch, variant) of every trained SAE that fits the capture; raises if there is none (before
    anything is written, so a command can check its inputs before it creates an atlas)."""
    keys = [(*k, variant) for k in acts.keys() if branch is None or k[2] == branch
            for variant in trained_variants(saes_root, *k)]
    if not keys:
        raise NotFoundError(f"no trained SAEs under {saes_root} for the activations in {acts.path}; "
                            "run `atlas train --all` first")
    return keys


def _encode(writer: Writer, acts: ActivationSet, saes_root: str | Path, keys: list[tuple[str, float, str, str]],
            batch_positions: int, progress: bool, executor: Executor | None) -> dict[str, int]:
    mapping = register_capture(writer, acts)
    grids = _grids(acts)
    finished = {stage_name(*key) for key in keys if writer.atlas.stage_done(stage_name(*key))}  # one snapshot load
    written: dict[str, int] = {}
    bar = progress_bar(total=len(keys) * len(acts.done), unit="shard", desc="encode", disable=not progress)
    for block, t, br, variant in keys:
        name = stage_name(block, t, br, variant)
        if name in finished:
            bar.update(len(acts.done))
            continue
        sae = load_sae(saes_root, block, t, br, variant)
        sae_id = register_sae(writer, sae, sae_dir(saes_root, block, t, br, variant), block, t, br, grids[block],
                              variant)
        rows = 0
        job = _EncodeJob(acts, sae, (block, t, br), batch_positions)
        for image_id, row, col, latent, value in (executor or LocalExecutor()).map(job, acts.done):
            rows += writer.codes.write(sae_id, mapping[image_id], row, col, latent, value)
            bar.update(1)
        writer.codes.finalize([sae_id], stage=name, info={"codes": rows}, by_image=False)
        written[sae_name(block, t, br, variant)] = rows
    writer.codes.finalize()  # the image buckets of every SAE of this run (or of an interrupted one), at once
    bar.close()
    return written


def register_sae(writer: Writer, sae: Sae, path: Path, block: str, t: float, branch: str,
                 grid: tuple[int, int], variant: str = DEFAULT_VARIANT) -> int:
    """Catalog row, FAISS index and per-latent statistics of one trained SAE (loaded from `path`), in one commit."""
    metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    decoder = sae.W_dec.detach().float().cpu().numpy()
    stats = pq.read_table(path / "stats.parquet", columns=list(CONCEPT_STATS))
    return writer.catalog.add_sae(block, t, branch, k=sae.cfg.k, n_latents=sae.n_latents, d_in=sae.d_in,
                                  metrics=flat, path=stored_path(writer.atlas, path), grid=grid, decoder=decoder,
                                  concepts={name: stats[name].to_numpy() for name in CONCEPT_STATS}, variant=variant,
                                  checkpoint=checkpoint_files(path))


def checkpoint_files(path: Path) -> list[Path]:
    """The files of the SAE saved in `path` that loading it reads (its weights and config)."""
    return [path / name for name in (WEIGHTS_NAME, CONFIG_NAME, LEGACY_CONFIG_NAME) if (path / name).exists()]


def _grids(acts: ActivationSet) -> dict[str, tuple[int, int]]:
    """Each block's (rows, cols), as capture recorded them in its batch markers."""
    grids = acts.marker(acts.done[0])["grids"]
    return {block: (int(g[0]), int(g[1])) for block, g in grids.items()}


@dataclass
class _EncodeJob:
    """Encoding the shards of one (block, t, branch) with its SAE, picklable for Ray."""

    acts: ActivationSet
    sae: Sae
    key: tuple[str, float, str]
    batch_positions: int

    def start(self, device: str | None) -> Callable[[int], tuple[np.ndarray, ...]]:
        return partial(self.run, self.sae.to(device) if device else self.sae)

    def run(self, sae: Sae, batch: int) -> tuple[np.ndarray, ...]:
        """Top-k codes of one shard: (capture image_id, row, col, latent, value), k rows per position."""
        shard = self.acts.shard(*self.key, batch)
        k = sae.cfg.cap  # topk: k; the types firing a varying number: their cap, zeros (not stored) padding
        idx, acts = encode_positions(sae, shard["x"], self.batch_positions)
        image_ids = shard["image_id"].numpy().astype(np.int64)
        return (np.repeat(image_ids, k), np.repeat(shard["row"].numpy(), k), np.repeat(shard["col"].numpy(), k),
                idx.reshape(-1), acts.reshape(-1))


def encode_positions(sae: Sae, x: torch.Tensor, batch_positions: int = BATCH_POSITIONS) -> tuple[np.ndarray, ...]:
    """`sae`'s top codes of activations `x` (positions, d), `batch_positions` at a time: (latents, values), each
    (positions, the SAE's cap)."""
    idx, acts = [], []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_positions):
            out = sae.encode(x[start:start + batch_positions].to(sae.device, sae.dtype))
            idx.append(out.top_indices.cpu())
            acts.append(out.top_acts.float().cpu())
    return torch.cat(idx).numpy(), torch.cat(acts).numpy()
