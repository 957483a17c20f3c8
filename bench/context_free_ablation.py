"""Context-free latents (the paper's open question 3): what changes when they are ablated during generation.

The report marks, per SAE, the latents whose firings sit at the most fixed place whatever the image (the lowest
positional spread: atlas.report.report.context_free, the same `--n` per SAE). Here their contribution to the
block's residual update is zeroed with the edit machinery (a spatial ConceptEdit of strength 0 over the whole grid:
delta' = delta - sum_c z_c f_c, the SAE's error term kept) on the steps of the window their SAE serves (early,
middle, final for t = 1.0, 0.5, 0.0), in both CFG halves, every SAE of the atlas at once. Two baselines ablate as
many other latents of each SAE: drawn at random among those firing on at least as many images as the report asks
of a context-free one (`random`), and the other latents nearest each context-free one in the number of images
they fire on (`matched`). Measured on held-out shapes captions, against the same seeds unablated:

    reconstruction  each SAE's FVU on its own captured activations (test split) with the ablated latents' terms
                    removed, minus its FVU with every latent: the variance they carry (mean over SAEs)
    shapes eval     the figures `atlas shapes eval` scores (objects present, no extra objects, positions, style)
    layout          per (image, label) found unablated, the IoU of the annotator's masks (largest object of the
                    label) in the ablated and the unablated image (1: the layout is kept); the mean pixel change

Last line: RESULT <condition>_<measure>=... for none, context_free, random and matched.

    .venv/bin/python bench/context_free_ablation.py --atlas demo/atlas --n 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from atlas.capture import ActivationSet
from atlas.edit.core import WINDOWS, ConceptEdit, edit_hooks
from atlas.models import generate, load_model
from atlas.pipeline.encode import capture_of
from atlas.report.report import CONTEXT_FREE_MIN_FIRINGS, context_free
from atlas.sae import Sae
from atlas.shapes.annotator import annotate
from atlas.shapes.evaluate import held_out_scenes, score
from atlas.store import Atlas, SaeInfo, open_atlas

CONDITIONS = ("none", "context_free", "random", "matched")
EVAL = ("objects_present", "no_extra_objects", "positions_respected", "style_respected")


def chosen_latents(atlas: Atlas, sae: SaeInfo, n: int, rng: np.random.Generator) -> dict[str, list[int]]:
    """Per condition, the latents of `sae` to ablate."""
    free = [int(r["concept_id"].rsplit("/", 1)[1]) for r in context_free(atlas, sae, n)]
    counts = atlas.query("SELECT latent, count(DISTINCT image_id) AS images FROM codes WHERE sae_id = ? "
                         "GROUP BY latent", [sae.id]).to_pylist()
    images = {r["latent"]: r["images"] for r in counts if r["latent"] not in free}
    pool = sorted(latent for latent, count in images.items() if count >= CONTEXT_FREE_MIN_FIRINGS)
    mine = {r["latent"]: r["images"] for r in counts}
    matched: list[int] = []
    for latent in free:
        options = sorted((abs(count - mine[latent]), other) for other, count in images.items() if other not in matched)
        matched.append(options[0][1])
    return {"none": [], "context_free": free, "random": rng.choice(pool, len(free), replace=False).tolist(),
            "matched": matched}


def window_steps(sae: SaeInfo, available: list[float], n_steps: int) -> list[int]:
    """The steps of the window(s) whose SAE is this one (the edit machinery's rule)."""
    return sorted(step for window in WINDOWS.values() if window.sae_t(available) == sae.t
                  for step in window.steps(n_steps))


def fvu_change(sae: Sae, acts: ActivationSet, info: SaeInfo, latents: list[int], max_positions: int) -> float:
    """FVU with `latents`' terms removed minus FVU with all, on the SAE's test-split activations (all, without)."""
    x = acts.load(info.block, info.t, info.branch, split="test")["x"][:max_positions].float()
    if not len(x):  # a small capture may hold no test image
        x = acts.load(info.block, info.t, info.branch)["x"][:max_positions].float()
    with torch.no_grad():
        code = sae.encode(x)
        values = code.top_acts.clone()
        total = (x - x.mean(0)).pow(2).sum()
        full = (x - sae.decode(values, code.top_indices)).pow(2).sum() / total
        if latents:
            values[torch.isin(code.top_indices, torch.tensor(latents))] = 0
        ablated = (x - sae.decode(values, code.top_indices)).pow(2).sum() / total
    return float(ablated - full)


def largest(objects: tuple, label: str) -> np.ndarray | None:
    found = [o.mask for o in objects if o.label == label]
    return max(found, key=lambda m: m.sum()) if found else None


def layout_kept(before: list, after: list) -> float:
    """Mean IoU, per (image, label) found before, of the label's largest mask before and after (0 if gone)."""
    ious = []
    for old, new in zip(before, after):
        for label in {o.label for o in old.objects}:
            a, b = largest(old.objects, label), largest(new.objects, label)
            ious.append(0.0 if b is None else float((a & b).sum() / max((a | b).sum(), 1)))
    return float(np.mean(ious)) if ious else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--atlas", default="demo/atlas")
    parser.add_argument("--n", type=int, default=64, help="held-out captions generated per condition")
    parser.add_argument("--latents", type=int, default=5, help="context-free latents per SAE (the report's 5)")
    parser.add_argument("--max-positions", type=int, default=20_000, help="activations per SAE for the FVU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    with open_atlas(args.atlas) as atlas:
        saes = [s for s in atlas.saes() if s.branch == "cond" and s.variant == ""]
        model = load_model(atlas.model()["source"])
        acts = capture_of(atlas)
        n_steps = model.spec.default_steps
        loaded = {s.id: Sae.from_pretrained(atlas.file_path(s.path)) for s in saes}
        picks = {s.id: chosen_latents(atlas, s, args.latents, rng) for s in saes}
    scenes = held_out_scenes(args.n, args.seed)
    prompts, seeds = [s.caption for s in scenes], [args.seed * 100_000 + i for i in range(args.n)]
    results: dict[str, dict[str, float]] = {}
    base_images = base_annotations = None
    for condition in CONDITIONS:
        edits = [ConceptEdit(loaded[s.id], picks[s.id][condition], s.block,
                             window_steps(s, sorted({x.t for x in saes if x.block == s.block}), n_steps), 0.0,
                             region=np.ones((s.grid_h, s.grid_w), bool), branch="both")
                 for s in saes if picks[s.id][condition]]
        images = generate(model, prompts, seeds, hooks=edit_hooks(edits) if edits else None, batch_size=16)
        annotations = [annotate(image) for image in images]
        if base_images is None:
            base_images, base_annotations = images, annotations
        figures = score(scenes, annotations)
        results[condition] = {
            "dfvu": float(np.mean([fvu_change(loaded[s.id], acts, s, picks[s.id][condition], args.max_positions)
                                   for s in saes])),
            **{name: getattr(figures, name) for name in EVAL},
            "layout_iou": layout_kept(base_annotations, annotations),
            "pixel_change": float(np.abs(images.astype(np.float64) - base_images).mean() / 255)}
        print(condition, " ".join(f"{k}={v:.4f}" for k, v in results[condition].items()), flush=True)
    for s in saes:
        print(f"{s.name}: context-free {picks[s.id]['context_free']}, random {picks[s.id]['random']}, "
              f"matched {picks[s.id]['matched']}")
    print(f"{len(saes)} SAEs, {args.n} images per condition, {time.perf_counter() - start:.0f} s")
    print("RESULT " + " ".join(f"{c}_{k}={v:.4f}" for c, found in results.items() for k, v in found.items()))


if __name__ == "__main__":
    main()
