"""`atlas evolve` (and the build's evolve stage): concept trajectories and lineage, stored in the catalog.

For every (block, branch, variant), each SAE encodes the same images' activations at every captured step of its
block and branch, not only at its own t: its latents' mass, image share and mean activation per step are the
`trajectories` rows (atlas.evolution.measure: first, peak and fade t). The codes of each SAE at its own step also
give the coactivation of every pair of latents of neighbouring timesteps; with their decoder cosine that makes the
`lineage` links. Everything is written in one transaction with the stage's mark, so readers see the old tables
until the new ones are complete, and running it again replaces them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np
import pyarrow as pa
import torch

from atlas.capture import ActivationSet
from atlas.errors import NotFoundError
from atlas.evolution.config import EvolveConfig
from atlas.evolution.measure import Coactivation, Trajectories, decoder_cosine, life, lineage_links
from atlas.pipeline.encode import capture_of, encode_positions
from atlas.progress import bar as progress_bar
from atlas.sae import Sae
from atlas.store import Atlas, SaeInfo, Writer

STAGE = "evolve"


@dataclass
class EvolveResult:
    trajectories: int
    """Rows stored: (concept, step) pairs of concepts that fire at some step."""
    lineage: int
    """Links stored."""
    images: int
    """Images each SAE encoded at every step."""


def evolve_atlas(writer: Writer, config: EvolveConfig | None = None, acts: ActivationSet | None = None,
                 progress: bool = True) -> EvolveResult:
    """Compute and store the trajectories and lineage of every SAE of the atlas (see the module docstring)."""
    config = config or EvolveConfig()
    atlas = writer.atlas
    acts = acts or capture_of(atlas)
    groups: dict[tuple[str, str, str], list[SaeInfo]] = {}
    for sae in sorted(atlas.saes(), key=lambda s: -s.t):
        groups.setdefault((sae.block, sae.branch, sae.variant), []).append(sae)
    if not groups:
        raise NotFoundError(f"{atlas.root} has no SAEs yet: run `atlas encode` (or `atlas build`) first")
    batches = _batches(acts, config.max_images)
    with writer.stage():
        return _evolve(writer, config, acts, groups, batches, progress)


def _evolve(writer: Writer, config: EvolveConfig, acts: ActivationSet, groups: dict[tuple[str, str, str],
            list[SaeInfo]], batches: list[int], progress: bool) -> EvolveResult:
    atlas = writer.atlas
    trajectories, lineage = [], []
    bar = progress_bar(total=len(groups) * len(batches), unit="batch", desc="evolve", disable=not progress)
    for (block, branch, _), saes in groups.items():
        steps = sorted((t for b, t, br in acts.keys() if (b, br) == (block, branch)), reverse=True)
        if not steps:
            raise NotFoundError(f"the capture in {acts.path} holds no step of {block}/{branch}, which the SAEs "
                                f"{', '.join(s.name for s in saes)} need")
        models = {sae.id: _load(atlas, sae) for sae in saes}
        found = _measure(acts, saes, models, steps, batches, on_batch=lambda: bar.update(1))
        trajectories += [_trajectory_rows(sae, steps, found.trajectories[sae.id], config) for sae in saes]
        lineage += [_lineage_rows(a, b, found, config) for a, b in pairwise(saes) if (a.id, b.id) in found.pairs]
    bar.close()
    table, links = pa.concat_tables(trajectories), pa.concat_tables(lineage) if lineage else None
    images = int(sum(len(acts.marker(b)["image_ids"]) for b in batches))
    writer.catalog.set_evolution(table, links, info={**asdict(config), "images": images})
    return EvolveResult(table.num_rows, links.num_rows if links is not None else 0, images)


def _batches(acts: ActivationSet, max_images: int) -> list[int]:
    """The capture batches to use: all, or the first ones holding at least `max_images` images."""
    if not max_images:
        return list(acts.done)
    chosen, count = [], 0
    for batch in acts.done:
        if count >= max_images:
            break
        chosen.append(batch)
        count += len(acts.marker(batch)["image_ids"])
    return chosen


@dataclass
class _Measured:
    trajectories: dict[int, Trajectories]
    pairs: dict[tuple[int, int], Coactivation]
    decoders: dict[int, np.ndarray]


def _load(atlas: Atlas, sae: SaeInfo) -> Sae:
    if sae.path is None:
        raise NotFoundError(f"SAE {sae.name} has no checkpoint path in the catalog: encode it again")
    return Sae.from_pretrained(atlas.file_path(sae.path))


def _measure(acts: ActivationSet, saes: list[SaeInfo], models: dict[int, Sae], steps: list[float],
             batches: list[int], on_batch: Callable[[], None]) -> _Measured:
    """Encode every batch's activations at every step with every SAE of one (block, branch, variant) chain."""
    block, branch = saes[0].block, saes[0].branch
    found = _Measured({s.id: Trajectories(s.n_latents, steps) for s in saes},
                      {(a.id, b.id): Coactivation(a.n_latents, b.n_latents) for a, b in pairwise(saes)
                       if a.t in steps and b.t in steps},
                      {s.id: models[s.id].W_dec.detach().float().cpu().numpy() for s in saes})
    for batch in batches:
        shards = {t: acts.shard(block, t, branch, batch) for t in steps}
        order = {t: _position_order(shard) for t, shard in shards.items()}
        own: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for sae in saes:
            for i, t in enumerate(steps):
                indices, values = encode_positions(models[sae.id], shards[t]["x"])
                found.trajectories[sae.id].add(i, shards[t]["image_id"].numpy(), indices, values)
                if t == sae.t:
                    own[sae.id] = (indices[order[t]], values[order[t]])
        for parent, child in found.pairs:
            found.pairs[parent, child].add(own[parent], own[child])
        on_batch()
    return found


def _position_order(shard: dict[str, torch.Tensor]) -> np.ndarray:
    """The order that sorts a shard's positions by (image, row, col), so two steps' shards line up."""
    return np.lexsort((shard["col"].numpy(), shard["row"].numpy(), shard["image_id"].numpy()))


def _trajectory_rows(sae: SaeInfo, steps: list[float], found: Trajectories, config: EvolveConfig) -> pa.Table:
    """One row per (latent, step) of the SAE's latents that fire at some step."""
    stats = found.stats()
    first, peak, fade = life(steps, stats["mass"], stats["active_fraction"], config.active_fraction)
    alive = np.nonzero(stats["mass"].max(axis=0) > 0)[0]
    latents = np.tile(alive, len(steps))
    at = np.repeat(np.array(steps), len(alive))

    def column(values: np.ndarray) -> pa.Array:
        return pa.array(values, pa.float64(), from_pandas=True)  # NaN -> NULL

    return pa.table({"sae_id": pa.array(np.full(len(latents), sae.id), pa.int32()),
                     "latent": pa.array(latents, pa.int32()), "at_t": pa.array(at, pa.float64()),
                     **{name: pa.array(stats[name][:, alive].reshape(-1), pa.float64())
                        for name in ("mass", "active_fraction", "mean_activation")},
                     "first_t": column(first[latents]), "peak_t": column(peak[latents]),
                     "fade_t": column(fade[latents])})


def _lineage_rows(parent: SaeInfo, child: SaeInfo, found: _Measured, config: EvolveConfig) -> pa.Table:
    links = lineage_links(decoder_cosine(found.decoders[parent.id], found.decoders[child.id]),
                          found.pairs[parent.id, child.id].cosine(), config.links, config.min_cosine,
                          config.min_coactivation)
    n = len(links["parent"])
    return pa.table({"parent_sae_id": pa.array(np.full(n, parent.id), pa.int32()),
                     "parent_latent": pa.array(links["parent"], pa.int32()),
                     "child_sae_id": pa.array(np.full(n, child.id), pa.int32()),
                     "child_latent": pa.array(links["child"], pa.int32()),
                     **{name: pa.array(links[name], pa.float64()) for name in ("cosine", "coactivation", "score")}})
