"""Layout prediction (PAPER.md, composition prediction): where will an object be, read off an early step?

Three predictors, each scored by `layout_iou` on the atlas's test images against the objects the
annotator found in the final images, beside two baselines that never look at the model: the label's
average mask over the dictionary images, and the caption-aware one (when the caption names the object's
position, the average dictionary mask of that position, whatever the label: atlas.layout.captions), each
thresholded where it scores best on the dictionary images. Scores are also given on the test pairs whose
caption names no position, where the caption gives nothing away.

- `top-concept`, the paper's rule: at each grid position the top concept (the most active of its codes) votes
  with its concept embedding (the mean of its labels' text embeddings); positions whose embedding is close to
  the target label's form the predicted mask; an unlabelled top concept predicts nothing.
- `top-labelled`, a more generous vote: the most active concept that has a label votes.
- `weighted`: every active concept adds its activation times how well its maps matched the label's
  objects on the dictionary images (`label_weights`); positions above a fraction of the image's best
  score form the mask. Early in denoising few concepts pass the paper's IoU > 0.5 rule and those that
  do fire wider than the objects, so the top-concept vote misses most of the layout the codes hold.

Each predictor's threshold (similarity or fraction) is chosen per SAE on the dictionary images, as the
baseline's is: label embeddings of related labels lie close ('red circle' and 'blue circle' at 0.74
with MiniLM), so one fixed similarity fits some grids and misses others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from atlas.dictionary.config import LinkConfig
from atlas.dictionary.link import link
from atlas.dictionary.run import DICTIONARY_SPLITS, annotation_source, dictionary_cells, grid_cells
from atlas.errors import NotFoundError
from atlas.grids import iou
from atlas.layout.captions import named_position
from atlas.layout.config import THRESHOLDS, LayoutConfig, check_method
from atlas.layout.predict import predict_layout, weighted_layout
from atlas.models.text import TextEmbedder
from atlas.store import Atlas, SaeInfo


@dataclass(frozen=True)
class LayoutScore:
    """Layout prediction by one SAE (block, t, branch, variant) with one method."""

    block: str
    t: float
    branch: str
    variant: str
    method: str
    iou: float  # mean over (test image, label) pairs
    baseline_iou: float  # the label's average mask
    pairs: int
    threshold: float  # the one used (chosen on the dictionary images unless configured)
    caption_baseline_iou: float  # the named position's average mask where the caption names one
    unnamed_pairs: int  # pairs whose caption names no position for the label
    unnamed_iou: float  # the method's mean IoU on those (nan when none)
    unnamed_baseline_iou: float  # the average-mask baseline on those (both baselines agree there)


Predictor = Callable[[np.ndarray, np.ndarray, str, float], np.ndarray]
"""(latents, values, label, threshold) -> predicted (H, W) mask of one image."""


def label_vectors(atlas: Atlas, embedder: TextEmbedder) -> dict[str, np.ndarray]:
    """The text embedding of every label of the atlas, computed once for all SAEs."""
    labels = atlas.labels()
    return dict(zip(labels, embedder.embed(labels))) if labels else {}


def concept_vectors(atlas: Atlas, sae: SaeInfo, vectors: dict[str, np.ndarray], dim: int) -> np.ndarray:
    """(n_latents, dim) unit concept embeddings: the mean of each concept's label embeddings; zero when unlabelled."""
    rows = atlas.query("SELECT latent, label FROM concept_labels WHERE sae_id = ?", [sae.id]).to_pylist()
    out = np.zeros((sae.n_latents, dim), np.float32)
    for row in rows:
        out[row["latent"]] += vectors[row["label"]]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


def linked_vectors(stats: pa.Table, n_latents: int, vectors: dict[str, np.ndarray], min_hits: int) -> np.ndarray:
    """concept_vectors from `link` statistics instead of the stored dictionary: each latent's labels are those whose
    pairs pass the IoU rule at least `min_hits` times (to measure the dictionary's own rules)."""
    dim = len(next(iter(vectors.values())))
    out = np.zeros((n_latents, dim), np.float32)
    for latent, label, hits in zip(*(stats[c].to_pylist() for c in ("latent", "label", "hits"))):
        if hits >= min_hits and label in vectors:
            out[latent] += vectors[label]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


def codes_by_image(codes: pa.Table) -> dict[int, pa.Table]:
    """A long codes table split into one table per image, in one sort (filtering per image is quadratic)."""
    codes = codes.sort_by("image_id")
    ids = codes["image_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(ids)]
    return {int(ids[a]): codes.slice(a, b - a) for a, b in zip(starts, ends)}


def top_codes(mine: pa.Table, grid: tuple[int, int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, k) latents and values of one image's codes (missing slots: latent 0, value 0)."""
    latents = np.zeros((*grid, k), np.int64)
    values = np.zeros((*grid, k), np.float32)
    row, col = mine["row"].to_numpy().astype(int), mine["col"].to_numpy().astype(int)
    # Ties in (fp16-stored) values are common and rows arrive in any order: break them by latent id.
    order = np.lexsort((mine["latent"].to_numpy(), -mine["value"].to_numpy(), col, row))
    row, col = row[order], col[order]
    slot = np.zeros(len(row), int)
    if len(row):
        same = np.r_[False, (row[1:] == row[:-1]) & (col[1:] == col[:-1])]
        starts = np.flatnonzero(~same)
        slot = np.arange(len(row)) - np.repeat(starts, np.diff(np.r_[starts, len(row)]))
    keep = slot < k
    latents[row[keep], col[keep], slot[keep]] = mine["latent"].to_numpy()[order][keep]
    values[row[keep], col[keep], slot[keep]] = mine["value"].to_numpy()[order][keep]
    return latents, values


def label_masks(cells: pa.Table, grid: tuple[int, int]) -> dict[tuple[int, str], np.ndarray]:
    """(image_id, label) -> union of that label's object cells on one grid."""
    mine = grid_cells(cells, grid)
    masks: dict[tuple[int, str], np.ndarray] = {}
    for image_id, label, row, col in zip(*(mine[c].to_pylist() for c in ("image_id", "label", "row", "col"))):
        masks.setdefault((image_id, label), np.zeros(grid, bool))[row, col] = True
    return masks


def scored_masks(masks: dict[tuple[int, str], np.ndarray],
                 include_backgrounds: bool) -> dict[tuple[int, str], np.ndarray]:
    """label_masks without the background labels (the style) unless `include_backgrounds`."""
    return {key: m for key, m in masks.items() if include_backgrounds or not key[1].endswith("background")}


def baseline_masks(train: dict[tuple[int, str], np.ndarray],
                   key: Callable[[int, str], str | None] = lambda image_id, label: label) -> dict[str, np.ndarray]:
    """Per label (or per `key(image_id, label)`, pairs keyed None left out): the average mask, thresholded at the
    level that maximises IoU on the dictionary images."""
    by_label: dict[str, list[np.ndarray]] = {}
    for (image_id, label), mask in train.items():
        if (name := key(image_id, label)) is not None:
            by_label.setdefault(name, []).append(mask)
    out = {}
    for label, masks in by_label.items():
        mean = np.mean(masks, axis=0)
        levels = np.unique(mean)
        scores = [np.mean([iou(mean >= level, m) for m in masks]) for level in levels]
        out[label] = mean >= levels[int(np.argmax(scores))]
    return out


def label_weights(codes: pa.Table, cells: pa.Table, n_latents: int) -> dict[str, np.ndarray]:
    """Per label: (n_latents,) mean IoU of each latent's maps with the label's objects (`link` on the dictionary
    images' `codes` and object `cells` of the SAE's grid), whether or not the pair passes the paper's rule."""
    stats = link(codes, cells)
    weights: dict[str, np.ndarray] = {}
    for latent, label, value in zip(*(stats[c].to_numpy(zero_copy_only=False)
                                      for c in ("latent", "label", "mean_iou"))):
        weights.setdefault(label, np.zeros(n_latents, np.float32))[latent] = value
    return weights


def make_predictor(atlas: Atlas, sae: SaeInfo, method: str, vectors: dict[str, np.ndarray],
                   dictionary_codes: pa.Table, cells: pa.Table, concepts: np.ndarray | None = None) -> Predictor:
    """The layout predictor `method` for one SAE, from its concept dictionary (`cells`: all grids' object cells
    of the dictionary images); the votes use `concepts` (concept embeddings) when given, else the stored labels."""
    if method in ("top-concept", "top-labelled"):
        if concepts is None:
            concepts = concept_vectors(atlas, sae, vectors, len(next(iter(vectors.values()))))
        labelled_only = method == "top-labelled"
        return lambda latents, values, label, threshold: predict_layout(latents, values, concepts, vectors[label],
                                                                        threshold, labelled_only)
    weights = label_weights(dictionary_codes, grid_cells(cells, (sae.grid_h, sae.grid_w)), sae.n_latents)
    none = np.zeros(sae.n_latents, np.float32)
    return lambda latents, values, label, threshold: weighted_layout(latents, values, weights.get(label, none),
                                                                     threshold)


Tops = dict[int, tuple[np.ndarray, np.ndarray]]
"""image_id -> (latents, values) of its top codes on one SAE's grid (`top_codes`)."""


def image_tops(codes: dict[int, pa.Table], sae: SaeInfo) -> Tops:
    """`top_codes` of every image of `codes` (per image, from `codes_by_image`), computed once for all the labels
    and thresholds scored on them."""
    grid = (sae.grid_h, sae.grid_w)
    return {image_id: top_codes(mine, grid, sae.k) for image_id, mine in codes.items()}


def pair_ious(tops: Tops, truth: dict[tuple[int, str], np.ndarray], predict: Predictor, sae: SaeInfo,
              threshold: float) -> dict[tuple[int, str], float]:
    """IoU of predicted vs. annotated mask per (image, label) pair, from the images' top codes of one SAE."""
    none = np.zeros((sae.grid_h, sae.grid_w), bool)
    ious = {}
    for (image_id, label), mask in truth.items():
        mine = tops.get(image_id)
        predicted = none if mine is None else predict(*mine, label, threshold)
        ious[image_id, label] = iou(predicted, mask)
    return ious


def mean_layout_iou(tops: Tops, truth: dict[tuple[int, str], np.ndarray], predict: Predictor, sae: SaeInfo,
                    threshold: float) -> float:
    """Mean IoU of predicted vs. annotated masks over (image, label) pairs, from the images' top codes of one SAE."""
    ious = pair_ious(tops, truth, predict, sae, threshold)
    return float(np.mean(list(ious.values()))) if ious else 0.0


def fit_threshold(dictionary_codes: pa.Table, train: dict[tuple[int, str], np.ndarray], predict: Predictor,
                  sae: SaeInfo, method: str, threshold: float | None = None, tops: Tops | None = None) -> float:
    """`threshold` when given, else the value of THRESHOLDS[method] that scores best on the dictionary images'
    (image, label) masks `train` (`tops`: those images' top codes, when already computed)."""
    if threshold is not None:
        return threshold
    tops = image_tops(codes_by_image(dictionary_codes), sae) if tops is None else tops
    candidates = THRESHOLDS[method]
    fit = [mean_layout_iou(tops, train, predict, sae, x) for x in candidates]
    return candidates[int(np.argmax(fit))]


@dataclass(frozen=True)
class DictionaryRule:
    """A concept dictionary built in memory for the vote predictors, to measure the stored one's rules: the paper's
    IoU rule on the codes of `splits` images, a label earned after `min_hits` matching objects."""

    min_hits: int = LinkConfig.min_hits
    splits: tuple[str, ...] = DICTIONARY_SPLITS


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def layout_iou(atlas: Atlas, config: LayoutConfig | None = None, source: str | None = None,
               embedder: TextEmbedder | None = None, splits: tuple[str, ...] = ("test",),
               methods: tuple[str, ...] = (), rule: DictionaryRule | None = None) -> list[LayoutScore]:
    """Mean IoU of predicted vs. annotated masks on the images of `splits` (the held-out test split by default),
    per SAE and method of `methods` (default: the config's), with the average-mask and caption-aware baselines,
    and the same on the pairs whose caption names no position. Each SAE's codes and masks are read once for all
    methods. With `rule`, the vote predictors use a dictionary linked in memory by that rule instead of the
    stored one."""
    config = config or LayoutConfig()
    methods = methods or (config.method,)
    for method in methods:
        check_method(method)
    embedder = embedder or TextEmbedder()
    source = annotation_source(atlas, source)
    test_cells = dictionary_cells(atlas, source, splits)
    dict_cells = dictionary_cells(atlas, source, DICTIONARY_SPLITS)
    if test_cells.num_rows == 0:
        raise NotFoundError(f"{atlas.root} has no annotated {'/'.join(splits)} images to score layout prediction on")
    vectors = label_vectors(atlas, embedder)
    images = atlas.images()
    prompts = dict(zip(images["id"].to_pylist(), images["prompt"].to_pylist()))

    def position(image_id: int, label: str) -> str | None:
        return named_position(prompts.get(image_id) or "", label)

    scores = []
    by_grid: dict[tuple[int, int], tuple[dict, ...]] = {}
    for sae in atlas.saes():
        grid = (sae.grid_h, sae.grid_w)
        if grid not in by_grid:
            dictionary = label_masks(dict_cells, grid)
            by_grid[grid] = (scored_masks(label_masks(test_cells, grid), config.include_backgrounds),
                             scored_masks(dictionary, config.include_backgrounds), baseline_masks(dictionary),
                             baseline_masks(dictionary, position))
        truth, train, baseline, by_position = by_grid[grid]
        none = np.zeros(grid, bool)
        named = {key: position(*key) for key in truth}
        base = {key: iou(baseline.get(key[1], none), mask) for key, mask in truth.items()}
        caption = {key: iou(by_position[named[key]], mask) if named[key] in by_position else base[key]
                   for key, mask in truth.items()}
        unnamed = [key for key in truth if named[key] is None]
        dictionary_codes = atlas.sae_codes(sae.id, DICTIONARY_SPLITS)
        test = image_tops(codes_by_image(atlas.sae_codes(sae.id, splits)), sae)
        fitted = image_tops(codes_by_image(dictionary_codes), sae)
        concepts = None
        if rule is not None:
            stats = link(atlas.sae_codes(sae.id, rule.splits), grid_cells(dictionary_cells(atlas, source, rule.splits),
                                                                          grid), LinkConfig(min_hits=1))
            concepts = linked_vectors(stats, sae.n_latents, vectors, rule.min_hits)
        for method in methods:
            predict = make_predictor(atlas, sae, method, vectors, dictionary_codes, dict_cells, concepts)
            threshold = fit_threshold(dictionary_codes, train, predict, sae, method, config.threshold, fitted)
            ious = pair_ious(test, truth, predict, sae, threshold)
            scores.append(LayoutScore(sae.block, sae.t, sae.branch, sae.variant, method, _mean(list(ious.values())),
                                      _mean(list(base.values())), len(truth), threshold,
                                      _mean(list(caption.values())), len(unnamed), _mean([ious[k] for k in unnamed]),
                                      _mean([base[k] for k in unnamed])))
    return scores
