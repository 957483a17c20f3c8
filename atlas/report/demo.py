"""The README's worked queries, run against a built atlas (what `atlas demo` prints after building).

SUMMARY_SCHEMA is the headline's answer when no concept is at its block and t: where they are instead."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from atlas.dictionary.names import ENTRY_HIT_RATE
from atlas.errors import NotFoundError
from atlas.store import Atlas, QueryResult
from atlas.viz import heat_overlay, image_grid

HEADLINE = ("red circle", "mid", 1.0)
"""The first query's label, block and t."""
LABEL_QUERY = f"""
SELECT l.concept_id, l.block, l.t, round(l.mean_iou, 3) AS mean_iou, round(l.hit_rate, 3) AS hit_rate, l.support,
       round(c.frequency, 3) AS frequency
FROM concept_labels l JOIN concepts c USING (sae_id, latent)
WHERE l.label = 'red circle' AND c.best_label = 'red circle' AND l.hit_rate >= {ENTRY_HIT_RATE}
  AND l.branch = 'cond' AND l.variant = ''
ORDER BY l.mean_iou DESC"""
"""Every concept whose best label is the headline's and that matches at least ENTRY_HIT_RATE of its objects; those
whose dictionary name is the label itself (not shared with other labels, as "red (any shape)" is) are the
dictionary's entries for it and answer the headline question."""

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
    ("Top 10 images of the up block's best 'striped background' concept at t=0.5", TOP_IMAGES_QUERY),
    ("How well the mid block's circle concepts match their masks, per timestep", LAYOUT_QUERY),
)

SUMMARY_SCHEMA = pa.schema([("block", pa.string()), ("t", pa.float64()), ("concepts", pa.int64()),
                            ("best_iou", pa.float64()), ("best_concept", pa.string())])


@dataclass
class Answer:
    title: str
    sql: str
    result: QueryResult


def answer_queries(atlas: Atlas) -> list[Answer]:
    """The headline question, then the README's other queries. The headline answers with the concepts the
    dictionary names exactly 'red circle' at t=1.0 in the mid block; when none is there, it says so and shows where
    such concepts are (block, t, how many, the best)."""
    from atlas.dictionary.names import atlas_concept_names

    label, block, t = HEADLINE
    found = atlas.sql(LABEL_QUERY)
    rows = found.table.to_pylist()
    names = atlas_concept_names(atlas, [r["concept_id"] for r in rows])
    named = [{**r, "name": names[r["concept_id"]]} for r in rows if names[r["concept_id"]] == label]
    here = [r for r in named if r["block"] == block and abs(r["t"] - t) < 1e-9][:5]
    sql = " ".join(LABEL_QUERY.split()) + f"  -- rows whose dictionary name is {label!r}"
    if here:
        headline = Answer(f"Concepts the dictionary names {label!r} at t={t} in the {block} block", sql,
                          QueryResult(pa.Table.from_pylist(here)))
    else:
        where: dict[tuple[str, float], list[dict]] = {}
        for r in named:
            where.setdefault((r["block"], r["t"]), []).append(r)
        summary = [{"block": b, "t": tt, "concepts": len(rs), "best_iou": rs[0]["mean_iou"],
                    "best_concept": rs[0]["concept_id"]} for (b, tt), rs in where.items()]
        summary.sort(key=lambda r: -r["best_iou"])
        headline = Answer(f"No concept at t={t} in the {block} block is named {label!r} by the dictionary; where "
                          "such concepts are instead", sql, QueryResult(pa.Table.from_pylist(
                              summary, schema=SUMMARY_SCHEMA)))
    return [headline, *(Answer(title, sql.strip(), atlas.sql(sql)) for title, sql in QUERIES)]


def headline_concept(answer: Answer) -> str | None:
    """The concept the headline answer puts first (its best concept when it lists places instead)."""
    rows = answer.result.table.to_pylist()
    if not rows:
        return None
    return rows[0].get("concept_id") or rows[0]["best_concept"]


def top_images_grid(atlas: Atlas, concept: str, out: str | Path, n: int = 8) -> Path:
    """The concept's top images beside their activation maps, as one PNG titled with the concept, its name and
    label, and its figures."""
    from atlas.dictionary.names import atlas_concept_names

    hits = atlas.top_images(concept, n)
    if not hits:
        raise NotFoundError(f"concept {concept} never fires in {atlas.root}")
    tiles, labels = [], []
    for hit in hits:
        image = np.asarray(Image.open(hit.path).convert("RGB"))
        tiles += [image, heat_overlay(image, atlas.activation_map(hit.image_id, concept))]
        labels += [f"#{hit.image_id} {hit.activation:.2f}", "map"]
    info = atlas.concept(concept)
    link = atlas.query("SELECT label, mean_iou, hit_rate FROM concept_labels WHERE concept_id = ? "
                       "ORDER BY mean_iou DESC LIMIT 1", [info.concept_id]).to_pylist()
    sae, latent = atlas.resolve(info.concept_id)
    fires = atlas.query("SELECT count(DISTINCT image_id) AS n FROM codes WHERE sae_id = ? AND latent = ?",
                        [sae.id, latent])["n"][0].as_py()
    total = atlas.images().num_rows
    name = atlas_concept_names(atlas, [info.concept_id])[info.concept_id] or "no dictionary label"
    title = [f"{info.concept_id}: {name}"]
    if link:
        title.append(f"best label {link[0]['label']!r}: mean IoU {link[0]['mean_iou']:.2f}, "
                     f"hit rate {link[0]['hit_rate']:.2f}")
    title.append(f"fires on {fires} of {total} images; top {len(hits)} with activation maps")
    path = Path(out)
    image_grid(np.stack(tiles), labels, cols=4, title=title).save(path)
    return path
