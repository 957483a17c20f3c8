"""Markdown tables that the report and `atlas train` share (light: no plotting, no atlas)."""

from __future__ import annotations


def fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-" if value is None else str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    """Rows (dicts) as the lines of a markdown table of `columns`."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]


def sae_columns(rows: list[dict]) -> list[str]:
    """The columns naming the SAE of each row: block, t, branch, and variant when some row has one."""
    return ["block", "t", "branch", *(["variant"] if any(r.get("variant") for r in rows) else [])]


def ev_pivot(rows: list[dict]) -> list[str]:
    """The explained variance of one branch's SAEs laid out as the paper's Table 1: a row per block and k, a column
    per t (rows: dicts with block, t, k, explained_variance)."""
    ts = sorted({r["t"] for r in rows}, reverse=True)
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    keys = sorted({(r["block"], r["k"]) for r in rows}, key=lambda key: (blocks.index(key[0]), key[1]))
    cell = {(r["block"], r["k"], r["t"]): r["explained_variance"] for r in rows}
    pivot = [{"block": block, "k": k, **{f"t={t}": cell.get((block, k, t)) for t in ts}} for block, k in keys]
    return markdown_table(pivot, ["block", "k", *(f"t={t}" for t in ts)])
