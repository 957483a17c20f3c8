"""`atlas sql`, `atlas search` and `atlas upgrade`: Click commands over atlas.store, registered by cli/main.py.

They only parse options, call the Python API and print; every expected error becomes one line
(`Error: ...`, exit code 1).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from atlas.cli.common import CONTEXT, FiniteFloat, atlas_option, one_line_errors
from atlas.store.limits import MAX_RESULT_BYTES, MAX_ROWS, MAX_TIMEOUT, SQL_MEMORY_LIMIT, TIMEOUT
from atlas.tables import text_table as format_table

if TYPE_CHECKING:
    from atlas.store import SqlStream


def _open(atlas_dir: str | None):
    """The atlas for reading, with the memory limit of readers that run user SQL."""
    from atlas.store import open_atlas

    return open_atlas(atlas_dir, memory_limit=SQL_MEMORY_LIMIT)




@contextmanager
def _writing(output: str) -> Iterator[None]:
    """An --output that cannot be written (no such directory, no permission) as one line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise click.ClickException(f"cannot write {output}: {err.strerror or err}; choose another --output") from None


FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
"""The --format an --output file's extension implies when --format is not given."""


@contextmanager
def _whole_file(output: str) -> Iterator[Path]:
    """A temporary file beside `output`, renamed to it when the block ends normally and removed otherwise: an
    export is written whole or not at all."""
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with _writing(output):
            yield partial
            partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _export(stream: SqlStream, fmt: str, path: Path) -> None:
    """Every row of `stream` into `path` as it comes (memory stays one batch)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(path, stream.schema) as writer:
            for batch in stream:
                writer.write_batch(batch)
        return
    with open(path, "w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            handle.writelines(stream.csv())
        elif fmt == "json":
            handle.write("[")
            first = True
            for batch in stream:
                for row in batch.to_pylist():
                    handle.write(("\n" if first else ",\n") + json.dumps(row, default=str))
                    first = False
            handle.write("\n]\n")
        else:
            rows = [row for batch in stream for row in zip(*(c.to_pylist() for c in batch.columns))]
            handle.write(format_table(stream.columns, rows) + "\n")


@click.command(context_settings=CONTEXT)
@click.argument("query")
@atlas_option
@click.option("--timeout", default=TIMEOUT, show_default=True,
              type=FiniteFloat(min=0, min_open=True, max=MAX_TIMEOUT),
              help="Stop the query (and the export) after this many seconds.")
@click.option("--max-rows", type=click.IntRange(min=1),
              help=f"Return at most this many rows [default: {MAX_ROWS} on screen, every row with --output].")
@click.option("--max-bytes", default=MAX_RESULT_BYTES, show_default=True, type=click.IntRange(min=1),
              help="Stop with an error once the result passes this many bytes (as Arrow data).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]),
              help="Output format [default: from the --output extension (.csv, .json, .parquet), else table]; "
                   "parquet needs --output.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write every row to FILE (streamed; the file appears only when the whole result is written).")
@one_line_errors
def sql(query: str, atlas_dir: str | None, timeout: float, max_rows: int | None, max_bytes: int, fmt: str | None,
        output: str | None) -> None:
    """Run one read-only SQL query over the atlas.

    Views: codes (fast filtered by block, t, latent), codes_by_image (fast filtered by image_id),
    images, prompts, saes, concepts, labels, objects, concept_labels, interventions, files, stages,
    trajectories (each concept's life over t) and lineage (links across t; both from `atlas evolve`).
    Concept ids look like mid/1.0/412 (block/t/latent; branch cond, the primary SAE), mid/1.0/uncond/412
    or mid/1.0/cond@k20/412 (the SAE variant k20); saes, concepts, concept_labels and the codes views
    have a variant column ('' for the primary SAE), saes, concepts and concept_labels a k column.
    Writes, COPY, ATTACH and files outside the atlas are refused. A result is bounded by --timeout,
    --max-bytes and the memory user SQL may take; past one of them the command fails (exit code 1)
    and writes no --output file.

    \b
    Examples:
      atlas sql "SELECT block, t, count(*) AS codes FROM codes GROUP BY ALL ORDER BY block, t DESC"
      atlas sql "SELECT image_id, max(value) AS activation FROM codes
                 WHERE block = 'up' AND t = 0.5 AND latent = 412
                 GROUP BY image_id ORDER BY activation DESC LIMIT 10"
      atlas sql "SELECT concept_id, mean_iou, hit_rate, support FROM concept_labels
                 WHERE label = 'red circle' AND t = 1.0 AND block = 'mid' ORDER BY mean_iou DESC LIMIT 10"
      atlas sql "SELECT concept_id, frequency FROM concepts WHERE k = 20 ORDER BY frequency DESC LIMIT 5"
      atlas sql "SELECT * FROM codes WHERE block = 'mid'" -o codes.csv --timeout 60
      atlas sql "SELECT * FROM images" --format parquet --output images.parquet
    """
    fmt = fmt or (FORMATS.get(Path(output).suffix.lower(), "table") if output else "table")
    if fmt == "parquet" and not output:
        raise click.UsageError("--format parquet needs --output FILE")
    cap = max_rows if max_rows or output else MAX_ROWS
    with _open(atlas_dir) as atlas:
        if output:
            with atlas.sql_stream(query, timeout=timeout, max_rows=cap, max_bytes=max_bytes) as stream, \
                    _whole_file(output) as partial:
                _export(stream, fmt, partial)
            truncated = stream.truncated
        elif fmt == "csv":
            with atlas.sql_stream(query, timeout=timeout, max_rows=cap, max_bytes=max_bytes) as stream:
                click.echo("".join(stream.csv()), nl=False)
            truncated = stream.truncated
        else:
            result = atlas.sql(query, timeout=timeout, max_rows=cap, max_bytes=max_bytes)
            truncated = result.truncated
            click.echo(json.dumps(result.to_dicts(), default=str, indent=1) if fmt == "json"
                       else format_table(result.columns, result.rows))
    if truncated:
        click.echo(f"(showing the first {cap} rows; raise --max-rows for more)", err=True)


@click.command(context_settings=CONTEXT)
@click.argument("label", required=False)
@click.option("--like", "like", metavar="CONCEPT_ID", help="Find concepts nearest to this one (decoder cosine).")
@click.option("--follow", type=click.Choice(["cosine", "lineage"]), default="cosine", show_default=True,
              help="With --like: nearest by decoder cosine, or the concepts it descends from or into over denoising "
                   "(lineage links of `atlas evolve`: decoder cosine and coactivation), scored by the weakest link.")
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
def search(label: str | None, like: str | None, follow: str, t: float | None, block: str | None, branch: str,
           variant: str | None, sae_k: int | None, k: int, fmt: str, atlas_dir: str | None) -> None:
    """Find concepts by label, or by similarity to another concept.

    With LABEL, concepts are ranked by how well their activation maps predict the label's masks
    (mean IoU, then hit rate and support; the links come from `atlas link`). A concept's name finds
    that concept, a concept id shows it. Other text lists the labels and concept names closest in
    meaning with their similarity and uses the closest ("kitten" -> "cat"), or says nothing is close;
    an atlas without labels ranks concepts by decoder similarity to the text's own activation as a
    prompt. With --like, by cosine
    similarity of SAE decoder directions, across all timesteps of the concept's block (or only the
    SAE at --t), among the SAEs of its own branch and variant; with --follow lineage, along the
    lineage links instead (its ancestors and descendants at every other t). Concepts come from each (block, t,
    branch)'s primary SAE unless --variant or --sae-k picks another (`atlas train --k 10,20` trains
    the primary at k 10 and the variant k20).

    \b
    Examples:
      atlas search "red circle" --t 1.0 --block mid
      atlas search "red circle" --sae-k 20
      atlas search "round red thing" --k 20 --format json   # the closest labels and names by meaning
      atlas search mid/1.0/412                               # a concept id: that concept
      atlas search --like mid/1.0/412
      atlas search --like mid/1.0/cond@k20/412 --t 0.0
      atlas search --like up/1.0/12 --follow lineage --t 0.0
    """
    if bool(label) == bool(like):
        raise click.UsageError("give a LABEL or --like CONCEPT_ID (one of them)")
    if follow != "cosine" and not like:
        raise click.UsageError("--follow applies to --like CONCEPT_ID searches")
    from atlas.dictionary.names import display_names
    from atlas.search.search import concept_id_of

    with _open(atlas_dir) as atlas:
        if label and concept_id_of(label):  # a concept id goes to its concept
            info = atlas.concept(label)
            found = [{**asdict(info), "dictionary_name": display_names(atlas, [info.concept_id])[info.concept_id]}]
            columns = ["concept_id", "name", "dictionary_name", "best_label", "frequency", "mean_activation"]
        elif like:
            if block or variant is not None or sae_k:
                raise click.UsageError("--block, --variant and --sae-k do not apply to --like: the concept's own SAE "
                                       "names them")
            follow_links = atlas.lineage if follow == "lineage" else atlas.nearest
            found = [asdict(n) for n in follow_links(like, k=k, t=t)]
            columns = ["concept_id", "score", "block", "t", "branch", "latent"]
        else:
            from atlas.search.search import search_concepts

            result = search_concepts(atlas, label, t=t, block=block, branch=branch, k=k, variant=variant, sae_k=sae_k)
            found = [asdict(c) for c in result.concepts]
            columns = ["concept_id", "label", "mean_iou", "hit_rate", "precision", "recall", "support", "name",
                       "dictionary_name"]
            if result.via == "meaning":
                closest = ", ".join(f"{m.kind} {m.text!r} {m.similarity:.2f}" for m in result.matches[:5])
                click.echo(f"no concepts are labelled {label!r}; closest in meaning: {closest}; showing "
                           f"{result.label!r}", err=True)
            elif result.via == "name":
                click.echo(f"concepts named {label!r}", err=True)
            elif result.via == "prompt activation":
                click.echo(f"this atlas has no labels yet (run `atlas annotate` and `atlas link`); ranking concepts "
                           f"by decoder similarity to the activation of the prompt {label!r}", err=True)
                columns = ["concept_id", "score", "block", "t", "branch", "latent"]
            if "dictionary_name" in columns:
                named = display_names(atlas, [row["concept_id"] for row in found])
                found = [{**row, "dictionary_name": named[row["concept_id"]]} for row in found]
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
