"""Layout prediction (PAPER.md, composition prediction): where will an object be, read off an early step?

At each grid position the most active labelled concept votes with its concept embedding (the mean
of its labels' text embeddings); positions whose embedding is close to the target label's form the
predicted mask. `layout_iou` scores this on the atlas's test images against the objects the
annotator found in the final images, beside a baseline that never looks at the model: the label's
average mask over the dictionary images, thresholded where that baseline scores best. The similarity
threshold is chosen the same way by default, per SAE on the dictionary images: label embeddings of
related labels lie close ('red circle' and 'blue circle' at 0.74 with MiniLM), so one fixed threshold
fits some grids and misses others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas.concepts import TextEmbedder, iou, predict_layout
from atlas.jobs.link import DICTIONARY_SPLITS, annotation_source, dictionary_cells
from atlas.store import Atlas, SaeInfo


@dataclass
class LayoutConfig:
    """Options of layout prediction."""

    similarity: float | None = None
    """A position is predicted when its concept's embedding has more than this cosine similarity to the label's
    (None: per SAE, the threshold of SIMILARITIES that scores best on the dictionary images)."""
    include_backgrounds: bool = False
    """Also score background labels (style), not only objects."""


SIMILARITIES = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@dataclass(frozen=True)
class LayoutScore:
    block: str
    t: float
    iou: float  # mean over (test image, label) pairs
    baseline_iou: float
    pairs: int
    similarity: float  # the threshold used (chosen on the dictionary images unless configured)


def label_vectors(atlas: Atlas, embedder: TextEmbedder) -> dict[str, np.ndarray]:
    """The text embedding of every label of the atlas, computed once for all SAEs."""
    labels = atlas.labels()
    return dict(zip(labels, embedder.embed(labels))) if labels else {}


def concept_vectors(atlas: Atlas, sae: SaeInfo, vectors: dict[str, np.ndarray], dim: int) -> np.ndarray:
    """(n_latents, dim) unit concept embeddings: the mean of each concept's label embeddings; zero when unlabelled."""
    rows = atlas.sql(f"SELECT latent, label FROM concept_labels WHERE sae_id = {sae.id}", max_rows=10_000_000)
    out = np.zeros((sae.n_latents, dim), np.float32)
    for latent, label in rows.rows:
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
    mine = cells.filter(pc.and_(pc.equal(cells["grid_h"], grid[0]), pc.equal(cells["grid_w"], grid[1])))
    masks: dict[tuple[int, str], np.ndarray] = {}
    for image_id, label, row, col in zip(*(mine[c].to_pylist() for c in ("image_id", "label", "row", "col"))):
        masks.setdefault((image_id, label), np.zeros(grid, bool))[row, col] = True
    return masks


def scored_masks(masks: dict[tuple[int, str], np.ndarray],
                 include_backgrounds: bool) -> dict[tuple[int, str], np.ndarray]:
    """label_masks without the background labels (the style) unless `include_backgrounds`."""
    return {key: m for key, m in masks.items() if include_backgrounds or not key[1].endswith("background")}


def baseline_masks(train: dict[tuple[int, str], np.ndarray]) -> dict[str, np.ndarray]:
    """Per label: its average mask, thresholded at the level that maximises IoU on the dictionary images."""
    by_label: dict[str, list[np.ndarray]] = {}
    for (_, label), mask in train.items():
        by_label.setdefault(label, []).append(mask)
    out = {}
    for label, masks in by_label.items():
        mean = np.mean(masks, axis=0)
        levels = np.unique(mean)
        scores = [np.mean([iou(mean >= level, m) for m in masks]) for level in levels]
        out[label] = mean >= levels[int(np.argmax(scores))]
    return out


def mean_layout_iou(codes: dict[int, pa.Table], truth: dict[tuple[int, str], np.ndarray], concepts: np.ndarray,
                    vectors: dict[str, np.ndarray], sae: SaeInfo, similarity: float) -> float:
    """Mean IoU of predicted vs. annotated masks over (image, label) pairs, from the images' codes of one SAE."""
    grid = (sae.grid_h, sae.grid_w)
    ious = []
    for (image_id, label), mask in truth.items():
        mine = codes.get(image_id)
        predicted = np.zeros(grid, bool) if mine is None else predict_layout(
            *top_codes(mine, grid, sae.k), concepts, vectors[label], similarity)
        ious.append(iou(predicted, mask))
    return float(np.mean(ious)) if ious else 0.0


def fit_similarity(atlas: Atlas, sae: SaeInfo, train: dict[tuple[int, str], np.ndarray], concepts: np.ndarray,
                   vectors: dict[str, np.ndarray]) -> float:
    """The threshold of SIMILARITIES that scores best on the dictionary images' (image, label) masks `train`."""
    codes = codes_by_image(atlas.sae_codes(sae.id, DICTIONARY_SPLITS))
    fit = [mean_layout_iou(codes, train, concepts, vectors, sae, s) for s in SIMILARITIES]
    return SIMILARITIES[int(np.argmax(fit))]


def layout_iou(atlas: Atlas, config: LayoutConfig | None = None, source: str | None = None,
               embedder: TextEmbedder | None = None, splits: tuple[str, ...] = ("test",)) -> list[LayoutScore]:
    """Mean IoU of predicted vs. annotated masks on the images of `splits` (the held-out test split by default),
    per SAE, with the average-mask baseline."""
    config = config or LayoutConfig()
    embedder = embedder or TextEmbedder()
    source = annotation_source(atlas, source)
    test_cells = dictionary_cells(atlas, source, splits)
    dict_cells = dictionary_cells(atlas, source, DICTIONARY_SPLITS)
    if test_cells.num_rows == 0:
        raise ValueError(f"{atlas.root} has no annotated {'/'.join(splits)} images to score layout prediction on")
    vectors = label_vectors(atlas, embedder)
    dim = len(next(iter(vectors.values())))
    scores = []
    by_grid: dict[tuple[int, int], tuple[dict, dict, dict]] = {}
    for sae in atlas.saes():
        grid = (sae.grid_h, sae.grid_w)
        if grid not in by_grid:
            dictionary = label_masks(dict_cells, grid)
            by_grid[grid] = (scored_masks(label_masks(test_cells, grid), config.include_backgrounds),
                             scored_masks(dictionary, config.include_backgrounds), baseline_masks(dictionary))
        truth, train, baseline = by_grid[grid]
        concepts = concept_vectors(atlas, sae, vectors, dim)
        similarity = config.similarity
        if similarity is None:
            similarity = fit_similarity(atlas, sae, train, concepts, vectors)
        test = codes_by_image(atlas.sae_codes(sae.id, splits))
        base = [iou(baseline.get(label, np.zeros(grid, bool)), mask) for (_, label), mask in truth.items()]
        scores.append(LayoutScore(sae.block, sae.t, mean_layout_iou(test, truth, concepts, vectors, sae, similarity),
                                  float(np.mean(base)), len(truth), similarity))
    return scores


@dataclass
class PromptLayout:
    """One prompt's predicted mask (from the step at t) beside the mask the annotator finds in the final image."""

    image: np.ndarray  # (H, W, 3) uint8 final image
    predicted: np.ndarray  # (gh, gw) bool
    annotated: np.ndarray  # (gh, gw) bool
    iou: float
    similarity: float  # the threshold used


def atlas_model_name(atlas: Atlas) -> str:
    names = [r[0] for r in atlas.sql("SELECT coalesce(path, name) FROM models ORDER BY id").rows]
    if not names:
        raise ValueError(f"{atlas.root} records no model; build it with `atlas build` or `atlas encode`")
    return names[0]


def predict_prompt(atlas: Atlas, prompt: str, label: str, t: float = 1.0, block: str = "mid", seed: int = 0,
                   config: LayoutConfig | None = None, embedder: TextEmbedder | None = None) -> PromptLayout:
    """Generate `prompt`, read its codes at (block, t) through the atlas's SAE, predict where `label` goes."""
    import torch

    from atlas.annotate import get_annotator, mask_to_grid
    from atlas.capture import delta_at
    from atlas.jobs.annotate import COVERAGE
    from atlas.models import load_model, t_to_step
    from atlas.sae import Sae

    config = config or LayoutConfig()
    embedder = embedder or TextEmbedder()
    sae_info = next((s for s in atlas.saes() if s.block == block and s.t == float(t) and s.branch == "cond"), None)
    if sae_info is None:
        have = sorted({(s.block, s.t) for s in atlas.saes()})
        raise ValueError(f"no cond SAE for block {block!r} at t={t}; this atlas has {have}")
    if label not in atlas.labels():
        atlas.concepts(label=label)  # raises UnknownLabelError with close labels
    model = load_model(atlas_model_name(atlas))
    steps = model.spec.default_steps
    latents, cond = delta_at(model, [prompt], [seed], block, t_to_step(t, steps), steps=steps)
    image = model.to_uint8(model.decode(latents))[0]
    delta = cond[0].permute(1, 2, 0).reshape(-1, cond.shape[1]).float()
    sae = Sae.from_pretrained(atlas.file_path(sae_info.path))
    with torch.no_grad():
        out = sae.encode(delta)
    grid = (sae_info.grid_h, sae_info.grid_w)
    latents = out.top_indices.numpy().reshape(*grid, -1)
    values = out.top_acts.numpy().reshape(*grid, -1)
    vectors = label_vectors(atlas, embedder)
    concepts = concept_vectors(atlas, sae_info, vectors, len(vectors[label]))
    source = annotation_source(atlas)
    similarity = config.similarity
    if similarity is None:
        train = scored_masks(label_masks(dictionary_cells(atlas, source, DICTIONARY_SPLITS), grid),
                             config.include_backgrounds)
        similarity = fit_similarity(atlas, sae_info, train, concepts, vectors)
    predicted = predict_layout(latents, values, concepts, vectors[label], similarity)
    found = get_annotator(source).annotate([image], [prompt])[0]
    masks = [o.mask for o in found if o.label == label]
    annotated = mask_to_grid(np.any(masks, axis=0), grid, COVERAGE) if masks else np.zeros(grid, bool)
    return PromptLayout(image, predicted, annotated, iou(predicted, annotated), similarity)
