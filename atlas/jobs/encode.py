"""Put a capture and its SAEs into an atlas: prompts, images, SAEs (+ FAISS), concept statistics, sparse codes.

The trained SAEs run over every captured position; each position keeps its top-k (latent, value)
pairs. One SAE is finalised (and marked done) at a time, so an interrupted run loses at most one SAE
and a re-run skips the finished ones; writing the same images again replaces their codes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from atlas.capture import ActivationSet
from atlas.jobs.train import load_sae, sae_dir
from atlas.sae import Sae
from atlas.store import Atlas


def stored_path(atlas: Atlas, path: Path) -> str:
    """Paths inside the atlas are stored relative to its root (so the directory can move), others absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(atlas.root)) if path.is_relative_to(atlas.root) else str(path)


def register_capture(atlas: Atlas, acts: ActivationSet) -> np.ndarray:
    """Add the capture's model, prompts and images; returns atlas image ids indexed by capture image id."""
    manifest = acts.manifest
    atlas.add_model(manifest["model"], spec={k: manifest[k] for k in ("steps", "guidance", "blocks", "t",
                                                                        "branches", "resolution")})
    records = acts.prompts
    prompt_ids = atlas.add_prompts([(r.prompt, r.split) for r in records])
    images = [{"prompt_id": p, "seed": r.seed, "guidance": manifest["guidance"], "steps": manifest["steps"],
               "path": stored_path(atlas, acts.path / "images" / f"{r.image_id:06d}.png")}
              for r, p in zip(records, prompt_ids)]
    ids = atlas.add_images(images)
    mapping = np.full(max(r.image_id for r in records) + 1, -1, dtype=np.int64)
    mapping[[r.image_id for r in records]] = ids
    return mapping


def stage_name(block: str, t: float, branch: str) -> str:
    return f"encode:{block}/{float(t)}/{branch}"


def encode_atlas(atlas: Atlas, acts: ActivationSet, saes_root: str | Path, branch: str | None = None,
                 batch_positions: int = 65536, progress: bool = True) -> dict[str, int]:
    """Encode every (block, t, branch) that has a trained SAE; returns codes written per SAE name."""
    mapping = register_capture(atlas, acts)
    keys = [k for k in acts.keys() if (branch is None or k[2] == branch)
            and (sae_dir(saes_root, *k) / "sae.safetensors").exists()]
    if not keys:
        raise ValueError(f"no trained SAEs under {saes_root} for the activations in {acts.path}; "
                         "run `atlas train --all` first")
    grids = _grids(acts)
    written: dict[str, int] = {}
    bar = tqdm(total=len(keys) * len(acts.done), unit="shard", desc="encode", disable=not progress)
    for block, t, br in keys:
        name = stage_name(block, t, br)
        if atlas.stage_done(name):
            bar.update(len(acts.done))
            continue
        sae = load_sae(saes_root, block, t, br)
        sae_id = register_sae(atlas, sae, sae_dir(saes_root, block, t, br), block, t, br, grids[block])
        rows = 0
        for shard in acts.shards(block, t, br):
            rows += _encode_shard(atlas, sae, sae_id, shard, mapping, batch_positions)
            bar.update(1)
        atlas.finalize_codes([sae_id])
        atlas.mark_stage(name, {"codes": rows})
        written[f"{block}/{t}/{br}"] = rows
    bar.close()
    return written


def register_sae(atlas: Atlas, sae: Sae, path: Path, block: str, t: float, branch: str, grid: tuple[int, int]) -> int:
    """Catalog row, FAISS index and per-latent statistics of one trained SAE (loaded from `path`)."""
    metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    decoder = sae.W_dec.detach().float().cpu().numpy()
    sae_id = atlas.add_sae(block, t, branch, k=sae.cfg.k, n_latents=sae.n_latents, d_in=sae.d_in, metrics=flat,
                           path=stored_path(atlas, path), grid=grid, decoder=decoder)
    stats = pq.read_table(path / "stats.parquet").to_pydict()
    atlas.add_concepts(sae_id, np.asarray(stats["frequency"]), np.asarray(stats["mean_activation"]),
                       np.asarray(stats["decoder_norm"]))
    return sae_id


def _grids(acts: ActivationSet) -> dict[str, tuple[int, int]]:
    """Each block's (rows, cols), as capture recorded them in its batch markers."""
    marker = acts.path / "done" / f"batch-{acts.done[0]:06d}.json"
    grids = json.loads(marker.read_text())["grids"]
    return {block: (int(g[0]), int(g[1])) for block, g in grids.items()}


def _encode_shard(atlas: Atlas, sae, sae_id: int, shard: dict, mapping: np.ndarray, batch_positions: int) -> int:
    k = sae.cfg.k
    acts, idx = [], []
    with torch.no_grad():
        for start in range(0, shard["x"].shape[0], batch_positions):
            out = sae.encode(shard["x"][start:start + batch_positions].to(sae.dtype))
            acts.append(out.top_acts.float())
            idx.append(out.top_indices)
    values, latents = torch.cat(acts).numpy(), torch.cat(idx).numpy()
    image_ids = mapping[shard["image_id"].numpy().astype(np.int64)]
    return atlas.write_codes(sae_id, np.repeat(image_ids, k), np.repeat(shard["row"].numpy(), k),
                             np.repeat(shard["col"].numpy(), k), latents.reshape(-1), values.reshape(-1))

