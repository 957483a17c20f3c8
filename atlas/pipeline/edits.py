"""`atlas edit` with the atlas's judge, and `atlas eval-edits`: the paper's intervention protocol (its Tables 4
and 5) on any atlas.

    spatial  n one-object prompts x 4 quadrants x windows x strengths: the object's concepts are set to
             beta * ||z|| in the quadrant and 0 elsewhere; success = its centre of mass lands in the quadrant
             (random = 0.25; the unedited images' rate is reported as the baseline)
    style    n prompts x windows x strengths: a style label's concepts are added everywhere; success = the image
             takes the style (shapes atlas: the background reads striped; any other: CLIP similarity to the
             label rises)
    add      n prompts x 4 quadrants x windows x strengths: an object the prompt lacks is added to the quadrant (by
             default from a donor text, atlas.edit.add; --method coefficients: the paper's rule); success = a new
             object of its label has its centre in the quadrant, every object of the prompt stays, nothing else
             appears

Each window's strength is chosen on one set of prompts (--select-seed) and its success reported on another
(--seed), so that no figure is the best of a sweep scored on the cases it reports.

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
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlas.edit.add import AddEdit, generate_added
from atlas.edit.config import EditConfig, EvalEditsConfig, parse_concepts_t
from atlas.edit.core import ALL, NAMED_REGIONS, WINDOWS, ConceptEdit, Window, box_mask, parse_window, region_to_grid
from atlas.edit.curves import write_curve
from atlas.edit.judge import Finder, Judge, JudgeUnavailable, Verdict
from atlas.edit.plan import DEFAULT_STRENGTH, check_concepts_t
from atlas.edit.run import EditResult, objects_mask, pixel_change, sae_path
from atlas.edit.run import edit as run_edit
from atlas.edit.scores import LpipsScorer, load_lpips
from atlas.errors import BadInputError, NotFoundError
from atlas.files import atomic_write
from atlas.models import Hooks, TextToImageModel, generate, load_model
from atlas.models.hooks import StepInfo
from atlas.pipeline.judges import finder_for, is_shapes_atlas, judge_for
from atlas.progress import bar as progress_bar
from atlas.progress import logger
from atlas.sae import Sae
from atlas.shapes.world import COLORS, SHAPES
from atlas.store import Atlas, SaeInfo

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
STYLE_TARGET = "striped background"
"""The style a shapes atlas's style edits add."""
PAPER = {"spatial": {"early": 0.80, "middle": 0.35, "final": 0.23},
         "style": {"early": 0.69, "middle": 0.93, "final": 0.78}}
TARGET = {"spatial": "centre in quadrant (image may break)", "style": "style reached (objects may move)",
          "add": "new object in quadrant (image may break)"}
SWEEP = (0.25, 1.0, 4.0)
"""Default strength sweep: the window's default strength times these."""
DONOR_SWEEP = (0.5, 1.0, 2.0)
"""The donor method's: its default strength (2) times these."""


def edit(atlas: Atlas | str | Path, prompt: str, concepts: str | Sequence[str], regions: str | Sequence[str] = "",
         config: EditConfig | None = None, out: str | Path | None = None, model: TextToImageModel | None = None,
         load: Callable[[str], TextToImageModel] = load_model) -> EditResult:
    """atlas.edit.run.edit, judged by the atlas's judge (atlas.pipeline.judges): the outcome then says whether
    each edit did what it asked and where the pixels changed, besides the pixel change."""
    return run_edit(atlas, prompt, concepts, regions, config, out, model, load, judge_for=judge_for,
                    finder_for=finder_for)


@dataclass
class Case:
    prompt: str
    seed: int
    label: str
    """Object label (spatial), the style label added (style) or the object label added (add)."""
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
    """Half of the test alone: the object's centre is in the quadrant even if the image broke (spatial, add), the
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
    """The sweep: every window at every strength, on the prompts that choose the strength."""
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
    method: str = "coefficients"
    """coefficients (the paper's rule) or donor (atlas.edit.add)."""
    held_out: list[Point] = field(default_factory=list)
    """Each window's chosen strength on the prompts of --seed (empty: chosen and reported on the same prompts)."""
    seeds: tuple[int, int] = (0, 0)
    """(first seed of the prompts that chose the strengths, first seed of the prompts whose success is reported)."""
    added: str = ""
    """What the add edits added, and to which prompts."""

    def best(self, window: str) -> Point:
        return max((p for p in self.points if p.window == window),
                   key=lambda p: (p.success, p.resolved, -p.pixel_change))

    def reported(self, window: str) -> Point:
        """The window's figure: its chosen strength on the held-out prompts (or the best of the sweep without)."""
        return next((p for p in self.held_out if p.window == window), None) or self.best(window)

    def table(self) -> str:
        """Markdown: per window the strength chosen on one set of prompts and its success on another beside the
        paper's figure, then the whole sweep."""
        windows = list(dict.fromkeys(p.window for p in self.points))
        source = ("each window's own SAE" if self.concepts_t is None
                  else f"the concepts of the t = {self.concepts_t:g} SAE in every window")
        what = f"{self.kind} edits" + (f" adding {self.style!r}" if self.kind == "style" and self.style else "") + (
            f" adding {self.added}" if self.added else "")
        how = "from a donor text (atlas.edit.add)" if self.method == "donor" else f"on {self.block} with {source}"
        chosen, reported = self.seeds
        given = all(sum(p.window == w for p in self.points) == 1 for w in windows)
        honest = (f"strengths chosen on the prompts of seeds {chosen}+, success on the held-out prompts of seeds "
                  f"{reported}+" if self.held_out else f"strength given (--strengths), not chosen, on the prompts of "
                  f"seeds {reported}+" if given else f"strengths chosen and success reported on the same prompts "
                  f"(seeds {reported}+)")
        lines = [f"{what} {how}, {self.n_cases} cases per window and strength, {honest} (unedited baseline "
                 f"{_num(self.baseline, 2)}), judged by {self.judge or 'no judge'}", "",
                 f"| window | strength | success | when chosen | paper | {TARGET[self.kind]} | others stay | "
                 "change in / out of region | LPIPS | concepts found |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for w in windows:
            b = self.reported(w)
            lines.append(f"| {w} | {b.strength:g} | {b.success:.2f} | {self.best(w).success:.2f} | "
                         f"{_num(PAPER.get(self.kind, {}).get(w), 2)} | {b.target:.2f} | {_num(b.others_stay, 2)} | "
                         f"{_locality(b)} | {_num(b.lpips, 3)} | {b.resolved}/{b.n} |")
        lines += ["", f"| window | strength | success | {TARGET[self.kind]} | others stay | "
                  "change in / out of region | LPIPS | pixel change |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p.window} | {p.strength:g} | {p.success:.2f} | {p.target:.2f} | {_num(p.others_stay, 2)} | "
                  f"{_locality(p)} | {_num(p.lpips, 3)} | {p.pixel_change:.3f} |" for p in self.points]
        return "\n".join(lines)

    @property
    def stem(self) -> str:
        """The file name of its outputs: eval-<kind>, with what sets it apart from the default run."""
        parts = [f"eval-{self.kind}"] + (["coefficients"] if self.kind == "add" and self.method != "donor" else [])
        parts += [] if self.block == EvalEditsConfig.block else [self.block]
        parts += [] if self.concepts_t is None else [f"t{self.concepts_t:g}"]
        return "-".join(parts)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _locality(p: Point) -> str:
    return f"{_num(p.change_in, 3)} / {_num(p.change_out, 3)}"


def object_labels(seed: int) -> list[str]:
    labels = [f"{c} {s}" for s in SHAPES for c in COLORS]
    random.Random(seed).shuffle(labels)
    return labels


def other_label(labels: list[str], start: int, prompt: str) -> str:
    """The first label from `start` on (cyclically) that shares no word with the prompt, else one it does not
    name: what an add edit adds to `prompt`."""
    words = set(prompt.lower().split()) - {"a", "an", "the", "and", "on", "at", "of"}
    turn = labels[start % len(labels):] + labels[:start % len(labels)]
    apart = [label for label in turn if not words & set(label.lower().split())]
    unnamed = [label for label in turn if label.lower() not in prompt.lower()]
    if not (apart or unnamed):
        raise NotFoundError(f"every label of the atlas is named by {prompt!r}: give --add")
    return (apart or unnamed)[0]


def make_cases(config: EvalEditsConfig, seed: int, labels: list[str], style: str, prompts: list[str]) -> list[Case]:
    """Spatial: "a <label>" for n labels (cycled), each in 4 quadrants; add: the prompt (--prompt, else "a <label>")
    with another label (--add, else one that shares no word with it) in 4 quadrants; style: n prompts (cycled)
    given `style`."""
    n = config.n
    if config.kind == "spatial":
        return [Case(f"a {o}", seed + i, o, q) for i, o in enumerate(labels[i % len(labels)] for i in range(n))
                for q in QUADRANTS]
    if config.kind == "add":
        cases = []
        for i in range(n):
            prompt = config.prompt or f"a {labels[i % len(labels)]}"
            added = config.add or other_label(labels, i + 1, prompt)
            cases += [Case(prompt, seed + i, added, q) for q in QUADRANTS]
        return cases
    return [Case(prompts[i % len(prompts)], seed + i, style, None) for i in range(n)]


def case_source(store: Atlas, config: EvalEditsConfig) -> tuple[list[str], str, list[str]]:
    """(object labels, style label, style prompts): the shapes world's for a shapes atlas; else the labels linked
    to concepts at the block (most concepts first) and the atlas's own prompts."""
    known = store.labels()
    for option, value in (("style", config.style), ("add", config.add)):
        if value and value not in known:
            raise NotFoundError(f"--{option} {value!r} is no label of {store.root}; its labels include "
                                f"{', '.join(known[:8])}")
    if is_shapes_atlas(store):
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


@dataclass
class Measured:
    """One window at one strength on one set of cases: its Point, the edited images and the verdicts."""

    point: Point
    edited: list[np.ndarray]
    verdicts: list[Verdict | None]
    records: list[dict]


class Measurer:
    """What every measurement of one eval-edits run shares: the model, the judge, the unedited images, the
    quadrants, and how an edit is applied (its method)."""

    def __init__(self, store: Atlas, config: EvalEditsConfig, model: TextToImageModel, judge: Judge,
                 scorer: LpipsScorer | None, find: Finder | None, originals: dict, bar: Any) -> None:
        self.store, self.config, self.model, self.judge, self.scorer = store, config, model, judge, scorer
        self.find, self.originals, self.bar = find, originals, bar
        spec = store.model()
        self.steps, self.guidance = int(spec.get("steps") or model.spec.default_steps), spec.get("guidance")
        self.size = next(iter(originals.values())).shape[0]
        self.pixels = {q: box_mask(NAMED_REGIONS[q], self.size) for q in QUADRANTS}
        self.kind = {"spatial": "spatial", "style": "global", "add": "add"}[config.kind]
        self._keep: dict[tuple[str, int], np.ndarray | None] = {}

    def judged(self, case: Case, original: np.ndarray, edited: np.ndarray) -> Verdict | None:
        return self.judge(original, edited, self.kind, case.label, self.pixels.get(case.quadrant), case.prompt)

    def baseline(self, cases: list[Case]) -> float | None:
        before = [v.before for c in cases if (v := self.judged(c, o := self.original(c), o)) and v.before is not None]
        return float(np.mean(before)) if before else None

    def original(self, case: Case) -> np.ndarray:
        return self.originals[(case.prompt, case.seed)]

    def keep(self, case: Case) -> np.ndarray | None:
        """The unedited image's objects, which an added object leaves alone."""
        key = (case.prompt, case.seed)
        if key not in self._keep:
            self._keep[key] = objects_mask(self.find, self.original(case), case.prompt)
        return self._keep[key]

    def measure(self, cases: list[Case], window: Window, strength: float, sae: Sae,
                latents: dict[str, list[int]], info: SaeInfo, tag: str) -> Measured:
        steps = window.steps(self.steps)
        size = self.config.batch_size
        if self.config.edit_method == "donor":
            edits: list = [AddEdit(c.label, self.pixels[c.quadrant], list(self.model.spec.hook_points), steps, strength,
                                   round(self.config.margin * self.size), self.keep(c)) for c in cases]
            edited = []
            for start in range(0, len(cases), size):
                chunk = cases[start:start + size]
                edited.extend(generate_added(self.model, [c.prompt for c in chunk], [c.seed for c in chunk],
                                             [[e] for e in edits[start:start + size]], self.steps, self.guidance)[1])
                self.bar.update(len(chunk))
        else:
            regions = {q: region_to_grid(self.pixels[q], (info.grid_h, info.grid_w), info.block)
                       for q in {c.quadrant for c in cases if c.quadrant}}  # style edits have none: any grid will do
            edits = [ConceptEdit(sae, latents[c.label], info.block, steps, strength,
                                 regions[c.quadrant] if c.quadrant else None, self.config.branch)
                     if latents[c.label] else None for c in cases]
            edited = run_batched(self.model, cases, edits, info.block, steps, self.steps, self.guidance, size, self.bar)
        originals = [self.original(c) for c in cases]
        verdicts = [self.judged(c, o, x) if e is not None else None
                    for c, e, o, x in zip(cases, edits, originals, edited)]
        damage = [self.scorer.distance(o, x) if self.scorer and e is not None else None
                  for e, o, x in zip(edits, originals, edited)]
        change = [pixel_change(o, x) for o, x in zip(originals, edited)]
        records = [{"window": window.name, "strength": strength, "cases": tag, **asdict(c), "edited": e is not None,
                    "verdict": None if v is None else asdict(v), "lpips": d}
                   for c, e, v, d in zip(cases, edits, verdicts, damage)]
        return Measured(summarise(window.name, strength, edits, verdicts, change, damage), edited, verdicts, records)


def eval_edits(store: Atlas, config: EvalEditsConfig, out_dir: str | Path, model: TextToImageModel | None = None,
               progress: bool = True, say: Callable[[str], None] = logger.info, judge: Judge | None = None,
               lpips: Callable[[], LpipsScorer] = load_lpips, finder: Finder | None = None) -> EvalResult:
    """Run the protocol; writes eval-<kind>.json/.md and example PNGs to `out_dir`, curves to the atlas. Each
    window's strength is chosen on the prompts of --select-seed and its success measured on those of --seed.
    `judge` defaults to the atlas's (atlas.pipeline.judges), `finder` to its annotator (which objects an added
    object leaves alone), `lpips` loads the LPIPS scorer (optional)."""
    windows = [parse_window(w) for w in config.window_names()]
    for w in windows:
        if w.name not in (*WINDOWS, ALL.name):
            raise BadInputError(f"eval-edits measures the named windows (early, middle, final, all), not {w.name!r}")
    blocks = {s.block: s for s in store.saes() if s.branch == "cond"}
    if config.block not in blocks:
        raise NotFoundError(f"the atlas has no cond SAE of block {config.block!r}; blocks: {', '.join(sorted(blocks))}")
    sweep = config.sweep()
    ts = sorted({s.t for s in store.saes() if s.block == config.block and s.branch == "cond"}, reverse=True)
    fixed_t = parse_concepts_t(config.concepts_t)
    if fixed_t is not None:
        check_concepts_t(fixed_t, ts, config.block)
    spec = store.model()
    labels, style, prompts = case_source(store, config)
    method = config.edit_method
    defaults = DEFAULT_STRENGTH["add" if method == "donor" else "global" if config.kind == "style" else "spatial"]
    judge = judge or judge_for(store, config.clip_model, config.clip_weights)
    if judge is None:
        raise NotFoundError(f"{store.root} has no annotated objects to judge edits by; run `atlas annotate`")
    judge.ready("global" if config.kind == "style" else config.kind)  # a missing annotator or CLIP fails here
    scorer = optional_lpips(lpips, say)
    model = model or load_model(spec["source"])
    steps, guidance = int(spec.get("steps") or model.spec.default_steps), spec.get("guidance")
    strengths = {w.name: sweep or [defaults[w.name] * f for f in (DONOR_SWEEP if method == "donor" else SWEEP)]
                 for w in windows}
    test = make_cases(config, config.seed, labels, style, prompts)
    held = config.select_seed != config.seed and any(len(s) > 1 for s in strengths.values())
    select = make_cases(config, config.select_seed, labels, style, prompts) if held else test
    unique = list(dict.fromkeys((c.prompt, c.seed) for c in select + (test if held else [])))
    base = dict(zip(unique, generate(model, [p for p, _ in unique], [s for _, s in unique], steps, guidance,
                                     batch_size=config.batch_size)))
    total = sum(len(s) * len(select) + held * len(test) for s in strengths.values())
    bar = progress_bar(total=total, unit="img", desc=f"eval-edits ({config.kind})", disable=not progress)
    find = (finder or finder_for(store)) if method == "donor" else None
    measurer = Measurer(store, config, model, judge, scorer, find, base, bar)
    points, held_out, examples, records = [], [], {}, []
    for window in windows:
        t = window.sae_t(ts) if fixed_t is None else fixed_t
        info = next(s for s in store.saes() if s.block == config.block and s.t == t and s.branch == "cond"
                    and not s.variant)  # the primary SAE, whose concepts `store.concepts` ranks
        sae = Sae.from_pretrained(sae_path(store, info))
        latents = {label: [c.latent for c in store.concepts(label=label, t=t, block=config.block,
                                                           limit=config.max_concepts)]
                   for label in dict.fromkeys(c.label for c in select + test)}
        for strength in strengths[window.name]:
            measured = measurer.measure(select, window, strength, sae, latents, info, "select" if held else "test")
            points.append(measured.point)
            records += measured.records
            examples[(window.name, strength)] = measured
            say(f"{window.name:6s} strength {strength:<8g} success {measured.point.success:.2f}  "
                f"target {measured.point.target:.2f}  pixel change {measured.point.pixel_change:.3f}")
        if held:
            best = max((p for p in points if p.window == window.name),
                       key=lambda p: (p.success, p.resolved, -p.pixel_change))
            measured = measurer.measure(test, window, best.strength, sae, latents, info, "test")
            held_out.append(measured.point)
            records += measured.records
            examples[(window.name, "held out")] = measured
            say(f"{window.name:6s} strength {best.strength:<8g} success {measured.point.success:.2f} on the held-out "
                "prompts")
    bar.close()
    added = f"{test[0].label!r}" if config.add else "another object"
    result = EvalResult(config.kind, config.block, points, measurer.baseline(test), len(test),
                        date.today().isoformat(), fixed_t, judge.name, style if config.kind == "style" else "", method,
                        held_out, (config.select_seed, config.seed),
                        f"{added} to {config.prompt!r}" if config.kind == "add" and config.prompt else
                        f"{added} to one-object prompts" if config.kind == "add" else "")
    write_outputs(result, config, test if held else select, examples, records, measurer, Path(out_dir))
    if config.kind == "add" and method != "donor":
        say("curves not stored: --when auto reads the coefficient rule's curves from --kind spatial")
    else:
        save_curves(store.root, "add" if method == "donor" else measurer.kind, result, config)
    return result


def summarise(window: str, strength: float, edits: Sequence[object | None], verdicts: list[Verdict | None],
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


def write_outputs(result: EvalResult, config: EvalEditsConfig, cases: list[Case], examples: dict,
                  records: list[dict], measurer: Measurer, out: Path) -> None:
    """<stem>.json (the points and every edit's verdict) and .md, and per window a PNG of the first reported
    prompts: unedited, then each edit at the window's chosen strength with its verdict."""
    from atlas.viz import image_grid

    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": asdict(config), "baseline": result.baseline, "date": result.date, "judge": result.judge,
               "method": result.method, "seeds": list(result.seeds), "points": [asdict(p) for p in result.points],
               "held_out": [asdict(p) for p in result.held_out], "edits": records}
    atomic_write(out / f"{result.stem}.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    atomic_write(out / f"{result.stem}.md", lambda tmp: tmp.write_text(result.table() + "\n"))
    per_row = len(QUADRANTS) if result.kind in ("spatial", "add") else 1
    rows = min(4, len(cases) // per_row)
    for window in dict.fromkeys(p.window for p in result.points):
        shown = examples.get((window, "held out")) or examples[(window, result.best(window).strength)]
        tiles, labels = [], []
        for r in range(rows):
            first = r * per_row
            tiles.append(measurer.original(cases[first]))
            labels.append(f"unedited: {cases[first].prompt.removesuffix(' on a plain background')}")
            for i in range(first, first + per_row):
                tiles.append(shown.edited[i])
                v = shown.verdicts[i]
                word = "not judged" if v is None else "success" if v.success else "failure"
                labels.append(f"-> {cases[i].quadrant or cases[i].label}: {word}")
        grid = image_grid(tiles, labels, cols=per_row + 1, cell=96, label_lines=2)
        atomic_write(out / f"{result.stem}-{window}.png", lambda tmp, grid=grid: grid.save(tmp, format="PNG"))


def save_curves(root: Path, kind: str, result: EvalResult, config: EvalEditsConfig) -> None:
    """Put this run's curve into the atlas's curves file (atlas.edit.curves: one curve per edit kind, block and
    concepts' t): the sweep, with each window's held-out success beside it."""
    windows: dict[str, dict[str, list]] = {}
    for p in result.points:
        row = windows.setdefault(p.window, {"strength": [], "success": [], "pixel_change": [], "resolved": []})
        for key, value in (("strength", p.strength), ("success", p.success), ("pixel_change", p.pixel_change),
                           ("resolved", p.resolved / p.n)):
            row[key].append(value)
    for p in result.held_out:
        windows[p.window]["held_out"] = {"strength": p.strength, "success": p.success, "seed": result.seeds[1]}
    fixed = "" if result.concepts_t is None else f" --concepts-t {result.concepts_t:g}"
    chosen = "".join(f" --{name} {shlex.quote(value)}" for name in ("prompt", "add", "method")
                     if (value := getattr(config, name))) + f" --select-seed {config.select_seed} --seed {config.seed}"
    write_curve(root, kind, result.block, result.concepts_t, {
        "block": result.block, "concepts_t": result.concepts_t, "n": result.n_cases, "date": result.date,
        "baseline": result.baseline, "windows": windows,
        "command": f"atlas eval-edits --kind {result.kind} --block {result.block} --n {config.n}{fixed}{chosen}"})
