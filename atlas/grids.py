"""Masks on a block's grid: image-resolution masks pooled to grid cells, and the overlap of two masks.

The concept dictionary compares SAE activation maps (one value per grid cell of a hooked block) with
object masks, so masks at image resolution are pooled to each block's grid here, by exact area averaging.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from atlas.errors import BadInputError


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: the fraction of output cell i covered by input pixel p (rows sum to 1)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    p = np.arange(n_in)
    overlap = np.minimum(p + 1, edges[1:, None]) - np.maximum(p, edges[:-1, None])
    return np.clip(overlap, 0.0, None) / (n_in / n_out)


def _coverage(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim < 2:
        raise BadInputError(f"mask has shape {mask.shape}; expected (..., H, W)")
    gh, gw = grid_hw
    if gh < 1 or gw < 1:
        raise BadInputError(f"grid {grid_hw} must be at least 1x1")
    wy, wx = _pool_matrix(mask.shape[-2], gh), _pool_matrix(mask.shape[-1], gw)
    return np.einsum("ih,...hw,jw->...ij", wy, mask.astype(np.float64), wx)


def grid_coverage(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Fraction of each grid cell the mask covers, float32 (..., gh, gw).

    Exact area averaging: cells need not hold a whole number of pixels (e.g. 30 px -> 8 cells), so any
    image size meets any grid without resampling artefacts.
    """
    return _coverage(mask, grid_hw).astype(np.float32)


def mask_to_grid(mask: np.ndarray, grid_hw: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """Bool (..., gh, gw): cells whose coverage is at least `threshold` (in (0, 1]; 0.5 = half the cell)."""
    if not 0.0 < threshold <= 1.0:
        raise BadInputError(f"threshold {threshold} must be in (0, 1]")
    return _coverage(mask, grid_hw) >= threshold - 1e-9


def mask_cells(object_ids: np.ndarray, image_ids: np.ndarray, labels: list[str], grid_masks: np.ndarray) -> pa.Table:
    """Turn per-object boolean grid masks (N, H, W) into the long `object_cells` table `link` expects."""
    n, rows, cols = np.nonzero(grid_masks)
    return pa.table({"object_id": np.asarray(object_ids)[n], "image_id": np.asarray(image_ids)[n],
                     "label": pa.array([labels[i] for i in n], pa.string()), "row": rows.astype(np.int16),
                     "col": cols.astype(np.int16)})


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; two empty masks have IoU 0 (nothing was predicted right)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
