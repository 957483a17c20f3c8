"""Planning an edit: resolve a query (label, concept id or SQL) into concepts of one SAE, a kind, a method, a window
and a strength.

    kind     global without a region; add when the prompt does not name the concepts' label (the object must be
             added); else spatial (the object is moved)
    method   coefficients (the paper's rule) or donor (atlas.edit.add), by --method (auto: donor for add edits)

With `--when auto` the window, block and strength come from the measured curves of the method (atlas.edit.curves:
the atlas's, else those its model ships), else from the paper's windows and built-in strengths; every plan says
what it chose and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from atlas.edit.config import EditConfig, parse_concepts_t
from atlas.edit.core import WINDOWS, Window, parse_region, parse_window, region_to_grid
from atlas.edit.curves import best_curve, best_point, block_of, curve_key, kind_curves
from atlas.errors import BadInputError, NotFoundError
from atlas.store import Atlas, ConceptInfo, SaeInfo

DEFAULT_STRENGTH = {"spatial": dict.fromkeys(("early", "middle", "final"), 16.0),
                    "global": dict.fromkeys(("early", "middle", "final"), 1024.0),
                    "add": dict.fromkeys(("all", "early", "middle", "final"), 2.0)}
"""beta when neither --strength nor measured curves give one: the middle of the sweeps that moved the shapes
model's images (bench/RESULTS.md). A global beta is spread over the grid (beta ||z_ij|| / sum ||z||), so it
must be about the grid's summed code norm to match a spatial beta of 1; an added object's is how far its update
moves to the donor's."""


DEFAULT_WINDOW = {"spatial": "early", "global": "middle", "add": "all"}
"""Where each kind of edit works best without curves: the paper's windows, and every step for an added object."""


@dataclass
class PlannedEdit:
    """One resolved edit: which concepts of which SAE, where, when and how strongly."""

    query: str
    region: str
    kind: str
    """spatial (move an object the prompt has), global (a style everywhere) or add (an object the prompt lacks)."""
    method: str
    """coefficients (the paper's rule, atlas.edit.core) or donor (atlas.edit.add)."""
    concepts: list[ConceptInfo]
    sae: SaeInfo
    window: Window
    strength: float
    target: str | None
    """The label the outcome is judged by (the label asked for, or the concepts' best label)."""
    cells: np.ndarray | None
    """The region on the SAE's grid (None for a global edit)."""
    why: str = ""
    """Why this window and strength (the curves or the defaults they came from)."""

    def describe(self) -> str:
        ids = ", ".join(c.concept_id for c in self.concepts[:3]) + (" ..." if len(self.concepts) > 3 else "")
        where = f"into {self.region}" if self.region else "everywhere"
        how = " from a donor text" if self.method == "donor" else ""
        return (f"{self.kind} edit of {self.query!r} ({len(self.concepts)} concepts: {ids}) {where}{how}, "
                f"window {self.window} (t {self.window.lo:g}-{self.window.hi:g}), strength {self.strength:g}"
                + (f" ({self.why})" if self.why else ""))


def is_sql(query: str) -> bool:
    return re.match(r"\s*(select|with)\b", query, re.IGNORECASE) is not None


def plan_edit(store: Atlas, prompt: str, query: str, region: str, config: EditConfig, steps: int,
              size: int) -> PlannedEdit:
    """Concepts, kind, method, window and strength of one (query, region) on `prompt`; the plan says what it chose
    and why (`why`)."""
    query = query.strip()
    pixels = parse_region(region, size) if region else None  # a bad region fails before any lookup
    by_label = not is_sql(query) and "/" not in query
    found = [] if by_label else concepts_of(store, query)
    target = query if by_label else single_label(found)
    kind = "global" if not region else "add" if target and not names(prompt, target) else "spatial"
    method = edit_method(config.method, kind, region)
    curve_kind = "add" if method == "donor" else "spatial" if region else "global"
    fixed_t = parse_concepts_t(config.concepts_t)
    measured, source = kind_curves(store.root, store.model()["source"], curve_kind)
    curves = {key: curve for key, curve in measured.items() if fixed_t is None or curve.get("concepts_t") == fixed_t}
    window, strength, why = None, None, ""
    block = config.block or block_of(curves, best_curve(curves)) or "mid"
    if config.when.strip().lower() != "auto":
        window = parse_window(config.when)
    elif by_label:
        block, window_name, strength, curve_t, why = auto_choice(curves, curve_kind, config.block or None, source)
        window = parse_window(window_name)
        fixed_t = curve_t if fixed_t is None else fixed_t
    else:  # a concept id or SQL fixes the SAE, hence the window
        why = "auto: the window of the concepts' SAE"
    if by_label:
        ts = sorted({s.t for s in store.saes() if s.block == block and s.branch == "cond"}, reverse=True)
        if not ts:
            raise NotFoundError(f"the atlas has no SAE of block {block!r}; blocks: "
                                f"{', '.join(sorted({s.block for s in store.saes()}))}")
        t = window.sae_t(ts) if fixed_t is None else check_concepts_t(fixed_t, ts, block)
        found = store.concepts(label=query, t=t, block=block, limit=config.max_concepts)
        if not found and method == "donor":  # the donor needs no concept: any SAE's show where the label lies
            anywhere = store.concepts(label=query, limit=config.max_concepts * 10)
            found = [c for c in anywhere if anywhere and c.sae_id == anywhere[0].sae_id][:config.max_concepts]
        if not found:
            raise NotFoundError(f"no concept of {block} at t={t!r} is linked to {query!r}; "
                                "try another --when or --block, or a concept id")
    sae = sae_of(store, found, query)
    window = window or window_of_t(sae.t)
    if config.strength is not None:
        strength = float(config.strength)
    elif strength is None:
        own = sae.t == window.sae_t(sorted({s.t for s in store.saes() if s.block == sae.block}, reverse=True))
        strength, how = default_strength(curves.get(curve_key(sae.block, None if own else sae.t)), curve_kind,
                                         window)
        why = f"{why}; {how}" if why else how
    if not window.steps(steps):
        raise BadInputError(f"window {window} holds none of the {steps} denoising steps; widen it")
    cells = None if pixels is None else region_to_grid(pixels, (sae.grid_h, sae.grid_w), sae.block)
    return PlannedEdit(query, region, kind, method, found, sae, window, strength, target, cells, why)


def names(prompt: str, label: str) -> bool:
    """Whether the prompt names the label (as whole words, any case): "a blue square" names "blue square"."""
    words = [re.escape(w) for w in label.lower().split()]
    return bool(words) and re.search(r"\b" + r"\s+".join(words) + r"\b", prompt.lower()) is not None


def edit_method(method: str, kind: str, region: str) -> str:
    """The method an edit of `kind` uses: --method, where auto means donor for an added object."""
    if method == "auto":
        return "donor" if kind == "add" else "coefficients"
    if method == "donor" and not region:
        raise BadInputError("the donor method adds an object into a region: give --region")
    return method


def single_label(found: list[ConceptInfo]) -> str | None:
    """The one best label of the concepts, None when they have several (or none)."""
    labels = {c.best_label for c in found}
    return labels.pop() if len(labels) == 1 else None


def check_concepts_t(t: float, ts: list[float], block: str) -> float:
    """`t` when the block has a cond SAE there (`ts`), else a one-line error naming the ones it has."""
    if t not in ts:
        raise NotFoundError(f"no cond SAE of {block} at t={t:g} for --concepts-t; it has t = "
                            f"{', '.join(f'{x:g}' for x in ts)}")
    return t


def concepts_of(store: Atlas, query: str) -> list[ConceptInfo]:
    """A concept id, or the `concept_id` column of a read-only SQL query."""
    if not is_sql(query):
        return [store.concept(query)]
    table = store.sql(query).table
    if "concept_id" not in table.column_names:
        raise BadInputError("the SQL query must return a concept_id column, e.g. SELECT concept_id FROM concept_labels "
                            "WHERE label = 'red circle' AND t = 1.0 AND block = 'mid' LIMIT 5")
    ids = [i for i in dict.fromkeys(table.column("concept_id").to_pylist()) if i]
    if not ids:
        raise NotFoundError("the SQL query returned no concepts")
    return [store.concept(i) for i in ids]


def sae_of(store: Atlas, found: list[ConceptInfo], query: str) -> SaeInfo:
    if len({c.sae_id for c in found}) != 1:
        raise BadInputError(f"{query!r} names concepts of several SAEs; give one --concept per SAE")
    return next(s for s in store.saes() if s.id == found[0].sae_id)


def window_of_t(t: float) -> Window:
    """The paper's window that holds time t (the SAE of t = 1.0 serves early, 0.5 middle, 0.0 final)."""
    return next(w for w in WINDOWS.values() if w.lo <= t and (t <= w.hi if w.closed else t < w.hi))


def auto_choice(curves: dict, kind: str, block: str | None,
                source: str = "this atlas") -> tuple[str, str, float | None, float | None, str]:
    """Block, window, strength and concepts' t (None: the window's own SAE) for `--when auto` from the kind's
    curves (curve_key -> curve, from `source`), and why."""
    mine = {key: c for key, c in curves.items() if block in (None, c.get("block", key))}
    chosen = best_curve(mine)
    best = best_point(mine[chosen]) if chosen else None
    if best is None:
        window = DEFAULT_WINDOW[kind]
        return block or "mid", window, None, None, (
            f"auto: no measured {kind} curves in this atlas or its model (run `atlas eval-edits --kind "
            f"{'style' if kind == 'global' else kind}`), so the default {window} window")
    w, s, ok = best
    curve = mine[chosen]
    concepts_t = curve.get("concepts_t")
    concepts = "" if concepts_t is None else f" with the concepts of t = {concepts_t:g}"
    return block_of(mine, chosen), w, s, concepts_t, (
        f"auto: {kind} edits on {block_of(mine, chosen)} succeeded most in the {w} window{concepts} at strength "
        f"{s:g} ({ok:.2f} of {curve['n']} edits, atlas eval-edits {curve.get('date', '')} on {source})")


def default_strength(curve: dict | None, kind: str, window: Window) -> tuple[float, str]:
    named = window.name if window.name in DEFAULT_STRENGTH[kind] else window_of_t((window.lo + window.hi) / 2).name
    best = best_point(curve, named) if curve else None
    if best is not None:
        return best[1], f"the best measured strength of the {named} window"
    return DEFAULT_STRENGTH[kind][named], "built-in default strength"
