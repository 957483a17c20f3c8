"""Adding an object the prompt lacks (issue 18): candidate methods side by side on one shapes atlas.

Every method adds --add ("yellow circle") to --prompt ("a blue square") in each quadrant, judged by the shapes
world's annotator with the add rule of `atlas eval-edits --kind add` (a new object of the label with its centre in
the quadrant, every object of the unedited image within 3 px of where it was, nothing else new). Each method's
strength is chosen on the prompts of --select-seed (n x 4 edits per strength) and its success reported on the
held-out prompts of --seed (--n-test x 4 edits).

    paper          the coefficient rule (concepts set to beta ||z|| in the quadrant, 0 outside), up block, early
                   window, cond half: the paper's spatial edit
    paper-all      the same rule on every block (down, mid, up) and both CFG halves, at every step with the SAE of
                   the step's window (t = 1.0 / 0.5 / 0.0)
    steer          the concepts added (z + beta ||z||) in the quadrant at every step, up block, the step's SAE
    transplant     each concept's own activation map on its top image, its centre moved to the quadrant's,
                   written (beta x the map) at every step, up block, the step's SAE
    paper-hold     paper-all with the rest of the image held to the unedited run (as the donor method holds it)
    donor-free     the donor text (atlas.edit.add) without holding the rest of the image
    donor          atlas.edit.add: the donor text in the quadrant, the rest held, the unedited objects kept

The last line is RESULT <method>=<held-out success> ... best=<index of the best method in the order above>.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from atlas.edit.add import AddEdit, generate_added
from atlas.edit.core import NAMED_REGIONS, WINDOWS, ConceptEdit, box_mask, region_to_grid
from atlas.edit.run import objects_mask, sae_path
from atlas.models import generate, load_model
from atlas.pipeline.judges import ShapesJudge, shapes_objects
from atlas.sae import Sae
from atlas.store import open_atlas
from atlas.viz import image_grid

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
SWEEPS = {"paper": (4, 16, 64, 256), "paper-all": (1, 4, 16), "steer": (1, 4, 16), "transplant": (1, 4, 16),
          "paper-hold": (1, 2, 4, 8), "donor-free": (1, 2, 4), "donor": (1, 2, 4)}


class Transplant:
    """Write each concept's own spatial pattern (its map on its top image, moved into the region) at a block."""

    def __init__(self, sae: Sae, latents: list[int], patterns: np.ndarray, block: str, steps: list[int],
                 strength: float) -> None:
        self.sae, self.block, self.steps, self.strength = sae, block, steps, strength
        self.latents = torch.tensor(latents)
        self.patterns = torch.as_tensor(patterns).float()  # (concepts, h, w)
        self.vectors = sae.W_dec.detach()[latents].float()

    def change(self, delta: torch.Tensor) -> torch.Tensor:
        n, channels, h, w = delta.shape
        half = n // 2
        x = delta[half:].permute(0, 2, 3, 1).reshape(-1, channels).float()
        with torch.no_grad():
            code = self.sae.encode(x)
        current = (code.top_acts.unsqueeze(2) * (code.top_indices.unsqueeze(2) == self.latents)).sum(1)
        target = self.strength * self.patterns.reshape(len(self.latents), -1).T.repeat(half, 1)
        coef = torch.where(target > 0, target - current, 0.0)
        out = torch.zeros_like(delta)
        out[half:] = (coef @ self.vectors).reshape(half, h, w, channels).permute(0, 3, 1, 2).to(delta.dtype)
        return out


def moved_pattern(store, concept: str, region: np.ndarray) -> np.ndarray:
    """The concept's map on its top image, shifted so its centre of mass lands on the region's centre (cells)."""
    top = store.top_images(concept, 1)
    grid = store.activation_map(top[0].image_id, concept) if top else None
    if grid is None or grid.sum() <= 0:
        return np.zeros_like(region, np.float32)
    ys, xs = np.nonzero(region)
    rows, cols = np.indices(grid.shape)
    dy = int(round(ys.mean() - (rows * grid).sum() / grid.sum()))
    dx = int(round(xs.mean() - (cols * grid).sum() / grid.sum()))
    return np.roll(np.roll(grid, dy, 0), dx, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atlas", required=True)
    parser.add_argument("--prompt", default="a blue square")
    parser.add_argument("--add", default="yellow circle")
    parser.add_argument("--n", type=int, default=6, help="prompts (x 4 quadrants) that choose each strength")
    parser.add_argument("--n-test", type=int, default=10, help="held-out prompts (x 4 quadrants)")
    parser.add_argument("--select-seed", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--methods", default=",".join(SWEEPS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--png", default="", help="directory for a PNG of each method's held-out edits")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("shapes")
    judge = ShapesJudge()
    store = open_atlas(args.atlas)
    steps, size = 20, model.spec.resolution
    saes = {(s.block, s.t): s for s in store.saes() if s.branch == "cond"}
    loaded = {key: Sae.from_pretrained(sae_path(store, info)) for key, info in saes.items()}
    concepts = {key: store.concepts(label=args.add, t=key[1], block=key[0], limit=5) for key in saes}
    pixels = {q: box_mask(NAMED_REGIONS[q], size) for q in QUADRANTS}
    windows = {name: (w, w.sae_t(sorted({t for _, t in saes}, reverse=True))) for name, w in WINDOWS.items()}

    def coefficient_edits(quadrant: str, blocks: list[str], names: list[str], strength: float, branch: str,
                          add: bool = False) -> list:
        edits = []
        for block in blocks:
            for name in names:
                window, t = windows[name]
                info, found = saes[(block, t)], concepts[(block, t)]
                if not found:
                    continue
                cells = region_to_grid(pixels[quadrant], (info.grid_h, info.grid_w), block)
                edit = ConceptEdit(loaded[(block, t)], [c.latent for c in found], block, window.steps(steps),
                                   strength, cells, branch)
                if add:
                    edit = Steer(edit)
                edits.append(edit)
        return edits

    def transplant_edits(quadrant: str, strength: float) -> list:
        edits = []
        for name in WINDOWS:
            window, t = windows[name]
            info, found = saes[("up", t)], concepts[("up", t)]
            if found:
                cells = region_to_grid(pixels[quadrant], (info.grid_h, info.grid_w), "up")
                patterns = np.stack([moved_pattern(store, c.concept_id, cells) for c in found])
                edits.append(Transplant(loaded[("up", t)], [c.latent for c in found], patterns, "up",
                                        window.steps(steps), strength))
        return edits

    def run(method: str, seed0: int, n: int, strength: float, png: str = "") -> tuple[float, float, float]:
        cases = [(seed0 + i, q) for i in range(n) for q in QUADRANTS]
        seeds = [seed0 + i for i in range(n)]
        originals = dict(zip(seeds, generate(model, [args.prompt] * n, seeds, steps, batch_size=args.batch_size)))
        ok, reached, stay, tiles, words = [], [], [], [], []
        for start in range(0, len(cases), args.batch_size):
            chunk = cases[start:start + args.batch_size]
            adds, others, hold = [], [], True
            for seed, q in chunk:
                keep = objects_mask(shapes_objects, originals[seed], args.prompt)
                donor = AddEdit(args.add, pixels[q], list(model.spec.hook_points), list(range(steps)),
                                strength if method.startswith("donor") else 0.0, round(0.125 * size), keep)
                if method == "paper":
                    adds.append([]), others.append(coefficient_edits(q, ["up"], ["early"], strength, "cond"))
                    hold = False
                elif method in ("paper-all", "paper-hold"):
                    adds.append([donor] if method == "paper-hold" else [])
                    others.append(coefficient_edits(q, ["down", "mid", "up"], list(WINDOWS), strength, "both"))
                    hold = method == "paper-hold"
                elif method == "steer":
                    adds.append([]), others.append(coefficient_edits(q, ["up"], list(WINDOWS), strength, "cond", True))
                    hold = False
                elif method == "transplant":
                    adds.append([]), others.append(transplant_edits(q, strength))
                    hold = False
                else:
                    adds.append([donor]), others.append([])
                    hold = method == "donor"
            unedited, edited = generate_added(model, [args.prompt] * len(chunk), [s for s, _ in chunk], adds, steps,
                                              concept_edits=others, hold=hold)
            for (_, q), before, after in zip(chunk, unedited, edited):
                v = judge(before, after, "add", args.add, pixels[q], args.prompt)
                ok.append(v.success), reached.append(v.reached), stay.append(bool(v.others_stay))
                tiles.append(after), words.append(f"{q}: {'success' if v.success else 'failure'}")
        if png:
            image_grid(tiles, words, cols=len(QUADRANTS), cell=96).save(png)
        return float(np.mean(ok)), float(np.mean(reached)), float(np.mean(stay))

    results = {}
    for method in args.methods.split(","):
        start = time.perf_counter()
        sweep = {s: run(method, args.select_seed, args.n, s) for s in SWEEPS[method]}
        best = max(sweep, key=lambda s: sweep[s][0])
        held = run(method, args.seed, args.n_test, best, f"{args.png}/{method}.png" if args.png else "")
        results[method] = held[0]
        line = ", ".join(f"{s:g}: {v[0]:.2f}" for s, v in sweep.items())
        print(f"| {method} | {line} | {best:g} | {held[0]:.2f} | {held[1]:.2f} | {held[2]:.2f} | "
              f"{time.perf_counter() - start:.0f} s |", flush=True)
    order = list(results)
    print("RESULT " + " ".join(f"{m.replace('-', '_')}={v:.3f}" for m, v in results.items())
          + f" best={order.index(max(order, key=results.get))}")


class Steer:
    """A concept edit that adds beta ||z|| in its region instead of setting it (and leaves the rest alone)."""

    def __init__(self, edit: ConceptEdit) -> None:
        self.edit, self.block, self.steps = edit, edit.block, edit.steps

    def change(self, delta: torch.Tensor) -> torch.Tensor:
        edit = self.edit
        n, channels, h, w = delta.shape
        rows = slice(n // 2, n) if edit.branch == "cond" else slice(0, n)
        x = delta[rows].permute(0, 2, 3, 1).reshape(-1, channels).float()
        with torch.no_grad():
            norm = edit.sae.encode(x).top_acts.float().norm(dim=1)
        inside = torch.as_tensor(edit.region.reshape(-1)).repeat(x.shape[0] // (h * w))
        coef = torch.where(inside, edit.strength * norm, 0.0).unsqueeze(1).expand(-1, len(edit.latents))
        out = torch.zeros_like(delta)
        vectors = edit.sae.W_dec.detach()[edit.latents].float()
        out[rows] = (coef @ vectors).reshape(-1, h, w, channels).permute(0, 3, 1, 2).to(delta.dtype)
        return out


if __name__ == "__main__":
    main()
