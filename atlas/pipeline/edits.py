"""`atlas edit` with the atlas model's judge, and `atlas eval-edits`: the paper's intervention protocol (its
Tables 4 and 5) on a shapes atlas.

    spatial  n one-object prompts x 4 quadrants x windows x strengths: the object's concepts are set to
             beta * ||z|| in the quadrant and 0 elsewhere; success = its centre of mass lands in the quadrant
             (random = 0.25; the unedited images' rate is reported as the baseline)
    style    n one-object prompts on a plain background x windows x strengths: the 'striped background'
             concepts are added everywhere; success = the background reads striped and the objects stay put

Every case also records the pixel change to the unedited image. The curves (success and pixel change per
window and strength) go to <atlas>/edits/curves.json, where `atlas edit --when auto` reads them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from atlas.edit.config import EditConfig, EvalEditsConfig, parse_concepts_t
from atlas.edit.core import WINDOWS, ConceptEdit, box_mask, parse_window, region_to_grid
from atlas.edit.curves import write_curve
from atlas.edit.plan import DEFAULT_STRENGTH, check_concepts_t
from atlas.edit.run import EditResult, atlas_model, pixel_change, sae_path
from atlas.edit.run import edit as run_edit
from atlas.errors import BadInputError, NotFoundError
from atlas.files import atomic_write
from atlas.models import Hooks, TextToImageModel, generate, load_model
from atlas.models.hooks import StepInfo
from atlas.pipeline.presets import judge_for
from atlas.sae import Sae
from atlas.shapes.annotator import annotate
from atlas.shapes.judge import main_object, moved_into, styled
from atlas.shapes.world import COLORS, POSITIONS, SHAPES
from atlas.store import Atlas

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
STYLE_TARGET = "striped background"
PAPER = {"spatial": {"early": 0.80, "middle": 0.35, "final": 0.23},
         "style": {"early": 0.69, "middle": 0.93, "final": 0.78}}
TARGET = {"spatial": "in quadrant (image may break)", "style": "striped (objects may move)"}
SWEEP = (0.25, 1.0, 4.0)
"""Default strength sweep: the window's default strength times these."""


def edit(atlas: Atlas | str | Path, prompt: str, concepts: str | Sequence[str], regions: str | Sequence[str] = "",
         config: EditConfig | None = None, out: str | Path | None = None, model: TextToImageModel | None = None,
         load: Callable[[str], TextToImageModel] = load_model) -> EditResult:
    """atlas.edit.run.edit, judged by the judge of the atlas's model where one is known (the shapes world's):
    the outcome then says whether each edit did what it asked, besides the pixel change."""
    return run_edit(atlas, prompt, concepts, regions, config, out, model, load, judge_for=judge_for)


@dataclass
class Case:
    prompt: str
    seed: int
    label: str
    """Object label (spatial) or the style label added (style)."""
    quadrant: str | None


@dataclass
class Point:
    """Success of one window at one strength."""

    window: str
    strength: float
    success: float
    pixel_change: float
    n: int
    resolved: int
    """Cases whose label had concepts at the window's SAE (the others count as failures)."""
    target: float
    """Half of the test alone: the object's centre is in the quadrant even if the image broke (spatial), the
    background reads striped wherever the objects went (style)."""


@dataclass
class EvalResult:
    kind: str
    block: str
    points: list[Point]
    baseline: float
    """Success rate of the unedited images (spatial: already in the quadrant; style: already striped)."""
    n_cases: int
    date: str
    concepts_t: float | None = None
    """The t of the SAE whose concepts edited every window (None: each window's own)."""

    def best(self, window: str) -> Point:
        return max((p for p in self.points if p.window == window),
                   key=lambda p: (p.success, p.resolved, -p.pixel_change))

    def table(self) -> str:
        """Markdown: the best strength per window beside the paper's figure, then the whole sweep."""
        windows = list(dict.fromkeys(p.window for p in self.points))
        source = ("each window's own SAE" if self.concepts_t is None
                  else f"the concepts of the t = {self.concepts_t:g} SAE in every window")
        lines = [f"{self.kind} edits on {self.block} with {source}, {self.n_cases} cases per window and strength "
                 f"(unedited baseline {self.baseline:.2f})", "",
                 f"| window | best strength | success | paper | {TARGET[self.kind]} | pixel change | concepts found |",
                 "|---|---|---|---|---|---|---|"]
        for w in windows:
            b = self.best(w)
            lines.append(f"| {w} | {b.strength:g} | {b.success:.2f} | {PAPER[self.kind].get(w, float('nan')):.2f} | "
                         f"{b.target:.2f} | {b.pixel_change:.3f} | {b.resolved}/{b.n} |")
        lines += ["", f"| window | strength | success | {TARGET[self.kind]} | pixel change |", "|---|---|---|---|---|"]
        lines += [f"| {p.window} | {p.strength:g} | {p.success:.2f} | {p.target:.2f} | {p.pixel_change:.3f} |"
                  for p in self.points]
        return "\n".join(lines)


def object_labels(seed: int) -> list[str]:
    labels = [f"{c} {s}" for s in SHAPES for c in COLORS]
    random.Random(seed).shuffle(labels)
    return labels


def make_cases(kind: str, n: int, seed: int) -> list[Case]:
    labels = object_labels(seed)
    objects = [labels[i % len(labels)] for i in range(n)]
    if kind == "spatial":
        return [Case(f"a {o}", seed + i, o, q) for i, o in enumerate(objects) for q in QUADRANTS]
    return [Case(f"a {o} on a plain background", seed + i, STYLE_TARGET, None) for i, o in enumerate(objects)]


class PerImageEdits:
    """A handler applying a different edit (or none) to each image of a batch: [uncond_b, cond_b] pairs."""

    def __init__(self, edits: list[ConceptEdit | None]) -> None:
        self.edits = edits

    def __call__(self, block: str, step: StepInfo, delta: torch.Tensor) -> torch.Tensor:
        half = delta.shape[0] // 2
        out = torch.zeros_like(delta)
        for b, edit in enumerate(self.edits):
            if edit is not None:
                rows = [b, half + b]
                out[rows] = edit.change(delta[rows])
        return out


def judge_case(kind: str, case: Case, original: np.ndarray, edited: np.ndarray, size: int) -> tuple[bool, bool]:
    """(success, target reached): spatial success needs an intact image, the target only the object's centre
    in the quadrant; style success needs the objects to stay put, the target only the striped background."""
    if kind == "spatial":
        quadrant = box_mask(POSITIONS[case.quadrant], size)
        return (moved_into(original, edited, case.label, quadrant),
                moved_into(original, edited, case.label, quadrant, intact=False))
    return bool(styled(original, edited, case.label)), annotate(edited).style == "striped"


def eval_edits(store: Atlas, config: EvalEditsConfig, out_dir: str | Path, model: TextToImageModel | None = None,
               progress: bool = True, say: Callable[[str], None] = print) -> EvalResult:
    """Run the protocol; writes eval-<kind>.json/.md and example PNGs to `out_dir`, curves to the atlas."""
    windows = [parse_window(w) for w in config.windows.split(",") if w.strip()]
    for w in windows:
        if w.name not in WINDOWS:
            raise BadInputError(f"eval-edits measures the named windows (early, middle, final), not {w.name!r}")
    blocks = {s.block: s for s in store.saes() if s.branch == "cond"}
    if config.block not in blocks:
        raise NotFoundError(f"the atlas has no cond SAE of block {config.block!r}; blocks: {', '.join(sorted(blocks))}")
    sweep = config.sweep()
    ts = sorted({s.t for s in store.saes() if s.block == config.block and s.branch == "cond"}, reverse=True)
    fixed_t = parse_concepts_t(config.concepts_t)
    if fixed_t is not None:
        check_concepts_t(fixed_t, ts, config.block)
    spec = atlas_model(store)
    if spec["name"] != "shapes":
        raise BadInputError(f"eval-edits judges with the shapes world's annotator; {store.root} is an atlas of "
                            f"{spec['name']!r}")
    model = model or load_model("shapes")
    steps, guidance, size = int(spec.get("steps") or model.spec.default_steps), spec.get("guidance"), \
        model.spec.resolution
    cases = make_cases(config.kind, config.n, config.seed)
    unique = list(dict.fromkeys((c.prompt, c.seed) for c in cases))
    base = dict(zip(unique, generate(model, [p for p, _ in unique], [s for _, s in unique], steps, guidance,
                                     batch_size=config.batch_size)))
    originals = [base[(c.prompt, c.seed)] for c in cases]
    baseline = float(np.mean([judge_case(config.kind, c, o, o, size)[1] for c, o in zip(cases, originals)]))
    kind_key = "spatial" if config.kind == "spatial" else "global"
    points, examples = [], {}
    total = len(windows) * len(sweep or SWEEP) * len(cases)
    bar = tqdm(total=total, unit="img", desc=f"eval-edits ({config.kind})", disable=not progress)
    for window in windows:
        t = window.sae_t(ts) if fixed_t is None else fixed_t
        info = next(s for s in store.saes() if s.block == config.block and s.t == t and s.branch == "cond")
        sae = Sae.from_pretrained(sae_path(store, info))
        latents = {label: [c.latent for c in store.concepts(label=label, t=t, block=config.block,
                                                           limit=config.max_concepts)]
                   for label in dict.fromkeys(c.label for c in cases)}
        regions = {q: region_to_grid(box_mask(POSITIONS[q], size), (info.grid_h, info.grid_w), info.block)
                   for q in QUADRANTS}
        strengths = sweep or [DEFAULT_STRENGTH[kind_key][window.name] * f for f in SWEEP]
        for strength in strengths:
            edits = [ConceptEdit(sae, latents[c.label], config.block, window.steps(steps), strength,
                                 regions[c.quadrant] if c.quadrant else None, config.branch)
                     if latents[c.label] else None for c in cases]
            edited = run_batched(model, cases, edits, config.block, window.steps(steps), steps, guidance,
                                 config.batch_size, bar)
            judged = np.array([judge_case(config.kind, c, o, x, size) if e is not None else (False, False)
                               for c, e, o, x in zip(cases, edits, originals, edited)])
            change = [pixel_change(o, x) for o, x in zip(originals, edited)]
            points.append(Point(window.name, strength, float(judged[:, 0].mean()), float(np.mean(change)),
                                len(cases), sum(e is not None for e in edits), float(judged[:, 1].mean())))
            examples[(window.name, strength)] = edited
            say(f"{window.name:6s} strength {strength:<8g} success {points[-1].success:.2f}  "
                f"target {points[-1].target:.2f}  pixel change {points[-1].pixel_change:.3f}")
    bar.close()
    result = EvalResult(config.kind, config.block, points, baseline, len(cases), date.today().isoformat(), fixed_t)
    write_outputs(result, config, cases, originals, examples, Path(out_dir))
    save_curves(store.root, kind_key, result, config)
    return result


def run_batched(model: TextToImageModel, cases: list[Case], edits: list[ConceptEdit | None], block: str,
                window_steps: list[int], steps: int, guidance: float | None, batch_size: int,
                bar: tqdm) -> list[np.ndarray]:
    images = []
    for start in range(0, len(cases), batch_size):
        chunk = slice(start, start + batch_size)
        hooks = Hooks().on(block, PerImageEdits(edits[chunk]), steps=window_steps)
        images.extend(generate(model, [c.prompt for c in cases[chunk]], [c.seed for c in cases[chunk]], steps,
                               guidance, hooks, batch_size=batch_size))
        bar.update(len(cases[chunk]))
    return images


def write_outputs(result: EvalResult, config: EvalEditsConfig, cases: list[Case], originals: list[np.ndarray],
                  examples: dict, out: Path) -> None:
    """eval-<kind>.json and .md, and per window a PNG of the first prompts: unedited, then each edit."""
    from atlas.viz import image_grid

    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": asdict(config), "baseline": result.baseline, "date": result.date,
               "points": [asdict(p) for p in result.points]}
    atomic_write(out / f"eval-{result.kind}.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    atomic_write(out / f"eval-{result.kind}.md", lambda tmp: tmp.write_text(result.table() + "\n"))
    per_row = len(QUADRANTS) if result.kind == "spatial" else 1
    rows = min(4, len(cases) // per_row)
    for window in dict.fromkeys(p.window for p in result.points):
        best = result.best(window)
        edited = examples[(window, best.strength)]
        tiles, labels = [], []
        for r in range(rows):
            first = r * per_row
            tiles.append(originals[first])
            labels.append(f"unedited: {cases[first].prompt.removesuffix(' on a plain background')}")
            for i in range(first, first + per_row):
                tiles.append(edited[i])
                if result.kind == "spatial":
                    lost = main_object(annotate(edited[i]), cases[i].label) is None
                    labels.append(f"-> {cases[i].quadrant}" + (" (object lost)" if lost else ""))
                else:
                    ok = styled(originals[first], edited[i], cases[i].label)
                    labels.append("-> striped" + ("" if ok else " (failed)"))
        grid = image_grid(tiles, labels, cols=per_row + 1, cell=96, label_lines=2)
        atomic_write(out / f"eval-{result.kind}-{window}.png", lambda tmp, grid=grid: grid.save(tmp, format="PNG"))


def save_curves(root: Path, kind: str, result: EvalResult, config: EvalEditsConfig) -> None:
    """Put this run's curve into the atlas's curves file (atlas.edit.curves: one curve per edit kind, block and
    concepts' t)."""
    windows: dict[str, dict[str, list]] = {}
    for p in result.points:
        row = windows.setdefault(p.window, {"strength": [], "success": [], "pixel_change": [], "resolved": []})
        for key, value in (("strength", p.strength), ("success", p.success), ("pixel_change", p.pixel_change),
                           ("resolved", p.resolved / p.n)):
            row[key].append(value)
    fixed = "" if result.concepts_t is None else f" --concepts-t {result.concepts_t:g}"
    write_curve(root, kind, result.block, result.concepts_t, {
        "block": result.block, "concepts_t": result.concepts_t, "n": result.n_cases, "date": result.date,
        "baseline": result.baseline, "windows": windows,
        "command": f"atlas eval-edits --kind {result.kind} --block {result.block} --n {config.n}{fixed}"})
