"""The one printer of plain-text tables (CLI answers, the shapes model's quality table); Markdown tables for reports
are atlas.report.tables.markdown_table."""

from __future__ import annotations

CELL_WIDTH = 60


def _cell(value: object) -> str:
    text = "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))
    if isinstance(value, float) and text.lstrip("-").isdigit():
        text += ".0"  # t = 1.0 reads as in concept ids
    return text if len(text) <= CELL_WIDTH else text[:CELL_WIDTH - 1] + "…"


def text_table(columns: list[str], rows: list[tuple]) -> str:
    """Rows as aligned text columns (long cells cut), numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
               for i in range(len(columns))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])
