"""Two atlases of the same world side by side (a U-Net and a DiT, say): explained variance, layout prediction
against both baselines, how early each label earns a concept, and the edits each needed (strength, success,
locality). Reads each atlas's report figures (`<atlas>/report/figures.json`, written by `atlas report`), its concept
dictionary and the runs of `atlas eval-edits` (`<atlas>/edits/eval-<kind>.json`)."""

from __future__ import annotations

import json
from pathlib import Path

from atlas.edit.curves import sweep_rank
from atlas.errors import NotFoundError
from atlas.report.tables import fmt, markdown_table
from atlas.store import Atlas

COMPARED_METHODS = ("weighted", "top-concept")
COMPARED_EDITS = ("spatial", "style")
"""The edit kinds compared: the runs of `atlas eval-edits --kind spatial` and `--kind style` at the default block."""
WORKS = 0.5
"""The sweep success at which an edit counts as working, for "the strength it needed"."""


def side_by_side(atlases: tuple[Atlas, Atlas], names: tuple[str, str] | None = None,
                 figures: tuple[dict | None, dict | None] = (None, None)) -> dict:
    """Everything compared between two atlases: {"names", "lines" (markdown), "values" (name_..._metric)}. Names
    default to the atlases' model names (their directory names when the models share one, else this / other);
    figures not given are read from each atlas's stored report."""
    if names is None:
        models = tuple(_model_name(a) for a in atlases)
        dirs = tuple(Path(a.root).name for a in atlases)
        names = models if models[0] != models[1] else dirs if dirs[0] != dirs[1] else ("this", "other")
    found = tuple(f if f is not None else report_figures(a) for a, f in zip(atlases, figures))
    lines, values = comparison(names, found, tuple(emergence(a) for a in atlases))
    edit_lines, edit_values = edit_comparison(names, tuple(edit_runs(a.root) for a in atlases))
    if not edit_lines:
        edit_lines = ["", "Edits: not compared (run `atlas eval-edits --kind spatial` and `--kind style` on both "
                      "atlases)."]
    return {"names": list(names), "lines": lines + edit_lines, "values": values | edit_values}


def _model_name(atlas: Atlas) -> str:
    try:
        return atlas.model()["name"]
    except NotFoundError:
        return Path(atlas.root).name


def report_figures(atlas: Atlas) -> dict:
    """The figures `atlas report` stored for this atlas."""
    path = Path(atlas.root) / "report" / "figures.json"
    if not path.exists():
        raise NotFoundError(f"{atlas.root} has no report yet; run `atlas report --atlas {atlas.root}` first")
    return json.loads(path.read_text())


def emergence(atlas: Atlas, branch: str = "cond") -> list[dict]:
    """Per (block, label): the first (largest) t at which the label has a linked concept in the primary SAEs."""
    return atlas.query("SELECT block, label, max(t) AS first_t FROM concept_labels WHERE branch = ? AND variant = '' "
                       "GROUP BY block, label ORDER BY block, label", [branch]).to_pylist()


def edit_runs(root: str | Path) -> dict[str, dict]:
    """Per compared kind, the stored run of `atlas eval-edits` (its JSON), for the kinds this atlas has one of."""
    runs = {}
    for kind in COMPARED_EDITS:
        path = Path(root) / "edits" / f"eval-{kind}.json"
        if path.is_file():
            runs[kind] = json.loads(path.read_text())
    return runs


def needed_strength(points: list[dict], window: str) -> float | None:
    """The smallest swept strength at which the window's edits succeed at least WORKS of the time (None: none)."""
    working = [p["strength"] for p in points if p["window"] == window and p["success"] >= WORKS]
    return min(working) if working else None


def edit_comparison(names: tuple[str, str], runs: tuple[dict, dict]) -> tuple[list[str], dict[str, float]]:
    """Markdown lines comparing the edits of two atlases per kind and window (the held-out success at the strength
    chosen on the sweep, the sweep itself, the smallest strength that worked, the change inside / outside the edit's
    region and whether the other objects stayed), and the figures a benchmark prints."""
    values: dict[str, float] = {}
    rows = []
    for kind in COMPARED_EDITS:
        if not all(kind in r for r in runs):
            continue
        windows = list(dict.fromkeys(p["window"] for r in runs for p in r[kind]["points"]))
        for window in windows:
            for name, run in zip(names, runs):
                points = run[kind]["points"]
                swept = [p for p in points if p["window"] == window]
                if not swept:
                    continue
                chosen = next((p for p in run[kind]["held_out"] if p["window"] == window), None) or max(
                    swept, key=lambda p: sweep_rank(p["success"], p["resolved"], p["pixel_change"]))
                needed = needed_strength(points, window)
                rows.append({"kind": kind, "window": window, "model": name,
                             "sweep": ", ".join(f"{p['strength']:g}: {p['success']:.2f}" for p in swept),
                             "needed": "never" if needed is None else f"{needed:g}",
                             "chosen": f"{chosen['strength']:g}", "held-out": chosen["success"],
                             "in / out": f"{fmt(chosen.get('change_in'))} / {fmt(chosen.get('change_out'))}",
                             "others stay": chosen.get("others_stay")})
                key = f"{name}_{kind}_{window}"
                values[f"{key}_success"] = float(chosen["success"])
                values[f"{key}_strength"] = float(chosen["strength"])
                if chosen.get("change_out") is not None:
                    values[f"{key}_change_out"] = float(chosen["change_out"])
    if not rows:
        return [], values
    columns = ["kind", "window", "model", "sweep", "needed", "chosen", "held-out", "in / out", "others stay"]
    lines = ["", "Edits (`atlas eval-edits`): per window the sweep (strength: success), the smallest strength that "
             f"succeeded in at least {WORKS:.0%} of the sweep's edits (needed), the strength chosen on the sweep and "
             "its success on held-out prompts, the mean pixel change inside / outside the edit's region there, and "
             "the share of edits whose other objects stayed:", ""]
    return lines + markdown_table(rows, columns) + ["", reading(names, runs)], values


def reading(names: tuple[str, str], runs: tuple[dict, dict]) -> str:
    """What the edit table can carry: per kind the edits behind each cell and the unedited baseline, so a reader
    sees which differences are a single edit, and what a side-by-side of two models cannot separate."""
    parts = []
    for kind in COMPARED_EDITS:
        if not all(kind in r for r in runs):
            continue
        cells = [min((p.get("n", 0) for p in r[kind]["held_out"] or r[kind]["points"]), default=0) for r in runs]
        if not min(cells):
            continue
        baseline = runs[0][kind].get("baseline")
        where = "" if baseline is None else f", unedited baseline {baseline:.2f}"
        one = f"one edit = {1 / min(cells):.2f}"
        parts.append(f"{kind}: held-out edits per cell {', '.join(f'{n} {c}' for n, c in zip(names, cells))} "
                     f"({one}{where})")
    counted = "Reading it: " + "; ".join(parts) + ". " if parts else "Reading it: "
    return (counted + "Strengths multiply each block's own update, whose size differs "
            "between the models; and two models differ in more than their skip connections (widths, grids, "
            "training), so this compares these two models, not two architectures in isolation.")


def _primary(rows: list[dict], branch: str) -> list[dict]:
    return [r for r in rows if r["branch"] == branch and not r.get("variant")]


def comparison(names: tuple[str, str], figures: tuple[dict, dict], emerged: tuple[list[dict], list[dict]],
               branch: str = "cond") -> tuple[list[str], dict[str, float]]:
    """Markdown lines of the side-by-side tables, and the figures a benchmark prints (name_block_t_metric)."""
    a, b = names
    values: dict[str, float] = {}
    ev = [{(r["block"], r["t"]): r["explained_variance"] for r in _primary(f["explained_variance"], branch)}
          for f in figures]
    keys = sorted(set(ev[0]) | set(ev[1]), key=lambda key: (key[0], -key[1]))
    rows = [{"block": block, "t": t, a: ev[0].get((block, t)), b: ev[1].get((block, t))} for block, t in keys]
    lines = ["Explained variance on the held-out test images:", ""] + markdown_table(rows, ["block", "t", a, b])
    layout = [{(r["method"], r["block"], r["t"]): r for r in _primary(f["layout"], branch)} for f in figures]
    rows = []
    for method in COMPARED_METHODS:
        for block, t in keys:
            row = {"method": method, "block": block, "t": t}
            for name, scores in zip(names, layout):
                score = scores.get((method, block, t))
                if score is not None:
                    row |= {name: score["iou"], f"{name} caption baseline": score["caption_baseline_iou"],
                            f"{name} unnamed": score["unnamed_iou"],
                            f"{name} unnamed baseline": score["unnamed_baseline_iou"]}
                    values[f"{name}_{block}_t{_tag(t)}_{method.replace('-', '_')}"] = score["iou"]
            rows.append(row)
    columns = ["method", "block", "t"] + [f"{n}{part}" for n in names
                                          for part in ("", " caption baseline", " unnamed", " unnamed baseline")]
    lines += ["", "Layout prediction, mean IoU on each atlas's test split, beside the baseline that reads the caption "
              "and on the pairs whose caption names no position (where the baseline is the label's average mask):",
              ""] + markdown_table(rows, columns)
    ts = sorted({t for _, t in keys}, reverse=True)
    rows = []
    for name, found in zip(names, emerged):
        blocks = list(dict.fromkeys(r["block"] for r in found))
        for block in [*blocks, "any"]:
            first: dict[str, float] = {}
            for r in found:
                if block in ("any", r["block"]):
                    first[r["label"]] = max(first.get(r["label"], -1.0), r["first_t"])
            rows.append({"model": name, "block": block, "labels": len(first),
                         **{f"t={t:g}": sum(v >= t for v in first.values()) for t in ts}})
            values[f"{name}_{block}_labels_linked_t{_tag(ts[0])}"] = float(rows[-1][f"t={ts[0]:g}"])
    lines += ["", "Emergence: labels with a linked concept at that t or earlier (the dictionary's rule; labels: "
              "linked at any t):", ""] + markdown_table(rows, ["model", "block", *(f"t={t:g}" for t in ts), "labels"])
    return lines, values


def _tag(t: float) -> str:
    return f"{t:g}".replace(".", "")
