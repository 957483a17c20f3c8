"""Activation directories of random vectors, written by capture's own writer: for tests and benchmarks of
what reads them (ActivationSet, the training stream) at any width and size, without a model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from atlas.capture.config import CaptureConfig
from atlas.capture.record import make_manifest, marker_name, plan_prompts, prepare_dir, write_shards
from atlas.location import Location


def write_synthetic(out_dir: str | Path, n_images: int, side: int, d: int, batch_size: int = 32, block: str = "mid",
                    t: float = 1.0, branch: str = "cond", seed: int = 0) -> Path | str:
    """An activation directory of one (block, t, branch): `n_images` images of side x side positions, each a
    Gaussian vector of width `d` around a per-image mean, in batches of `batch_size` images. The prompts are
    distinct, so their splits follow the usual hash. Written a batch at a time; returns the directory."""
    out = Location(out_dir)
    config = CaptureConfig(blocks=[block], t=[float(t)], branches=[branch], seed=seed, batch_size=batch_size)
    records = plan_prompts([f"synthetic image {i}" for i in range(n_images)], seed)
    manifest = make_manifest("synthetic", "", config, 1, 1.0, n_images, side)
    prepare_dir(out, manifest, records)
    generator = torch.Generator().manual_seed(seed)
    for b, start in enumerate(range(0, n_images, batch_size)):
        ids = [r.image_id for r in records[start:start + batch_size]]
        means = torch.randn(len(ids), 1, d, generator=generator)
        x = (means + torch.randn(len(ids), side * side, d, generator=generator)).reshape(-1, d)
        marker = write_shards(out, b, ids, {(block, float(t), branch): x}, {block: block})
        out.write(marker_name(b), json.dumps(marker).encode())
    return out.local or out.uri
