"""The arithmetic of concept evolution, on arrays: no model, no atlas (atlas.pipeline.evolution feeds it codes).

Timesteps run in denoising order, from t = 1.0 (the first step) down to 0.0. A concept's life:

    first_t   the first t at which it is active (fires on at least `active_fraction` of the images)
    peak_t    the t of its largest mass (summed activation per image); the earlier one on a tie
    fade_t    the first t after its peak at which it is no longer active (NaN: it stays active to the end, or
              is not active at its peak)

Lineage links a concept of one SAE (parent, at t) to concepts of the SAE of the next captured step (child) by two
scores: the cosine of their decoder directions, and their coactivation, the cosine of their activation maps over
the same images and positions (each SAE encoding its own step's activations). A link's score is the geometric
mean of the two (a negative cosine counts as 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse


class Trajectories:
    """One SAE's latents encoded at each captured step: their summed activation, and the images and positions
    where they fire."""

    def __init__(self, n_latents: int, steps: Sequence[float]) -> None:
        self.n_latents = int(n_latents)
        self.steps = np.array([float(t) for t in steps])
        shape = (len(self.steps), self.n_latents)
        self.mass = np.zeros(shape)
        self.positions = np.zeros(shape, np.int64)
        self.images = np.zeros(shape, np.int64)
        self.n_images = np.zeros(len(self.steps), np.int64)

    def add(self, step: int, image_ids: np.ndarray, indices: np.ndarray, values: np.ndarray) -> None:
        """The top-k codes of some images (all of their positions) at step index `step`: image_ids (P,), indices
        and values (P, k). An image must come in one call per step."""
        n = self.n_latents
        fires = values > 0
        latents = indices[fires].astype(np.int64)
        self.mass[step] += np.bincount(latents, weights=values[fires].astype(np.float64), minlength=n)
        self.positions[step] += np.bincount(latents, minlength=n)
        images = np.broadcast_to(np.asarray(image_ids, np.int64)[:, None], indices.shape)[fires]
        self.images[step] += np.bincount(np.unique(images * n + latents) % n, minlength=n)
        self.n_images[step] += len(np.unique(image_ids))

    def stats(self) -> dict[str, np.ndarray]:
        """(steps, n_latents) arrays: mass (summed activation per image), active_fraction (share of images it
        fires on) and mean_activation (its mean where it fires; 0 where it never does)."""
        per_image = np.maximum(self.n_images, 1)[:, None]
        mean = np.divide(self.mass, self.positions, out=np.zeros_like(self.mass), where=self.positions > 0)
        return {"mass": self.mass / per_image, "active_fraction": self.images / per_image, "mean_activation": mean}


def life(steps: Sequence[float], mass: np.ndarray, active_fraction: np.ndarray,
         threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each concept's first_t, peak_t and fade_t (see the module docstring; NaN for none) from (steps, n) arrays
    whose rows follow `steps` in any order."""
    order = np.argsort(-np.asarray(steps, np.float64), kind="stable")
    ts = np.asarray(steps, np.float64)[order]
    mass, active = mass[order], (active_fraction[order] >= threshold) & (active_fraction[order] > 0)
    n = mass.shape[1]
    ever = active.any(axis=0)
    first = np.where(ever, ts[active.argmax(axis=0)], np.nan)
    peak_index = mass.argmax(axis=0)
    peak = np.where(mass.max(axis=0) > 0, ts[peak_index], np.nan)
    after = np.arange(len(ts))[:, None] > peak_index[None, :]
    gone = ~active & after
    at_peak = active[peak_index, np.arange(n)]
    fade = np.where(at_peak & gone.any(axis=0), ts[gone.argmax(axis=0)], np.nan)
    return first, peak, fade


class Coactivation:
    """How two SAEs' latents fire together on the same positions: the cosine of every pair's activation maps."""

    def __init__(self, n_parent: int, n_child: int) -> None:
        self.dot = np.zeros((n_parent, n_child))
        self.parent_sq = np.zeros(n_parent)
        self.child_sq = np.zeros(n_child)

    @staticmethod
    def _matrix(indices: np.ndarray, values: np.ndarray, n: int) -> sparse.csr_matrix:
        rows, k = indices.shape
        return sparse.csr_matrix((values.reshape(-1).astype(np.float64), indices.reshape(-1).astype(np.int64),
                                  np.arange(0, rows * k + 1, k)), shape=(rows, n))

    def add(self, parent: tuple[np.ndarray, np.ndarray], child: tuple[np.ndarray, np.ndarray]) -> None:
        """Top-k (indices, values), each (P, k), of the two SAEs on the same P positions, in the same order."""
        a = self._matrix(*parent, len(self.parent_sq))
        b = self._matrix(*child, len(self.child_sq))
        pairs = (a.T @ b).tocoo()  # a matrix product sums duplicates: each (parent, child) once
        self.dot[pairs.row, pairs.col] += pairs.data
        self.parent_sq += np.asarray(a.multiply(a).sum(axis=0)).ravel()
        self.child_sq += np.asarray(b.multiply(b).sum(axis=0)).ravel()

    def cosine(self) -> np.ndarray:
        """(n_parent, n_child) cosine of the activation maps; 0 for a latent that never fired."""
        norm = np.sqrt(np.outer(self.parent_sq, self.child_sq))
        return np.divide(self.dot, norm, out=np.zeros_like(self.dot), where=norm > 0)


def decoder_cosine(parent: np.ndarray, child: np.ndarray) -> np.ndarray:
    """(n_parent, n_child) cosine of decoder rows."""
    def unit(w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, np.float64)
        return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)

    return unit(parent) @ unit(child).T


def lineage_links(cosine: np.ndarray, coactivation: np.ndarray, links: int, min_cosine: float = 0.0,
                  min_coactivation: float = 0.0) -> dict[str, np.ndarray]:
    """The kept links between parents (rows) and children (columns): each parent's `links` best children and each
    child's `links` best parents by score, among pairs that reach both minimums and score above 0. Returns
    parent, child, cosine, coactivation, score arrays, ordered by parent then best score first."""
    score = np.sqrt(np.clip(cosine, 0, None) * np.clip(coactivation, 0, None))
    ok = (cosine >= min_cosine) & (coactivation >= min_coactivation) & (score > 0)
    ranked = np.where(ok, score, -1.0)
    keep = np.zeros_like(ok)
    for axis in (1, 0):
        n = min(links, ranked.shape[axis])
        if n == 0:
            continue
        best = np.argsort(-ranked, axis=axis, kind="stable").take(range(n), axis=axis)
        np.put_along_axis(keep, best, True, axis=axis)
    parent, child = np.nonzero(keep & ok)
    order = np.lexsort((child, -score[parent, child], parent))
    parent, child = parent[order], child[order]
    return {"parent": parent, "child": child, "cosine": cosine[parent, child],
            "coactivation": coactivation[parent, child], "score": score[parent, child]}
