"""`atlas edit`: resolve concepts in an atlas, generate the unedited and the edited image from one seed,
judge the outcome, draw them side by side with the concepts' activation maps, and log the edit.

    from atlas.edit import edit
    result = edit("atlas", "a red circle", ["red circle"], ["top-left"], out="edit.png")
    result.said     # what was chosen (window, strength, concepts) and what happened
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from atlas.edit.config import EditConfig, parse_concepts_t
from atlas.edit.core import WINDOWS, ConceptEdit, Window, edit_hooks, parse_region, parse_window, region_to_grid
from atlas.files import atomic_write
from atlas.models import Hooks, TextToImageModel, generate, load_model, t_to_step
from atlas.sae import Sae
from atlas.store import Atlas, ConceptInfo, SaeInfo, Writer, open_atlas

CURVES_FILE = "edits/curves.json"
DEFAULT_STRENGTH = {"spatial": {"early": 16.0, "middle": 16.0, "final": 16.0},
                    "global": {"early": 1024.0, "middle": 1024.0, "final": 1024.0}}
"""beta when neither --strength nor measured curves give one: the middle of the sweeps that moved the shapes
model's images (bench/RESULTS.md). A global beta is spread over the grid (beta ||z_ij|| / sum ||z||), so it
must be about the grid's summed code norm to match a spatial beta of 1."""
PAPER_WINDOW = {"spatial": "early", "global": "middle"}
"""Where the paper found each kind of edit to work best; `--when auto` without curves uses it."""


@dataclass
class PlannedEdit:
    """One resolved edit: which concepts of which SAE, where, when and how strongly."""

    query: str
    region: str
    concepts: list[ConceptInfo]
    sae: SaeInfo
    window: Window
    strength: float
    target: str | None
    """The label the outcome is judged by (the label asked for, or the concepts' best label)."""
    cells: np.ndarray | None
    """The region on the SAE's grid (None for a global edit)."""

    @property
    def kind(self) -> str:
        return "spatial" if self.region else "global"

    def describe(self) -> str:
        ids = ", ".join(c.concept_id for c in self.concepts[:3]) + (" ..." if len(self.concepts) > 3 else "")
        where = f"into {self.region}" if self.region else "everywhere"
        return (f"{self.kind} edit of {self.query!r} ({len(self.concepts)} concepts: {ids}) {where}, "
                f"window {self.window} (t {self.window.lo:g}-{self.window.hi:g}), strength {self.strength:g}")


@dataclass
class EditResult:
    prompt: str
    seed: int
    original: np.ndarray
    edited: np.ndarray
    plans: list[PlannedEdit]
    maps: list[np.ndarray]
    """Per edit: the sum of its concepts' activations on the SAE's grid, in the unedited run at the SAE's t."""
    outcome: dict
    said: list[str] = field(default_factory=list)
    intervention_ids: list[int] = field(default_factory=list)
    path: Path | None = None


def edit(atlas: Atlas | str | Path, prompt: str, concepts: str | Sequence[str], regions: str | Sequence[str] = "",
         config: EditConfig | None = None, out: str | Path | None = None,
         model: TextToImageModel | None = None, load: Callable[[str], TextToImageModel] = load_model,
         judge_for: Callable[[str], Judge | None] | None = None) -> EditResult:
    """Edit `prompt` with each concept query (label, concept id or SQL) in its region ("" = global).

    One region applies to every concept; otherwise give one region per concept. Bad input raises before
    anything is generated or written, and before `load` (the atlas's model by name) is called when no
    `model` is given. `judge_for` gives the judge of the atlas's model by name (None: only the pixel change
    is reported; atlas.pipeline.presets.judge_for knows the shapes world's).
    """
    if isinstance(atlas, Atlas):
        return _edit(atlas, prompt, concepts, regions, config or EditConfig(), out, model, load, judge_for)
    with open_atlas(atlas) as store:
        return _edit(store, prompt, concepts, regions, config or EditConfig(), out, model, load, judge_for)


def _edit(store: Atlas, prompt: str, concepts: str | Sequence[str], regions: str | Sequence[str],
          config: EditConfig, out: str | Path | None, model: TextToImageModel | None,
          load: Callable[[str], TextToImageModel], judge_for: Callable[[str], Judge | None] | None) -> EditResult:
    queries = [concepts] if isinstance(concepts, str) else list(concepts)
    region_list = [regions] if isinstance(regions, str) else list(regions)
    if not prompt.strip():
        raise ValueError("empty prompt: give the text of the image to edit, e.g. 'a red circle'")
    if not queries:
        raise ValueError("give at least one --concept")
    if len(region_list) == 1:
        region_list = region_list * len(queries)
    if len(region_list) != len(queries):
        raise ValueError(f"got {len(region_list)} regions for {len(queries)} concepts; give one region, or one "
                         "per concept (global for none)")
    region_list = ["" if r.strip().lower() in ("", "global", "none") else r.strip() for r in region_list]
    spec = atlas_model(store)
    steps = config.steps or int(spec.get("steps") or 0)
    size = int(spec.get("resolution") or 0)
    guidance = config.guidance if config.guidance >= 0 else spec.get("guidance")
    if model is None and not (steps and size):  # an atlas that does not record them: ask the model
        model = load(spec["name"])
    steps, size = steps or model.spec.default_steps, size or model.spec.resolution
    said: list[str] = []
    plans = [plan_edit(store, q, r, config, steps, size, said) for q, r in zip(queries, region_list)]
    model = model or load(spec["name"])  # after planning: bad input fails before the slow load
    saes = {p.sae.id: Sae.from_pretrained(sae_path(store, p.sae)) for p in plans}
    edits = [ConceptEdit(saes[p.sae.id], [c.latent for c in p.concepts], p.sae.block, p.window.steps(steps),
                         p.strength, p.cells, config.branch) for p in plans]
    recorder = MapRecorder(edits, plans, steps)
    original = generate(model, [prompt], [config.seed], steps, guidance, recorder.hooks())[0]
    edited = generate(model, [prompt], [config.seed], steps, guidance, edit_hooks(edits))[0]
    outcome = judge_outcome(judge_for(spec["name"]) if judge_for else None, original, edited, plans, size)
    said.append(outcome_line(outcome))
    result = EditResult(prompt, config.seed, original, edited, plans, recorder.maps(), outcome, said)
    if out is not None:
        result.path = save_edit_png(result, out)
    if config.log:
        with store.writer() as writer:
            result.intervention_ids = log_edit(writer, result, config, steps, guidance)
    return result


def atlas_model(store: Atlas) -> dict:
    """The model the atlas was built from, with the steps and guidance its SAEs saw."""
    rows = store.query("SELECT name, spec FROM models ORDER BY id").to_pylist()
    if not rows:
        raise ValueError(f"{store.root} records no model; build it with `atlas build`")
    name, spec = rows[0]["name"], rows[0]["spec"]
    spec = json.loads(spec) if isinstance(spec, str) else dict(spec or {})
    return {"name": name, **spec}


def sae_path(store: Atlas, sae: SaeInfo) -> Path:
    if not sae.path:
        raise ValueError(f"the SAE {sae.block}/{sae.t!r} has no checkpoint path in {store.root}; re-run `atlas encode`")
    path = store.file_path(sae.path)
    if not (path / "sae.safetensors").exists():
        raise FileNotFoundError(f"SAE checkpoint {path} is missing; re-run `atlas build` for {store.root}")
    return path


# -- resolving a query into concepts, a window and a strength -----------------------------------------------------

def is_sql(query: str) -> bool:
    return re.match(r"\s*(select|with)\b", query, re.IGNORECASE) is not None


def plan_edit(store: Atlas, query: str, region: str, config: EditConfig, steps: int, size: int,
              said: list[str]) -> PlannedEdit:
    """Concepts, window and strength of one (query, region); appends what it chose and why to `said`."""
    kind = "spatial" if region else "global"
    query = query.strip()
    pixels = parse_region(region, size) if region else None  # a bad region fails before any lookup
    fixed_t = parse_concepts_t(config.concepts_t)
    curves = {key: curve for key, curve in load_curves(store.root).get(kind, {}).items()
              if fixed_t is None or curve.get("concepts_t") == fixed_t}
    by_label = not is_sql(query) and "/" not in query
    window, strength, why = None, None, ""
    block = config.block or block_of(curves, best_curve(curves)) or "mid"
    if config.when.strip().lower() != "auto":
        window = parse_window(config.when)
    elif by_label:
        block, window_name, strength, curve_t, why = auto_choice(curves, kind, config.block or None)
        window = WINDOWS[window_name]
        fixed_t = curve_t if fixed_t is None else fixed_t
    else:  # a concept id or SQL fixes the SAE, hence the window
        why = "auto: the window of the concepts' SAE"
    if by_label:
        ts = sorted({s.t for s in store.saes() if s.block == block and s.branch == "cond"}, reverse=True)
        if not ts:
            raise ValueError(f"the atlas has no SAE of block {block!r}; blocks: "
                             f"{', '.join(sorted({s.block for s in store.saes()}))}")
        t = window.sae_t(ts) if fixed_t is None else check_concepts_t(fixed_t, ts, block)
        found = store.concepts(label=query, t=t, block=block, limit=config.max_concepts)
        if not found:
            raise ValueError(f"no concept of {block} at t={t!r} is linked to {query!r}; "
                             "try another --when or --block, or a concept id")
        target = query
    else:
        found = concepts_of(store, query)
        labels = {c.best_label for c in found}
        target = labels.pop() if len(labels) == 1 else None
    sae = sae_of(store, found, query)
    window = window or window_of_t(sae.t)
    if config.strength is not None:
        strength = float(config.strength)
    elif strength is None:
        own = sae.t == window.sae_t(sorted({s.t for s in store.saes() if s.block == sae.block}, reverse=True))
        strength, how = default_strength(curves.get(curve_key(sae.block, None if own else sae.t)), kind, window)
        why = f"{why}; {how}" if why else how
    if not window.steps(steps):
        raise ValueError(f"window {window} holds none of the {steps} denoising steps; widen it")
    cells = None if pixels is None else region_to_grid(pixels, (sae.grid_h, sae.grid_w), sae.block)
    plan = PlannedEdit(query, region, found, sae, window, strength, target, cells)
    said.append(plan.describe() + (f" ({why})" if why else ""))
    return plan


def check_concepts_t(t: float, ts: list[float], block: str) -> float:
    """`t` when the block has a cond SAE there (`ts`), else a one-line error naming the ones it has."""
    if t not in ts:
        raise ValueError(f"no cond SAE of {block} at t={t:g} for --concepts-t; it has t = "
                         f"{', '.join(f'{x:g}' for x in ts)}")
    return t


def concepts_of(store: Atlas, query: str) -> list[ConceptInfo]:
    """A concept id, or the `concept_id` column of a read-only SQL query."""
    if not is_sql(query):
        return [store.concept(query)]
    table = store.sql(query).table
    if "concept_id" not in table.column_names:
        raise ValueError("the SQL query must return a concept_id column, e.g. SELECT concept_id FROM concept_labels "
                         "WHERE label = 'red circle' AND t = 1.0 AND block = 'mid' LIMIT 5")
    ids = [i for i in dict.fromkeys(table.column("concept_id").to_pylist()) if i]
    if not ids:
        raise ValueError("the SQL query returned no concepts")
    return [store.concept(i) for i in ids]


def sae_of(store: Atlas, found: list[ConceptInfo], query: str) -> SaeInfo:
    if len({c.sae_id for c in found}) != 1:
        raise ValueError(f"{query!r} names concepts of several SAEs; give one --concept per SAE")
    return next(s for s in store.saes() if s.id == found[0].sae_id)


def window_of_t(t: float) -> Window:
    """The paper's window that holds time t (the SAE of t = 1.0 serves early, 0.5 middle, 0.0 final)."""
    return next(w for w in WINDOWS.values() if w.lo <= t and (t <= w.hi if w.closed else t < w.hi))


def load_curves(root: Path) -> dict:
    """Success curves measured by `atlas eval-edits` on this atlas ({} when none were measured)."""
    path = Path(root) / CURVES_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def best_point(curve: dict, window: str | None = None) -> tuple[str, float, float] | None:
    """(window, strength, success) with the highest success, then the most labels resolved to concepts (a
    window without concepts changes nothing, which must not win a tie), then the smallest pixel change."""
    points = [(w, s, ok, found, change) for w, row in curve["windows"].items() if window in (None, w)
              for s, ok, found, change in zip(row["strength"], row["success"], row["resolved"], row["pixel_change"])]
    if not points:
        return None
    w, s, ok, _, _ = max(points, key=lambda p: (p[2], p[3], -p[4]))
    return w, s, ok


def curve_key(block: str, concepts_t: float | None) -> str:
    """Where a curve lives in curves.json: the block, plus the concepts' t when they came from one fixed SAE."""
    return block if concepts_t is None else f"{block}, concepts t={concepts_t:g}"


def block_of(curves: dict, key: str | None) -> str | None:
    """The block a curve measured (curves written before concepts' t was recorded are keyed by block alone)."""
    return None if key is None else curves[key].get("block", key)


def best_curve(curves: dict) -> str | None:
    """The key of the curve that reaches the highest success (None without curves)."""
    scored = [(best[2], key) for key, curve in curves.items() if (best := best_point(curve))]
    return max(scored)[1] if scored else None


def auto_choice(curves: dict, kind: str, block: str | None) -> tuple[str, str, float | None, float | None, str]:
    """Block, window, strength and concepts' t (None: the window's own SAE) for `--when auto` from the kind's
    curves (curve_key -> curve), and why."""
    mine = {key: c for key, c in curves.items() if block in (None, c.get("block", key))}
    chosen = best_curve(mine)
    best = best_point(mine[chosen]) if chosen else None
    if best is None:
        window = PAPER_WINDOW[kind]
        return block or "mid", window, None, None, (
            f"auto: no measured {kind} curves in this atlas (run `atlas eval-edits --kind "
            f"{'spatial' if kind == 'spatial' else 'style'}`), so the paper's {window} window")
    w, s, ok = best
    curve = mine[chosen]
    concepts_t = curve.get("concepts_t")
    source = "" if concepts_t is None else f" with the concepts of t = {concepts_t:g}"
    return block_of(mine, chosen), w, s, concepts_t, (
        f"auto: {kind} edits on {block_of(mine, chosen)} succeeded most in the {w} window{source} at strength "
        f"{s:g} ({ok:.2f} of {curve['n']} edits, atlas eval-edits {curve.get('date', '')})")


def default_strength(curve: dict | None, kind: str, window: Window) -> tuple[float, str]:
    named = window.name if window.name in WINDOWS else window_of_t((window.lo + window.hi) / 2).name
    best = best_point(curve, named) if curve else None
    if best is not None:
        return best[1], f"the best measured strength of the {named} window"
    return DEFAULT_STRENGTH[kind][named], "built-in default strength"


# -- maps, outcome, picture, log -----------------------------------------------------------------------------------

class MapRecorder:
    """Reads each edit's concept activations in the unedited run (a read-only hook: the image is unchanged)."""

    def __init__(self, edits: list[ConceptEdit], plans: list[PlannedEdit], steps: int) -> None:
        self.edits, self.steps = edits, steps
        self.at = [t_to_step(p.sae.t, steps) for p in plans]
        self._maps: list[np.ndarray | None] = [None] * len(edits)

    def hooks(self) -> Hooks:
        hooks = Hooks()
        for i, (edit, step) in enumerate(zip(self.edits, self.at)):
            hooks.on(edit.block, lambda block, info, delta, i=i: self._read(i, delta), steps=[step])
        return hooks

    def _read(self, i: int, delta: torch.Tensor) -> None:
        edit = self.edits[i]
        _, channels, h, w = delta.shape
        x = delta[delta.shape[0] // 2:].permute(0, 2, 3, 1).reshape(-1, channels).float()
        with torch.no_grad():
            code = edit.sae.encode(x)
        mine = torch.isin(code.top_indices, torch.tensor(edit.latents))
        self._maps[i] = (code.top_acts * mine).sum(1).reshape(-1, h, w)[0].numpy()

    def maps(self) -> list[np.ndarray]:
        return [np.zeros((1, 1), np.float32) if m is None else m for m in self._maps]


class Judge(Protocol):
    """Whether one edit did what it asked: `kind` spatial (move `target` into `region`, an image-resolution mask)
    or global (give the image the `target` style); None when it cannot tell."""

    def __call__(self, original: np.ndarray, edited: np.ndarray, kind: str, target: str,
                 region: np.ndarray | None) -> bool | None: ...


def judge_outcome(judge: Judge | None, original: np.ndarray, edited: np.ndarray, plans: list[PlannedEdit],
                  size: int) -> dict:
    """Pixel change always; with a judge also whether each edit did what it asked."""
    outcome: dict = {"pixel_change": pixel_change(original, edited)}
    if judge is None:
        return outcome
    outcome["success"] = [None if p.target is None else
                          judge(original, edited, p.kind, p.target, parse_region(p.region, size) if p.region else None)
                          for p in plans]
    return outcome


def pixel_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference in [0, 1]."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


def outcome_line(outcome: dict) -> str:
    parts = [f"pixel change {outcome['pixel_change']:.3f}"]
    for i, ok in enumerate(outcome.get("success", [])):
        parts.append(f"edit {i + 1}: " + ("not judged (no label)" if ok is None else "success" if ok else "failure"))
    return "outcome: " + ", ".join(parts)


def save_edit_png(result: EditResult, out: str | Path) -> Path:
    from atlas.viz import heat_overlay, image_grid

    size = result.original.shape[0]
    tiles = [result.original, result.edited]
    labels = [f"unedited, seed {result.seed}", f"edited ({result.outcome['pixel_change']:.3f} pixel change)"]
    for i, (plan, heat) in enumerate(zip(result.plans, result.maps)):
        region = parse_region(plan.region, size) if plan.region else None
        tiles.append(heat_overlay(result.original, heat, region))
        ok = result.outcome.get("success", [None] * len(result.plans))[i]
        verdict = "" if ok is None else (" - success" if ok else " - failure")
        labels.append(f"{plan.query[:40]} ({plan.sae.block} t={plan.sae.t:g}) -> {plan.region or 'global'}, "
                      f"{plan.window}, beta {plan.strength:g}{verdict}")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(tiles, labels, cols=len(tiles), cell=192, label_lines=4)
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
    return path


def log_edit(writer: Writer, result: EditResult, config: EditConfig, steps: int, guidance: float | None) -> list[int]:
    """One interventions row per concept, with the inputs and the outcome of the whole edit."""
    base = {"prompt": result.prompt, "seed": result.seed, "steps": steps, "guidance": guidance,
            "branch": config.branch, "outcome": result.outcome, "date": date.today().isoformat(),
            "edits": [{"query": p.query, "region": p.region or None, "window": str(p.window),
                       "t_range": [p.window.lo, p.window.hi], "strength": p.strength,
                       "concepts": [c.concept_id for c in p.concepts]} for p in result.plans]}
    ids = []
    for i, plan in enumerate(result.plans):
        params = {**base, "edit": i}
        for concept in plan.concepts:
            ids.append(writer.catalog.log_intervention(concept.concept_id, plan.kind, plan.strength, params,
                                                       str(result.path) if result.path else None,
                                                       "; ".join(result.said)))
    return ids

