"""`atlas sql`, `atlas search` and `atlas upgrade`: Click commands over atlas.store, registered by cli/main.py.

They only parse options, call the Python API and print; every expected error becomes one line
(`Error: ...`, exit code 1).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import click

from atlas.cli.common import CONTEXT, atlas_option, one_line_errors

CELL_WIDTH = 60


def _open(atlas_dir: str | None):
    from atlas.store import open_atlas

    return open_atlas(atlas_dir)


def _cell(value: object) -> str:
    text = "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))
    if isinstance(value, float) and text.lstrip("-").isdigit():
        text += ".0"  # t = 1.0 reads as in concept ids
    return text if len(text) <= CELL_WIDTH else text[:CELL_WIDTH - 1] + "…"


def format_table(columns: list[str], rows: list[tuple]) -> str:
    """Rows as aligned text columns (long cells cut), numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
               for i in range(len(columns))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _emit(text: str, output: str | None) -> None:
    if output:
        with _writing(output), open(output, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    else:
        click.echo(text, nl=not text.endswith("\n"))


@contextmanager
def _writing(output: str) -> Iterator[None]:
    """An --output that cannot be written (no such directory, no permission) as one line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise click.ClickException(f"cannot write {output}: {err.strerror or err}; choose another --output") from None


def _csv(columns: list[str], rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


@click.command(context_settings=CONTEXT)
@click.argument("query")
@atlas_option
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Stop the query after this many seconds.")
@click.option("--max-rows", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Return at most this many rows (a note on stderr says when rows were cut).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="Output format; parquet needs --output.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the result to FILE instead of stdout.")
@one_line_errors
def sql(query: str, atlas_dir: str | None, timeout: float, max_rows: int, fmt: str, output: str | None) -> None:
    """Run one read-only SQL query over the atlas.

    Views: codes (fast filtered by block, t, latent), codes_by_image (fast filtered by image_id),
    images, prompts, saes, concepts, labels, objects, concept_labels, interventions, files, stages.
    Concept ids look like mid/1.0/412 (block/t/latent; branch cond, the primary SAE), mid/1.0/uncond/412
    or mid/1.0/cond@k20/412 (the SAE variant k20); saes, concepts, concept_labels and the codes views
    have a variant column ('' for the primary SAE), saes, concepts and concept_labels a k column.
    Writes, COPY, ATTACH and files outside the atlas are refused.

    \b
    Examples:
      atlas sql "SELECT block, t, count(*) AS codes FROM codes GROUP BY ALL ORDER BY block, t DESC"
      atlas sql "SELECT image_id, max(value) AS activation FROM codes
                 WHERE block = 'up' AND t = 0.5 AND latent = 412
                 GROUP BY image_id ORDER BY activation DESC LIMIT 10"
      atlas sql "SELECT concept_id, mean_iou, hit_rate, support FROM concept_labels
                 WHERE label = 'red circle' AND t = 1.0 AND block = 'mid' ORDER BY mean_iou DESC LIMIT 10"
      atlas sql "SELECT concept_id, frequency FROM concepts WHERE k = 20 ORDER BY frequency DESC LIMIT 5"
      atlas sql "SELECT * FROM images" --format parquet --output images.parquet
    """
    if fmt == "parquet" and not output:
        raise click.UsageError("--format parquet needs --output FILE")
    with _open(atlas_dir) as atlas:
        result = atlas.sql(query, timeout=timeout, max_rows=max_rows)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with _writing(output):
            pq.write_table(result.table, output)
    elif fmt == "json":
        _emit(json.dumps(result.to_dicts(), default=str, indent=1) + "\n", output)
    elif fmt == "csv":
        _emit(_csv(result.columns, result.rows), output)
    else:
        _emit(format_table(result.columns, result.rows) + "\n", output)
    if result.truncated:
        click.echo(f"(showing the first {max_rows} rows; raise --max-rows for more)", err=True)


@click.command(context_settings=CONTEXT)
@click.argument("label", required=False)
@click.option("--like", "like", metavar="CONCEPT_ID", help="Find concepts nearest to this one (decoder cosine).")
@click.option("--t", "t", type=float, help="Only this timestep (e.g. 1.0, 0.5, 0.0).")
@click.option("--block", help="Only this block (e.g. down, mid, up); for LABEL searches.")
@click.option("--branch", default="cond", show_default=True, help="CFG branch of the SAEs to search.")
@click.option("--variant", help="SAE variant to search, e.g. k20 (default: the primary SAE); for LABEL searches.")
@click.option("--sae-k", "sae_k", type=click.IntRange(min=1),
              help="Search the SAEs trained with this k, whatever their variant is called; for LABEL searches.")
@click.option("--k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="How many concepts.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@atlas_option
@one_line_errors
def search(label: str | None, like: str | None, t: float | None, block: str | None, branch: str,
           variant: str | None, sae_k: int | None, k: int, fmt: str, atlas_dir: str | None) -> None:
    """Find concepts by label, or by similarity to another concept.

    With LABEL, concepts are ranked by how well their activation maps predict the label's masks
    (mean IoU, then hit rate and support; the links come from `atlas link`). A word that is not a
    label uses the label closest in meaning ("kitten" -> "cat"); an atlas without labels ranks
    concepts by decoder similarity to the word's own activation as a prompt. With --like, by cosine
    similarity of SAE decoder directions, across all timesteps of the concept's block (or only the
    SAE at --t), among the SAEs of its own branch and variant. Concepts come from each (block, t,
    branch)'s primary SAE unless --variant or --sae-k picks another (`atlas train --k 10,20` trains
    the primary at k 10 and the variant k20).

    \b
    Examples:
      atlas search "red circle" --t 1.0 --block mid
      atlas search "red circle" --sae-k 20
      atlas search dog --k 20 --format json
      atlas search --like mid/1.0/412
      atlas search --like mid/1.0/cond@k20/412 --t 0.0
    """
    if bool(label) == bool(like):
        raise click.UsageError("give a LABEL or --like CONCEPT_ID (one of them)")
    with _open(atlas_dir) as atlas:
        if like:
            if block or variant is not None or sae_k:
                raise click.UsageError("--block, --variant and --sae-k do not apply to --like: the concept's own SAE "
                                       "names them")
            found = [asdict(n) for n in atlas.nearest(like, k=k, t=t)]
            columns = ["concept_id", "score", "block", "t", "branch", "latent"]
        else:
            from atlas.search.search import search_concepts

            result = search_concepts(atlas, label, t=t, block=block, branch=branch, k=k, variant=variant, sae_k=sae_k)
            found = [asdict(c) for c in result.concepts]
            columns = ["concept_id", "label", "mean_iou", "hit_rate", "precision", "recall", "support", "name"]
            if result.via == "meaning":
                click.echo(f"no concepts are labelled {label!r}; showing the closest label by meaning, "
                           f"{result.label!r} (similarity {result.similarity:.2f})", err=True)
            elif result.via == "prompt activation":
                click.echo(f"this atlas has no labels yet (run `atlas annotate` and `atlas link`); ranking concepts "
                           f"by decoder similarity to the activation of the prompt {label!r}", err=True)
                columns = ["concept_id", "score", "block", "t", "branch", "latent"]
    if fmt == "json":
        click.echo(json.dumps([{c: row[c] for c in columns} for row in found], indent=1))
    elif found:
        click.echo(format_table(columns, [tuple(row[c] for c in columns) for row in found]))
    else:
        click.echo("no concepts found", err=True)


@click.command(context_settings=CONTEXT)
@atlas_option
@one_line_errors
def upgrade(atlas_dir: str | None) -> None:
    """Upgrade an atlas made by an older version to this version's schema (a no-op when current).

    \b
    Example:
      atlas upgrade --atlas atlas
    """
    from atlas.store import default_path, upgrade_atlas

    revision = upgrade_atlas(atlas_dir or default_path())
    click.echo(f"atlas {atlas_dir or default_path()} is at schema {revision}", file=sys.stdout)
