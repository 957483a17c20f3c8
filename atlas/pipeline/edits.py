"""`atlas edit` with the atlas's judge, and `atlas eval-edits`: the paper's intervention protocol (its Tables 4
and 5) on any atlas.

    spatial  n one-object prompts x 4 quadrants x windows x strengths: the object's concepts are set to
             beta * ||z|| in the quadrant and 0 elsewhere; success = its centre of mass lands in the quadrant
             (random = 0.25; the unedited images' rate is reported as the baseline)
    style    n prompts x windows x strengths: a style label's concepts are added everywhere; success = the image
             takes the style (shapes atlas: the background reads striped; any other: CLIP similarity to the
             label rises)

The judge comes from atlas.pipeline.judges (the shapes world's, or the atlas's own annotator with CLIP), and a
success needs an intact image. Every edit also records where the pixels changed (inside the edit's region and
outside it), whether the other objects stayed and, when LPIPS is on this machine, its distance to the unedited
image. A shapes atlas edits the shapes world's labels ("a red square"; style: striped background on "a red
square on a plain background"); any other atlas the labels linked to concepts at the block ("a dog"; style: the
atlas's own prompts). The curves (success and pixel change per window and strength) go to
<atlas>/edits/curves.json, where `atlas edit --when auto` reads them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlas.edit.config import EditConfig, EvalEditsConfig, parse_concepts_t
from atlas.edit.core import NAMED_REGIONS, WINDOWS, ConceptEdit, box_mask, parse_window, region_to_grid
from atlas.edit.curves import write_curve
from atlas.edit.judge import Judge, JudgeUnavailable, Verdict
from atlas.edit.plan import DEFAULT_STRENGTH, check_concepts_t
from atlas.edit.run import EditResult, pixel_change, sae_path
from atlas.edit.run import edit as run_edit
from atlas.edit.scores import LpipsScorer, load_lpips
from atlas.errors import BadInputError, NotFoundError
from atlas.files import atomic_write
from atlas.models import Hooks, TextToImageModel, generate, load_model
from atlas.models.hooks import StepInfo
from atlas.pipeline.judges import judge_for
from atlas.progress import bar as progress_bar
from atlas.progress import logger
from atlas.sae import Sae
from atlas.shapes.world import COLORS, SHAPES
from atlas.store import Atlas

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
STYLE_TARGET = "striped background"
"""The style a shapes atlas's style edits add."""
PAPER = {"spatial": {"early": 0.80, "middle": 0.35, "final": 0.23},
         "style": {"early": 0.69, "middle": 0.93, "final": 0.78}}
TARGET = {"spatial": "centre in quadrant (image may break)", "style": "style reached (objects may move)"}
SWEEP = (0.25, 1.0, 4.0)
"""Default strength sweep: the window's default strength times these."""


def edit(atlas: Atlas | str | Path, prompt: str, concepts: str | Sequence[str], regions: str | Sequence[str] = "",
         config: EditConfig | None = None, out: str | Path | None = None, model: TextToImageModel | None = None,
         load: Callable[[str], TextToImageModel] = load_model) -> EditResult:
    """atlas.edit.run.edit, judged by the atlas's judge (atlas.pipeline.judges): the outcome then says whether
    each edit did what it asked and where the pixels changed, besides the pixel change."""
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
    image took the style wherever the objects went (style)."""
    change_in: float | None = None
    """Mean absolute pixel change inside the edit's region (style: everywhere but the other objects)."""
    change_out: float | None = None
    """The same outside it: what the edit should have left alone."""
    others_stay: float | None = None
    """Share of the judged edits whose other objects all stayed (None: no image had another object)."""
    lpips: float | None = None
    """Mean LPIPS distance to the unedited image (None: LPIPS is not on this machine)."""


@dataclass
class EvalResult:
    kind: str
    block: str
    points: list[Point]
    baseline: float | None
    """Success rate of the unedited images (spatial: already in the quadrant; style: already styled); None when
    the judge cannot tell from one image (CLIP)."""
    n_cases: int
    date: str
    concepts_t: float | None = None
    """The t of the SAE whose concepts edited every window (None: each window's own)."""
    judge: str = ""
    """Who judged the edits."""
    style: str = ""
    """The label style edits added."""

    def best(self, window: str) -> Point:
        return max((p for p in self.points if p.window == window),
                   key=lambda p: (p.success, p.resolved, -p.pixel_change))

    def table(self) -> str:
        """Markdown: the best strength per window beside the paper's figure, then the whole sweep."""
        windows = list(dict.fromkeys(p.window for p in self.points))
        source = ("each window's own SAE" if self.concepts_t is None
                  else f"the concepts of the t = {self.concepts_t:g} SAE in every window")
        what = f"{self.kind} edits" + (f" adding {self.style!r}" if self.kind == "style" and self.style else "")
        lines = [f"{what} on {self.block} with {source}, {self.n_cases} cases per window and strength "
                 f"(unedited baseline {_num(self.baseline, 2)}), judged by {self.judge or 'no judge'}", "",
                 f"| window | best strength | success | paper | {TARGET[self.kind]} | others stay | "
                 "change in / out of region | LPIPS | concepts found |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for w in windows:
            b = self.best(w)
            lines.append(f"| {w} | {b.strength:g} | {b.success:.2f} | {PAPER[self.kind].get(w, float('nan')):.2f} | "
                         f"{b.target:.2f} | {_num(b.others_stay, 2)} | {_locality(b)} | {_num(b.lpips, 3)} | "
                         f"{b.resolved}/{b.n} |")
        lines += ["", f"| window | strength | success | {TARGET[self.kind]} | others stay | "
                  "change in / out of region | LPIPS | pixel change |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p.window} | {p.strength:g} | {p.success:.2f} | {p.target:.2f} | {_num(p.others_stay, 2)} | "
                  f"{_locality(p)} | {_num(p.lpips, 3)} | {p.pixel_change:.3f} |" for p in self.points]
        return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _locality(p: Point) -> str:
    return f"{_num(p.change_in, 3)} / {_num(p.change_out, 3)}"


def object_labels(seed: int) -> list[str]:
    labels = [f"{c} {s}" for s in SHAPES for c in COLORS]
    random.Random(seed).shuffle(labels)
    return labels


def make_cases(kind: str, n: int, seed: int, labels: list[str], style: str, prompts: list[str]) -> list[Case]:
    """Spatial: "a <label>" for n labels (cycled), each in 4 quadrants; style: n prompts (cycled) given `style`."""
    if kind == "spatial":
        return [Case(f"a {o}", seed + i, o, q) for i, o in enumerate(labels[i % len(labels)] for i in range(n))
                for q in QUADRANTS]
    return [Case(prompts[i % len(prompts)], seed + i, style, None) for i in range(n)]


def case_source(store: Atlas, model_name: str, config: EvalEditsConfig) -> tuple[list[str], str, list[str]]:
    """(object labels, style label, style prompts): the shapes world's for a shapes atlas; else the labels linked
    to concepts at the block (most concepts first) and the atlas's own prompts."""
    known = store.labels()
    if config.style and config.style not in known:
        raise NotFoundError(f"--style {config.style!r} is no label of {store.root}; its labels include "
                            f"{', '.join(known[:8])}")
    if model_name == "shapes":
        labels = object_labels(config.seed)
        return labels, config.style or STYLE_TARGET, [f"a {o} on a plain background" for o in labels]
    labels = [r["label"] for r in store.query(
        "SELECT label FROM concept_labels WHERE block = ? GROUP BY label ORDER BY count(*) DESC, label",
        [config.block]).to_pylist()]
    if not labels:
        raise NotFoundError(f"no label of {store.root} is linked to concepts of {config.block}; pick another "
                            "--block, or link the atlas with `atlas link`")
    prompts = [r["prompt"] for r in store.query(
        "SELECT prompt FROM images WHERE coalesce(prompt, '') <> '' GROUP BY prompt ORDER BY min(id)").to_pylist()]
    return labels, config.style or labels[0], prompts or [f"a {o}" for o in labels]


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


def optional_lpips(load: Callable[[], LpipsScorer], say: Callable[[str], None]) -> LpipsScorer | None:
    """LPIPS when this machine has it; otherwise one line saying what to get, and the tables show '-'."""
    try:
        return load()
    except JudgeUnavailable as err:
        say(f"LPIPS not measured: {err.message}")
        return None


def eval_edits(store: Atlas, config: EvalEditsConfig, out_dir: str | Path, model: TextToImageModel | None = None,
               progress: bool = True, say: Callable[[str], None] = logger.info, judge: Judge | None = None,
               lpips: Callable[[], LpipsScorer] = load_lpips) -> EvalResult:
    """Run the protocol; writes eval-<kind>.json/.md and example PNGs to `out_dir`, curves to the atlas. `judge`
    defaults to the atlas's (atlas.pipeline.judges), `lpips` loads the LPIPS scorer (optional)."""
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
    spec = store.model()
    labels, style, prompts = case_source(store, spec["name"], config)
    kind_key = "spatial" if config.kind == "spatial" else "global"
    judge = judge or judge_for(store, config.clip_model, config.clip_weights)
    if judge is None:
        raise NotFoundError(f"{store.root} has no annotated objects to judge edits by; run `atlas annotate`")
    judge.ready(kind_key)  # a missing annotator or CLIP fails here, before any image is generated
    scorer = optional_lpips(lpips, say)
    model = model or load_model(spec["source"])
    steps, guidance = int(spec.get("steps") or model.spec.default_steps), spec.get("guidance")
    cases = make_cases(config.kind, config.n, config.seed, labels, style, prompts)
    unique = list(dict.fromkeys((c.prompt, c.seed) for c in cases))
    base = dict(zip(unique, generate(model, [p for p, _ in unique], [s for _, s in unique], steps, guidance,
                                     batch_size=config.batch_size)))
    originals = [base[(c.prompt, c.seed)] for c in cases]
    size = originals[0].shape[0]
    pixels = {q: box_mask(NAMED_REGIONS[q], size) for q in QUADRANTS}

    def judged(case: Case, original: np.ndarray, edited: np.ndarray) -> Verdict | None:
        return judge(original, edited, kind_key, case.label, pixels.get(case.quadrant), case.prompt)

    before = [v.before for c, o in zip(cases, originals) if (v := judged(c, o, o)) and v.before is not None]
    baseline = float(np.mean(before)) if before else None
    points, examples, records = [], {}, []
    total = len(windows) * len(sweep or SWEEP) * len(cases)
    bar = progress_bar(total=total, unit="img", desc=f"eval-edits ({config.kind})", disable=not progress)
    for window in windows:
        t = window.sae_t(ts) if fixed_t is None else fixed_t
        info = next(s for s in store.saes() if s.block == config.block and s.t == t and s.branch == "cond"
                    and not s.variant)  # the primary SAE, whose concepts `store.concepts` ranks
        sae = Sae.from_pretrained(sae_path(store, info))
        latents = {label: [c.latent for c in store.concepts(label=label, t=t, block=config.block,
                                                           limit=config.max_concepts)]
                   for label in dict.fromkeys(c.label for c in cases)}
        regions = {c.quadrant: region_to_grid(pixels[c.quadrant], (info.grid_h, info.grid_w), info.block)
                   for c in cases if c.quadrant}
        strengths = sweep or [DEFAULT_STRENGTH[kind_key][window.name] * f for f in SWEEP]
        for strength in strengths:
            edits = [ConceptEdit(sae, latents[c.label], config.block, window.steps(steps), strength,
                                 regions[c.quadrant] if c.quadrant else None, config.branch)
                     if latents[c.label] else None for c in cases]
            edited = run_batched(model, cases, edits, config.block, window.steps(steps), steps, guidance,
                                 config.batch_size, bar)
            verdicts = [judged(c, o, x) if e is not None else None
                        for c, e, o, x in zip(cases, edits, originals, edited)]
            damage = [scorer.distance(o, x) if scorer and e is not None else None
                      for e, o, x in zip(edits, originals, edited)]
            change = [pixel_change(o, x) for o, x in zip(originals, edited)]
            points.append(summarise(window.name, strength, edits, verdicts, change, damage))
            records += [{"window": window.name, "strength": strength, **asdict(c), "edited": e is not None,
                         "verdict": None if v is None else asdict(v), "lpips": d}
                        for c, e, v, d in zip(cases, edits, verdicts, damage)]
            examples[(window.name, strength)] = (edited, verdicts)
            say(f"{window.name:6s} strength {strength:<8g} success {points[-1].success:.2f}  "
                f"target {points[-1].target:.2f}  pixel change {points[-1].pixel_change:.3f}")
    bar.close()
    result = EvalResult(config.kind, config.block, points, baseline, len(cases), date.today().isoformat(), fixed_t,
                        judge.name, style if config.kind == "style" else "")
    write_outputs(result, config, cases, originals, examples, records, Path(out_dir))
    save_curves(store.root, kind_key, result, config)
    return result


def summarise(window: str, strength: float, edits: list[ConceptEdit | None], verdicts: list[Verdict | None],
              change: list[float], damage: list[float | None]) -> Point:
    """One Point: unedited (no concepts) and unjudged cases count as failures; the locality, others-stay and
    LPIPS figures average the judged edits that have them."""
    judged = [v for v in verdicts if v is not None]
    n = len(verdicts)
    return Point(window, strength, sum(v.success for v in judged) / n, float(np.mean(change)), n,
                 sum(e is not None for e in edits), sum(v.reached for v in judged) / n,
                 _mean(v.change_in for v in judged), _mean(v.change_out for v in judged),
                 _mean(None if v.others_stay is None else float(v.others_stay) for v in judged), _mean(damage))


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def run_batched(model: TextToImageModel, cases: list[Case], edits: list[ConceptEdit | None], block: str,
                window_steps: list[int], steps: int, guidance: float | None, batch_size: int,
                bar: Any) -> list[np.ndarray]:
    images = []
    for start in range(0, len(cases), batch_size):
        chunk = slice(start, start + batch_size)
        hooks = Hooks().on(block, PerImageEdits(edits[chunk]), steps=window_steps)
        images.extend(generate(model, [c.prompt for c in cases[chunk]], [c.seed for c in cases[chunk]], steps,
                               guidance, hooks, batch_size=batch_size))
        bar.update(len(cases[chunk]))
    return images


def write_outputs(result: EvalResult, config: EvalEditsConfig, cases: list[Case], originals: list[np.ndarray],
                  examples: dict, records: list[dict], out: Path) -> None:
    """eval-<kind>.json (the points and every edit's verdict) and .md, and per window a PNG of the first prompts:
    unedited, then each edit at the window's best strength with its verdict."""
    from atlas.viz import image_grid

    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": asdict(config), "baseline": result.baseline, "date": result.date, "judge": result.judge,
               "points": [asdict(p) for p in result.points], "edits": records}
    atomic_write(out / f"eval-{result.kind}.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    atomic_write(out / f"eval-{result.kind}.md", lambda tmp: tmp.write_text(result.table() + "\n"))
    per_row = len(QUADRANTS) if result.kind == "spatial" else 1
    rows = min(4, len(cases) // per_row)
    for window in dict.fromkeys(p.window for p in result.points):
        edited, verdicts = examples[(window, result.best(window).strength)]
        tiles, labels = [], []
        for r in range(rows):
            first = r * per_row
            tiles.append(originals[first])
            labels.append(f"unedited: {cases[first].prompt.removesuffix(' on a plain background')}")
            for i in range(first, first + per_row):
                tiles.append(edited[i])
                v = verdicts[i]
                word = "not judged" if v is None else "success" if v.success else "failure"
                labels.append(f"-> {cases[i].quadrant or cases[i].label}: {word}")
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
