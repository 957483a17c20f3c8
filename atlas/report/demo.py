"""The README's worked queries, run against a built atlas (what `atlas demo` prints after building)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from atlas.errors import NotFoundError
from atlas.store import Atlas, QueryResult
from atlas.viz import heat_overlay, image_grid

LABEL_QUERY = """
SELECT concept_id, round(mean_iou, 3) AS mean_iou, round(hit_rate, 3) AS hit_rate, support
FROM concept_labels WHERE label = 'red circle' AND t = 1.0 AND block = 'mid' AND branch = 'cond'
ORDER BY mean_iou DESC LIMIT 5"""

TOP_IMAGES_QUERY = """
WITH best AS (SELECT sae_id, latent FROM concept_labels
              WHERE label = 'striped background' AND block = 'up' AND t = 0.5 AND branch = 'cond'
              ORDER BY mean_iou DESC LIMIT 1)
SELECT c.concept_id, c.image_id, round(max(c.value), 3) AS activation, count(*) AS positions,
       any_value(i.prompt) AS prompt
FROM codes c JOIN best USING (sae_id, latent) JOIN images i ON i.id = c.image_id
GROUP BY c.concept_id, c.image_id ORDER BY activation DESC LIMIT 10"""

LAYOUT_QUERY = """
SELECT t, label, count(*) AS concepts, round(max(mean_iou), 3) AS best_iou
FROM concept_labels WHERE block = 'mid' AND branch = 'cond' AND label LIKE '%circle'
GROUP BY ALL ORDER BY label, t DESC"""

QUERIES = (
    ("Concepts predicting 'red circle' at t=1.0 in the mid block", LABEL_QUERY),
    ("Top 10 images of the up block's best 'striped background' concept at t=0.5", TOP_IMAGES_QUERY),
    ("How well the mid block's circle concepts match their masks, per timestep", LAYOUT_QUERY),
)


@dataclass
class Answer:
    title: str
    sql: str
    result: QueryResult


def answer_queries(atlas: Atlas) -> list[Answer]:
    return [Answer(title, sql.strip(), atlas.sql(sql)) for title, sql in QUERIES]


def top_images_grid(atlas: Atlas, concept: str, out: str | Path, n: int = 8) -> Path:
    """The concept's top images beside their activation maps, as one PNG."""
    hits = atlas.top_images(concept, n)
    if not hits:
        raise NotFoundError(f"concept {concept} never fires in {atlas.root}")
    tiles, labels = [], []
    for hit in hits:
        image = np.asarray(Image.open(atlas.file_path(hit.path)).convert("RGB"))
        tiles += [image, heat_overlay(image, atlas.activation_map(hit.image_id, concept))]
        labels += [f"#{hit.image_id} {hit.activation:.2f}", "map"]
    path = Path(out)
    image_grid(np.stack(tiles), labels, cols=4).save(path)
    return path
