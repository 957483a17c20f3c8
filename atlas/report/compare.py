"""Two atlases of the same world side by side (a U-Net and a DiT, say): explained variance, layout prediction
against both baselines, and how early each label earns a concept. Reads each atlas's report figures
(`<atlas>/report/figures.json`, written by `atlas report`) and its concept dictionary."""

from __future__ import annotations

import json
from pathlib import Path

from atlas.errors import NotFoundError
from atlas.report.tables import markdown_table
from atlas.store import Atlas

COMPARED_METHODS = ("weighted", "top-concept")


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
