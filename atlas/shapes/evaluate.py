"""How well a model draws the shapes world, judged by the classical annotator on held-out captions."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from atlas.models.base import TextToImageModel
from atlas.models.sampler import generate
from atlas.shapes.annotator import Annotation, annotate
from atlas.shapes.world import Scene, random_scene
from atlas.tables import text_table
from atlas.viz import image_grid

# The quality bar of the shipped shapes model (issue 2).
BARS = {"objects_present": 0.90, "no_extra_objects": 0.90, "positions_respected": 0.85, "style_respected": 0.90}


@dataclass
class EvalResult:
    objects_present: float  # requested (shape, colour) objects found, over all requested objects
    all_objects_present: float  # images in which every requested object was found
    no_extra_objects: float  # images with no object beyond the requested ones
    positions_respected: float  # found objects with a named position whose centre lies there
    style_respected: float  # images whose caption names a style and that show it
    n_images: int
    n_positions: int
    n_styles: int

    def table(self) -> str:
        rows = []
        for name in ("objects_present", "all_objects_present", "no_extra_objects", "positions_respected",
                     "style_respected"):
            bar = BARS.get(name)
            value = getattr(self, name)
            rows.append((name, f"{value:.3f}", f"{bar:.2f}" if bar else "-",
                         ("yes" if value >= bar else "NO") if bar else "-"))
        return (text_table(["metric", "value", "bar", "ok"], rows) + f"\n({self.n_images} images, {self.n_positions} "
                f"named positions, {self.n_styles} named styles)")

    def passes(self) -> bool:
        return all(getattr(self, k) >= v for k, v in BARS.items())


def held_out_scenes(n: int = 256, seed: int = 0) -> list[Scene]:
    """`n` scenes whose captions are in the test split (never seen in training)."""
    rng = random.Random(f"eval-{seed}")
    return [random_scene(rng, split="test") for _ in range(n)]


def score(scenes: list[Scene], annotations: list[Annotation]) -> EvalResult:
    """Compare what the annotator found with what each caption asked for."""
    requested = found = all_found = no_extra = pos_total = pos_ok = style_total = style_ok = 0
    for scene, ann in zip(scenes, annotations):
        by_label = {}
        for obj in ann.objects:
            by_label.setdefault(obj.label, []).append(obj)
        wanted = {o.label for o in scene.objects}
        hits = 0
        for want in scene.objects:
            requested += 1
            candidates = by_label.get(want.label, [])
            if not candidates:
                continue
            hits += 1
            if want.position is not None:
                pos_total += 1
                best = max(candidates, key=lambda o: o.mask.sum())
                pos_ok += best.in_position(want.position, scene.size)
        found += hits
        all_found += hits == len(scene.objects)
        no_extra += all(o.label in wanted for o in ann.objects) and all(len(v) == 1 for v in by_label.values())
        if scene.style_named:
            style_total += 1
            style_ok += ann.style == scene.style
    n = len(scenes)
    return EvalResult(found / max(requested, 1), all_found / max(n, 1), no_extra / max(n, 1),
                      pos_ok / max(pos_total, 1), style_ok / max(style_total, 1), n, pos_total, style_total)


def evaluate(model: TextToImageModel, n: int = 256, steps: int | None = None, guidance: float | None = None,
             seed: int = 0, batch_size: int = 64, progress: bool = False) -> tuple[EvalResult, np.ndarray, list[Scene]]:
    """Generate one image per held-out caption and score it; returns (result, images, scenes)."""
    scenes = held_out_scenes(n, seed)
    images = generate(model, [s.caption for s in scenes], [seed * 100_000 + i for i in range(n)], steps, guidance,
                      batch_size=batch_size, progress=progress)
    return score(scenes, [annotate(img) for img in images]), images, scenes


def write_eval(result: EvalResult, images: np.ndarray, scenes: list[Scene], out_dir: str | Path) -> None:
    """eval.json (the figures) and eval_grid.png (the first 64 images with their captions)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({**asdict(result), "bars": BARS, "passes": result.passes()}, indent=2))
    image_grid(images[:64], [s.caption for s in scenes[:64]], cols=8).save(out / "eval_grid.png")
