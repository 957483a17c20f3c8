"""`atlas report`: the paper's tables and curves for one atlas, as report/index.html, report.md and PNG plots.

    explained variance per SAE (Table 1: a row per block and k, a column per t, one table per branch)
    layout-prediction IoU per SAE (block, t, branch) on the test split, beside the average-mask and caption-aware
      baselines (Table 3), with the paper's top-concept predictor, the generous top-labelled vote and the weighted
      one (atlas.layout.score), and on the pairs whose caption names no position
    every deviation from the paper, with its effect where it is cheap to measure (DEVIATIONS)
    concept cohesion and separability per SAE
    context-free latents: those firing at the same place whatever the image (lowest spatial variance)
    interventions (Tables 4 and 5, and adding objects): the tables `atlas eval-edits` wrote to <atlas>/edits/

Cohesion is the mean cosine similarity between the decoder directions of concepts that share a best
label (averaged over labels); separability is the mean cosine similarity between the mean directions
of different labels (lower = more separable); the paper does not define its figures beyond "mean similarity between
concepts", so the report does not compare the two.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from atlas.errors import NotFoundError  # noqa: E402
from atlas.layout.config import METHODS  # noqa: E402
from atlas.layout.score import DictionaryRule, LayoutScore, layout_iou  # noqa: E402
from atlas.models.text import TextEmbedder  # noqa: E402
from atlas.report.compare import report_figures, side_by_side  # noqa: E402
from atlas.report.saebench import load_saebench, saebench_markdown  # noqa: E402
from atlas.report.tables import ev_pivot, markdown_table, sae_columns  # noqa: E402
from atlas.store import Atlas, SaeInfo  # noqa: E402
from atlas.store.ids import branch_part  # noqa: E402

PAPER_LAYOUT_IOU_MID_T1 = 0.26
DEVIATIONS = [
    ("layout vote", "the top concept of each position", "top-concept as the paper; top-labelled (most active "
     "labelled concept) and weighted (every active concept's evidence) beside it", "early top concepts are rarely "
     "labelled, so the paper's vote says little at t = 1.0", "the layout table"),
    ("label earned", "IoU > 0.5 with an object", "IoU > 0.5 with at least min_hits = 2 objects", "one chance overlap "
     "on a small grid would label a concept", "min_hits 1 below"),
    ("dictionary images", "40k held-out prompts", "train and dictionary splits (the SAEs' training images too)",
     "more objects per label in a small atlas", "dictionary split only below"),
    ("label embeddings", "Word2Vec", "all-MiniLM-L6-v2 sentence embeddings", "multi-word labels; no download",
     "not measured"),
    ("vote threshold", "a fixed cosine similarity (value not given)", "chosen per SAE on the dictionary images",
     "one value fits some grids and misses others", "threshold column"),
    ("baselines", "none", "the label's average mask, and the caption-aware average mask of the named position",
     "a figure needs something to beat", "the layout table"),
]
"""Rows (rule, paper, here, why, effect) of the report's table of deviations from the paper's method."""
CONTEXT_FREE_MIN_FIRINGS = 20


def decoder(atlas: Atlas, sae: SaeInfo) -> np.ndarray:
    from atlas.sae import Sae

    return Sae.from_pretrained(atlas.file_path(sae.path)).W_dec.detach().float().numpy()


def label_geometry(w: np.ndarray, latent_labels: list[tuple[int, str]]) -> tuple[float, float, int]:
    """(cohesion, separability, labels) of decoder rows `w` (unit norm) grouped by label.

    Cohesion: the mean over labels with two or more latents of the mean pairwise cosine of their rows.
    Separability: the mean pairwise cosine between the labels' normalised mean rows (lower = more separable)."""
    if not latent_labels:
        return float("nan"), float("nan"), 0
    groups: dict[str, list[int]] = {}
    for latent, label in latent_labels:
        groups.setdefault(label, []).append(latent)
    within = []
    for latents in groups.values():
        if len(latents) > 1:
            sims = w[latents] @ w[latents].T
            within.append(sims[np.triu_indices(len(latents), 1)].mean())
    centroids = np.stack([w[latents].mean(0) for latents in groups.values()])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    between = [float(centroids[i] @ centroids[j]) for i, j in combinations(range(len(centroids)), 2)]
    return (float(np.mean(within)) if within else float("nan"), float(np.mean(between)) if between else float("nan"),
            len(groups))


def cohesion_separability(atlas: Atlas, sae: SaeInfo) -> tuple[float, float, int]:
    """(cohesion, separability, labels used) of one SAE's labelled concepts, grouped by best label."""
    found = atlas.query("SELECT latent, best_label FROM concepts WHERE sae_id = ? AND best_label IS NOT NULL",
                        [sae.id])
    rows = list(zip(found["latent"].to_pylist(), found["best_label"].to_pylist()))
    return label_geometry(decoder(atlas, sae), rows) if rows else (float("nan"), float("nan"), 0)


SPREAD_SQL = """
    SELECT latent, firings, images, round(mr, 2) AS mean_row, round(mc, 2) AS mean_col,
           round((greatest(r2 - mr * mr, 0) + greatest(c2 - mc * mc, 0)) / $uniform, 4) AS spread
    FROM (SELECT latent, count(*) AS firings, count(DISTINCT image_id) AS images,
                 sum(value * row) / sum(value) AS mr, sum(value * col) / sum(value) AS mc,
                 sum(value * row * row) / sum(value) AS r2, sum(value * col * col) / sum(value) AS c2
          FROM {codes} GROUP BY latent HAVING count(DISTINCT image_id) >= $min_images)"""
"""Each latent's value-weighted positional variance (row + col) over every firing, divided by that of a uniform
spread over the grid: 0 = always one cell, 1 = anywhere. Latents on fewer than $min_images images are left out."""


def _spread_params(grid: tuple[int, int], min_images: int) -> dict:
    return {"uniform": (grid[0] ** 2 - 1) / 12 + (grid[1] ** 2 - 1) / 12, "min_images": min_images}


def positional_spread(codes: pa.Table, grid: tuple[int, int],
                      min_images: int = CONTEXT_FREE_MIN_FIRINGS) -> pa.Table:
    """SPREAD_SQL over codes (image_id, row, col, latent, value) of one SAE, most fixed first."""
    import duckdb

    with duckdb.connect() as con:
        con.register("codes", codes)
        return con.sql(SPREAD_SQL.format(codes="codes") + " ORDER BY spread, firings DESC",
                       params=_spread_params(grid, min_images)).to_arrow_table()


def context_free(atlas: Atlas, sae: SaeInfo, n: int = 5) -> list[dict]:
    """The `n` latents whose firings sit at the most fixed place (SPREAD_SQL), with their concept ids."""
    query = f"""
        WITH s AS ({SPREAD_SQL.format(codes="(SELECT * FROM codes WHERE sae_id = $sae_id)")})
        SELECT c.concept_id, s.firings, s.images, s.mean_row, s.mean_col, s.spread, c.best_label
        FROM s JOIN concepts c ON c.sae_id = $sae_id AND c.latent = s.latent
        ORDER BY s.spread, s.firings DESC LIMIT $n"""
    params = {"sae_id": sae.id, "n": n, **_spread_params((sae.grid_h, sae.grid_w), CONTEXT_FREE_MIN_FIRINGS)}
    return atlas.query(query, params).to_pylist()


def build_report(atlas: Atlas, out_dir: str | Path, compare_with: Atlas | None = None) -> dict:
    """Compute every figure, write index.html, report.md, figures.json and plots; returns the figures.

    Layout prediction is scored with every method of METHODS, each with its threshold chosen per SAE on the
    dictionary images. With `compare_with` (another atlas of the same world, reported before), a side-by-side
    section (atlas.report.compare) follows."""
    other_figures = report_figures(compare_with) if compare_with is not None else None  # refused before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saes = atlas.saes()
    ev = [{"block": s.block, "t": s.t, "branch": s.branch, "variant": s.variant,
           "explained_variance": s.metrics.get("explained_variance"),
           "fvu": s.metrics.get("fvu"), "dead_fraction": s.metrics.get("dead_fraction"), "k": s.k,
           "n_latents": s.n_latents, "sae_type": s.metrics.get("sae_type", "topk")} for s in saes]
    embedder = TextEmbedder()  # one label-embedding model for every scoring below (each load takes seconds)
    rules = {"stored dictionary": None, "min_hits 1": DictionaryRule(min_hits=1),
             "dictionary split only": DictionaryRule(splits=("dictionary",))}
    try:
        scores = sorted(layout_iou(atlas, methods=METHODS, embedder=embedder),
                        key=lambda score: METHODS.index(score.method))
        variants = [{"dictionary": name, **asdict(x)} for name, rule in rules.items() if rule is not None
                    for x in layout_iou(atlas, methods=("top-concept",), rule=rule, embedder=embedder)
                    if x.t == max(s.t for s in saes)]
        variants = [{"dictionary": "stored dictionary", **asdict(x)} for x in scores
                    if x.method == "top-concept" and x.t == max(s.t for s in saes)] + variants
        layout_note = ""
    except NotFoundError as err:  # a build too small for a held-out split: every other figure still stands
        scores, variants, layout_note = [], [], f"Not scored: {err}."
    structure = []
    for s in saes:
        cohesion, separability, n_labels = cohesion_separability(atlas, s)
        structure.append({"block": s.block, "t": s.t, "branch": s.branch, "variant": s.variant, "cohesion": cohesion,
                          "separability": separability, "labels": n_labels})
    free = {s.name: context_free(atlas, s) for s in saes}
    figures = {"saebench": load_saebench(atlas.root),
               "explained_variance": ev, "layout": [asdict(x) for x in scores], "layout_note": layout_note,
               "dictionary_rules": variants,
               "structure": structure, "context_free": free, "interventions": intervention_tables(atlas.root)}
    if compare_with is not None:
        figures["comparison"] = side_by_side((atlas, compare_with), figures=(figures, other_figures))
    (out / "figures.json").write_text(json.dumps(figures, indent=1, default=float))
    if scores:
        _plot_layout(scores, out / "layout_iou.png")
    _plot_structure(structure, out / "cohesion.png")
    markdown = report_markdown(figures)
    (out / "report.md").write_text(markdown)
    (out / "index.html").write_text(_html(markdown, atlas.root))
    return figures


def intervention_tables(root: Path) -> list[dict]:
    """The tables `atlas eval-edits` wrote (<atlas>/edits/eval-*.md), each with its date and command."""
    tables = []
    for path in sorted((Path(root) / "edits").glob("eval-*.md")):
        saved = path.with_suffix(".json")
        run = json.loads(saved.read_text()) if saved.is_file() else {}
        tables.append({"name": path.stem, "date": run.get("date", ""), "table": path.read_text().strip()})
    return tables


def report_markdown(figures: dict) -> str:
    ev = figures["explained_variance"]
    lines = ["# Atlas report", "", "## Explained variance per SAE (paper Table 1)", ""]
    for branch in dict.fromkeys(r["branch"] for r in ev):
        lines += [f"{branch} branch (rows: block and k, columns: t; TopK SAEs, the paper's)", "",
                  *ev_pivot([r for r in ev if r["branch"] == branch and r["sae_type"] == "topk"]), ""]
    lines += markdown_table(ev, [*sae_columns(ev), "sae_type", "k", "explained_variance", "fvu", "dead_fraction",
                                 "n_latents"])
    lines += ["", "## Layout prediction on the test split (paper Table 3)", "",
              "Mean IoU of the predicted mask with the annotated one. Baselines: baseline_iou is the label's average "
              "mask; caption_baseline_iou reads the caption (where it names the object's position, the average mask "
              "of that position). Methods: top-concept is the paper's rule (each position's top concept votes with "
              "its label embedding); top-labelled, more generous, lets the most active labelled concept vote; "
              "weighted sums every active concept's evidence for the label (its mean IoU with the label's objects on "
              "the dictionary images). Thresholds are chosen on the dictionary images. unnamed_* columns: the pairs "
              "whose caption names no position, where the caption gives nothing away (both baselines agree there). "
              f"Paper: about {PAPER_LAYOUT_IOU_MID_T1} from the mid block at t = 1.0.", "",
              figures.get("layout_note") or "![layout IoU](layout_iou.png)", ""]
    if figures["layout"]:
        lines += markdown_table(figures["layout"], ["method", *sae_columns(figures["layout"]), "iou", "baseline_iou",
                                                    "caption_baseline_iou", "pairs", "unnamed_iou",
                                                    "unnamed_baseline_iou", "unnamed_pairs", "threshold"])
    lines += ["", "## Deviations from the paper's method", "",
              "| rule | paper | here | why | effect |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in DEVIATIONS]
    if figures.get("dictionary_rules"):
        lines += ["", "The paper's top-concept vote at the first captured step with the concept dictionary built by "
                  "other rules (in memory, same IoU > 0.5 rule):", ""]
        lines += markdown_table(figures["dictionary_rules"], ["dictionary", *sae_columns(figures["dictionary_rules"]),
                                                              "iou", "baseline_iou", "caption_baseline_iou"])
    lines += ["", "## Concept cohesion and separability", "",
              "Ours: cohesion is the mean cosine similarity between the decoder directions of concepts that share a "
              "best label (averaged over labels); separability is the mean cosine similarity between the mean "
              "directions of different labels (lower = more separable). The paper reports cohesion 0.588 / 0.639 / "
              "0.664 and separability 0.433 / 0.363 / 0.344 (mid, t = 1.0 / 0.5 / 0.0) without defining either "
              "beyond 'mean similarity between concepts', so the two sets of numbers are not comparable: read ours "
              "for their trend over t only.", "", "![cohesion](cohesion.png)", ""]
    lines += markdown_table(figures["structure"], [*sae_columns(figures["structure"]), "cohesion", "separability",
                                                   "labels"])
    lines += ["", "## Context-free latents (lowest spatial spread; 0 = always the same cell)", ""]
    for name, rows in figures["context_free"].items():
        lines += [f"**{name}**", ""] + markdown_table(rows, ["concept_id", "images", "mean_row", "mean_col", "spread",
                                                             "best_label"]) + [""]
    lines += ["## Interventions (paper Tables 4 and 5) and adding objects", "",
              "Each window's strength is chosen on one set of prompts and its success reported on held-out ones "
              "(`atlas eval-edits --select-seed S --seed T`). Paper (SD v1.4, mid block): spatial 0.80 / 0.35 / "
              "0.23, style 0.69 / 0.93 / 0.78 (early / middle / final).", ""]
    if not figures.get("interventions"):
        lines += ["Not measured on this atlas: run `atlas eval-edits --kind spatial` (or style, add), then "
                  "`atlas report`.", ""]
    for run in figures.get("interventions", []):
        lines += [f"**{run['name']}** ({run['date']})", "", run["table"], ""]
    lines += saebench_markdown(figures.get("saebench") or {})
    if figures.get("comparison"):
        this, other = figures["comparison"]["names"]
        lines += [f"## Side by side: {this} vs {other}", "", "The same figures for this atlas and another of the same "
                  "world (`atlas report --compare`), from each atlas's own test split and edit runs.", "",
                  *figures["comparison"]["lines"], ""]
    return "\n".join(lines) + "\n"


def _series(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped into one plotted line per block, branch and variant (the branch and variant named only when
    there are several), each ordered from t = 1.0 down."""
    several = len({(r["branch"], r["variant"]) for r in rows}) > 1
    lines: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: -r["t"]):
        name = f"{r['block']} {branch_part(r['branch'], r['variant'])}" if several else r["block"]
        lines.setdefault(name, []).append(r)
    return lines


def _plot_layout(scores: list[LayoutScore], path: Path) -> None:
    methods = list(dict.fromkeys(s.method for s in scores))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.2), squeeze=False, sharey=True)
    for method, ax in zip(methods, axes[0]):
        for name, mine in _series([asdict(s) for s in scores if s.method == method]).items():
            line, = ax.plot([s["t"] for s in mine], [s["iou"] for s in mine], marker="o", label=name)
            ax.plot([s["t"] for s in mine], [s["baseline_iou"] for s in mine], ls="--", color=line.get_color(),
                    alpha=0.6)
        ax.axhline(PAPER_LAYOUT_IOU_MID_T1, color="grey", lw=0.8, ls=":", label="paper, mid t=1.0")
        ax.invert_xaxis()
        ax.set(xlabel="t (1.0 = first step)", title=method, ylim=(0, 1))
    axes[0][0].set_ylabel("layout IoU (dashed: baseline)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_structure(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    for key, ax in zip(("cohesion", "separability"), axes):
        for name, mine in _series(rows).items():
            ax.plot([r["t"] for r in mine], [r[key] for r in mine], marker="o", label=name)
        ax.invert_xaxis()
        ax.set(xlabel="t", title=key)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _html(markdown: str, root: Path) -> str:
    """report.md rendered by markdown-it-py (CommonMark with tables, raw HTML escaped) into a standalone page."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)  # labels are text, not HTML
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Atlas report: {html.escape(str(root))}"
            f"</title><style>{style}</style></head><body>{body}</body></html>\n")
