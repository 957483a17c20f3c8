"""`atlas edit` and `atlas eval-edits`: Click commands over atlas.edit, registered by cli/main.py."""

from __future__ import annotations

from pathlib import Path

import click

from atlas.cli.common import CONTEXT, OUTPUT_DIR, OUTPUT_FILE, PROMPT, FiniteFloat, atlas_option, one_line_errors
from atlas.cli.options import build_config, config_options, field_docs
from atlas.edit.config import EditConfig, EvalEditsConfig


@click.command(context_settings=CONTEXT)
@click.argument("prompt", type=PROMPT)
@click.option("--concept", "concepts", multiple=True, required=True,
              help="A label ('red circle'), a concept id (mid/1.0/412) or a SQL query returning concept_id. "
                   "Repeat to compose several edits.")
@click.option("--region", "regions", multiple=True,
              help="top-left, top-right, bottom-left, bottom-right (or left, right, top, bottom), a box "
                   "x0,y0,x1,y1 (fractions, or pixels when a value exceeds 1), a mask .png, or global. Omit "
                   "for a global edit; give one for all concepts or one per --concept.")
@click.option("--strength", type=FiniteFloat(min=0), default=None, help=field_docs(EditConfig)["strength"])
@click.option("--out", default="edit.png", show_default=True, type=OUTPUT_FILE,
              help="PNG: unedited | edited | each concept's activation map with its region.")
@atlas_option
@config_options(EditConfig, exclude=("strength",))
@one_line_errors
def edit(prompt: str, concepts: tuple[str, ...], regions: tuple[str, ...], strength: float | None, out: str,
         atlas_dir: str | None, **options) -> None:
    """Generate PROMPT unedited and edited with atlas concepts (same seed), side by side.

    A spatial edit (--region) of an object the prompt names moves it: the concepts are set to
    beta * ||z|| inside the region and to 0 outside; a global edit adds them everywhere. The change goes
    through the concept vectors, so the SAE's reconstruction error stays in the image. An object the
    prompt lacks is added from a donor text into the region, the rest of the image kept (--method).
    The edit is logged in the atlas's interventions table.

    \b
    Examples:
      atlas edit "a red square" --concept "red square" --region top-left
      atlas edit "a blue square" --concept "yellow circle" --region top-left
      atlas edit "a blue circle" --concept "striped background"
      atlas edit "a red circle" --concept up/0.5/2 --region 0,0,0.5,1 --concept "yellow circle" --region right
    """
    from atlas.pipeline.edits import edit as run_edit
    from atlas.store import default_path

    config = build_config(EditConfig, {**options, "strength": strength})
    result = run_edit(atlas_dir or default_path(), prompt, list(concepts), list(regions) or [""], config, out=out)
    for line in result.said:
        click.echo(line)
    logged = f"; logged as interventions {', '.join(map(str, result.intervention_ids))}" \
        if result.intervention_ids else ""
    click.echo(f"wrote {result.path}{logged}")


@click.command("eval-edits", context_settings=CONTEXT)
@atlas_option
@click.option("--out", "out_dir", default=None, type=OUTPUT_DIR,
              help="Directory for eval-<kind>.md/.json and example PNGs per window  [default: <atlas>/edits]")
@config_options(EvalEditsConfig)
@one_line_errors
def eval_edits(atlas_dir: str | None, out_dir: str | None, **options) -> None:
    """Measure edit success per window and strength on an atlas (the paper's Tables 4 and 5).

    A shapes atlas is judged by the shapes world's annotator, any other by its own annotator (spatial)
    and CLIP (style); every edit also records where the pixels changed and whether the other objects
    stayed. Prints the table, writes it with every verdict and example PNGs to --out, and stores the
    curves in the atlas (edits/curves.json), where `atlas edit --when auto` reads them.

    \b
    Examples:
      atlas eval-edits --kind spatial --block up
      atlas eval-edits --kind style --n 16 --strengths 2,8,32
      atlas eval-edits --kind add --prompt "a blue square" --add "yellow circle" --n 10
    """
    from atlas.pipeline.edits import eval_edits as run_eval
    from atlas.store import default_path, open_atlas

    config = build_config(EvalEditsConfig, options)
    with open_atlas(atlas_dir or default_path()) as store:
        out = Path(out_dir) if out_dir else store.root / "edits"
        result = run_eval(store, config, out, say=click.echo)
    click.echo(result.table())
    click.echo(f"wrote {out}/{result.stem}.md, .json and PNGs; curves in {store.root}/edits/curves.json")
