"""The concept dictionary: which SAE latents depict which objects.

Linking follows PAPER.md: a latent's activation map on an image is normalised to [0, 1] (divided
by its maximum over the grid; most positions are zero because the codes are top-k sparse) and
binarised at `threshold`; its IoU with every annotated object's mask at the same grid is computed;
a latent earns an object's label when IoU > `iou` (we require `min_hits` such objects so that one
lucky overlap does not name a concept). Everything runs as one DuckDB query over Arrow tables, so
it scales to tens of millions of stored nonzeros.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from atlas.dictionary.config import LinkConfig

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
