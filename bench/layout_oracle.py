"""An upper bound for one-latent layout readouts, beside what the layout predictors reach.

For every (test image, object label) pair of an atlas, the best IoU any single latent's binarised
map (normalised to [0, 1], threshold 0.1, as `atlas link` binarises) reaches with the object mask,
picked with hindsight per pair; the same hindsight pick from another test image's codes (its chance
level: on a small grid some latent matches by luck); then the two predictors of `atlas.layout.score`
and the baseline, all on the same pairs. A predictor far below the oracle's margin over chance leaves
layout information in the codes unread. Last line:

RESULT up_t1_oracle=.. up_t1_chance=.. up_t1_weighted=.. up_t1_top_concept=.. up_t1_baseline=.. (per block, t)

    .venv/bin/python bench/layout_oracle.py --atlas demo/atlas
"""

from __future__ import annotations

import argparse

import numpy as np

from atlas.dictionary.run import annotation_source, dictionary_cells
from atlas.grids import iou
from atlas.layout.config import METHODS
from atlas.layout.score import codes_by_image, label_masks, layout_iou, scored_masks
from atlas.store import open_atlas


def best_latent_iou(mine, mask: np.ndarray) -> float:
    """The highest IoU with `mask` of any latent's binarised map in one image's codes."""
    latents, values = mine["latent"].to_numpy(), mine["value"].to_numpy().astype(np.float64)
    rows, cols = mine["row"].to_numpy(), mine["col"].to_numpy()
    best = 0.0
    for latent in np.unique(latents):
        here = latents == latent
        activation = np.zeros(mask.shape)
        activation[rows[here], cols[here]] = values[here]
        best = max(best, iou(activation > 0.1 * activation.max(), mask))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--atlas", default="demo/atlas")
    args = parser.parse_args()
    results = {}
    with open_atlas(args.atlas) as atlas:
        cells = dictionary_cells(atlas, annotation_source(atlas), ("test",))
        predicted = {(s.method, s.block, s.t, s.branch): s for s in layout_iou(atlas, methods=METHODS)}
        print("block    t  branch  pairs  oracle  chance  weighted  top-concept  baseline")
        for sae in atlas.saes():
            truth = scored_masks(label_masks(cells, (sae.grid_h, sae.grid_w)), False)
            codes = codes_by_image(atlas.sae_codes(sae.id, ("test",)))
            images = sorted(codes)
            other = {image: codes[images[(i + 1) % len(images)]] for i, image in enumerate(images)}
            oracle, chance = (float(np.mean([best_latent_iou(source[image], mask) if image in source else 0.0
                                             for (image, _), mask in truth.items()])) for source in (codes, other))
            weighted, top = (predicted[(method, sae.block, sae.t, sae.branch)]
                             for method in ("weighted", "top-concept"))
            print(f"{sae.block:5s} {sae.t:4.1f}  {sae.branch:6s}  {len(truth):5d}  {oracle:6.3f}  {chance:6.3f}  "
                  f"{weighted.iou:8.3f}  {top.iou:11.3f}  {weighted.baseline_iou:8.3f}")
            key = f"{sae.block}_t{sae.t:g}".replace(".", "") + ("" if sae.branch == "cond" else f"_{sae.branch}")
            results.update({f"{key}_oracle": oracle, f"{key}_chance": chance, f"{key}_weighted": weighted.iou,
                            f"{key}_top_concept": top.iou, f"{key}_baseline": weighted.baseline_iou})
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
