"""The `atlas` command: a thin Click layer over the `atlas` Python package."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from atlas.config import CaptureConfig, ExecutorConfig, GenerateConfig, ShapesTrainConfig
from cli.common import CONTEXT, PROMPT, FiniteFloat, device_option, model_option, one_line_errors
from cli.options import build_config, config_options


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="concept-atlas")
def main() -> None:
    """Concept Atlas: sparse-autoencoder concepts of text-to-image diffusion models.

    Start with `atlas demo`: it builds an atlas of the embedded shapes model and queries it.
    """


@main.command()
@click.argument("prompt", nargs=-1, type=PROMPT)
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False),
              help="File with one prompt per line.")
@model_option
@device_option
@click.option("--out", "out_dir", default="generated", show_default=True, help="Output directory.")
@config_options(GenerateConfig)
@one_line_errors
def generate(prompt: tuple[str, ...], prompts_file: str | None, model_name: str, device: str, out_dir: str,
             **options) -> None:
    """Generate images: DIR/0000.png ... (prompt order), DIR/images.jsonl and a labelled DIR/grid.png.

    Example: atlas generate "a red circle on the left" "a blue square" --n-per-prompt 4 --out out
    """
    from atlas.jobs.generate import generate_to_dir, read_prompts
    from atlas.models import load_model

    prompts = list(prompt) + (read_prompts(prompts_file) if prompts_file else [])
    if not prompts:
        raise click.UsageError("give prompts as arguments or with --prompts FILE")
    config = build_config(GenerateConfig, options)
    model = load_model(model_name, device=device)
    records = generate_to_dir(model, prompts, out_dir, config, progress=True)
    click.echo(f"wrote {len(records)} images, images.jsonl and grid.png to {out_dir}")


@main.command()
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False),
              help="File with one prompt per line.")
@click.option("--n-prompts", type=click.IntRange(min=0), default=0,
              help="Instead of a file: this many captions from the shapes world's generator (all splits).")
@model_option
@device_option
@click.option("--out", "out_dir", required=True, help="Activation directory (re-run the same command to resume).")
@config_options(CaptureConfig)
@config_options(ExecutorConfig)
@one_line_errors
def capture(prompts_file: str | None, n_prompts: int, model_name: str, device: str, out_dir: str,
            **options) -> None:
    """Generate images and record delta = output - input of the hooked blocks (dense fp16 shards).

    Every prompt gets a split (train / dictionary / test, from a stable hash of its text), recorded
    in DIR/prompts.jsonl. Interrupt at any time; the same command resumes without duplicating work.

    \b
    Examples:
      atlas capture --model shapes --n-prompts 1000 --blocks down,mid,up --t 1.0,0.5,0.0 --out acts
      atlas capture --model sd14 --prompts coco.txt --executor ray --ray-address auto --out s3://bucket/acts
    """
    from atlas.capture import capture as run_capture
    from atlas.jobs.executor import open_executor
    from atlas.jobs.generate import read_prompts
    from atlas.models import load_model
    from atlas.shapes.world import captions

    if bool(prompts_file) == bool(n_prompts):
        raise click.UsageError("give exactly one of --prompts FILE or --n-prompts N")
    prompts = read_prompts(prompts_file) if prompts_file else captions(n_prompts, split=None, seed=options["seed"])
    config = build_config(CaptureConfig, options)
    with open_executor(build_config(ExecutorConfig, options)) as executor:
        model = load_model(model_name, device=device)
        out = run_capture(model, prompts, out_dir, config, executor=executor)
    click.echo(f"captured {len(prompts)} images into {out}")


@main.group()
def shapes() -> None:
    """The shapes world: train, export and evaluate the embedded model; render ground truth."""


@shapes.command("train")
@config_options(ShapesTrainConfig)
@one_line_errors
def shapes_train(**options) -> None:
    """Train the shapes model from scratch, or resume the run in --run-dir (Ctrl-C saves a checkpoint)."""
    from atlas.shapes.train import train

    path = train(build_config(ShapesTrainConfig, options))
    click.echo(f"checkpoint: {path}")


@shapes.command("export")
@click.option("--run-dir", default="runs/shapes", show_default=True, help="Training run to export.")
@click.option("--out", "out_dir", default=None, help="Model directory [default: data/shapes].")
@click.option("--eval/--no-eval", "run_eval", default=True, show_default=True,
              help="Score the exported model on 256 held-out captions and put the table in the model card.")
@click.option("--command", "train_command", default="atlas shapes train --run-dir runs/shapes", show_default=True,
              help="The training command to record in the model card.")
@click.option("--guidance", default=None, type=FiniteFloat(min=0, min_open=True),
              help="Default CFG scale to ship with the weights (used by eval, generate and atlas builds when not "
                   "told) [default: that of the export the run started from (--init-from), else 3.0]; pick it with "
                   "`atlas shapes eval --guidance` on two --seed sets.")
@one_line_errors
def shapes_export(run_dir: str, out_dir: str | None, run_eval: bool, train_command: str,
                  guidance: float | None) -> None:
    """Write a run's EMA weights (diffusers layout, fp16 safetensors) and its model card with the quality table."""
    ckpt = Path(run_dir) / "checkpoint.pt"
    if not ckpt.exists():  # before the imports: they take seconds
        raise click.ClickException(f"no checkpoint in {run_dir}: run `atlas shapes train --run-dir {run_dir}`")
    import json

    from atlas.models import load_model
    from atlas.models.loader import shapes_model_dir
    from atlas.shapes.card import write_model_card
    from atlas.shapes.evaluate import evaluate, write_eval
    from atlas.shapes.train import export

    out = Path(out_dir) if out_dir else shapes_model_dir()
    facts = export(ckpt, out, guidance)
    click.echo(f"exported step {facts['steps']} ({facts['hours']:.2f} h of training) to {out}")
    result = None
    if run_eval:
        result, images, scenes = evaluate(load_model(str(out)), 256, progress=True)
        write_eval(result, images, scenes, out)
        click.echo(result.table())
    train_config = json.loads((Path(run_dir) / "train_config.json").read_text())
    card = write_model_card(out, facts, train_config, train_command, result, f"atlas shapes eval --model {out}")
    click.echo(f"model card: {card}")


@shapes.command("eval")
@model_option
@device_option
@click.option("--n", default=256, show_default=True, type=click.IntRange(min=1),
              help="Held-out captions to generate and score.")
@click.option("--steps", default=0, type=click.IntRange(min=0), help="DDIM steps (0 = model default).")
@click.option("--guidance", default=-1.0, help="CFG scale (negative = model default).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Which held-out captions and noise seeds: 0 is the model card's set; others confirm a result "
                   "on images nobody chose a checkpoint by.")
@click.option("--out", "out_dir", default=None, help="Also write eval.json and a grid of the images here.")
@click.option("--strict", is_flag=True, help="Exit with code 1 when any figure is under its bar.")
@one_line_errors
def shapes_eval(model_name: str, device: str, n: int, steps: int, guidance: float, seed: int, out_dir: str | None,
                strict: bool) -> None:
    """Score a model on held-out captions with the classical annotator and print the quality table."""
    from atlas.models import load_model
    from atlas.shapes.evaluate import evaluate, write_eval

    model = load_model(model_name, device=device)
    result, images, scenes = evaluate(model, n, steps or None, None if guidance < 0 else guidance, seed=seed,
                                      progress=True)
    click.echo(result.table())
    if out_dir:
        write_eval(result, images, scenes, out_dir)
        click.echo(f"wrote {out_dir}/eval.json and {out_dir}/eval_grid.png")
    if strict and not result.passes():
        sys.exit(1)


from cli.edit import edit, eval_edits  # noqa: E402
from cli.pipeline import annotate, build, check, demo, encode, link, predict_layout, report, train  # noqa: E402
from cli.serve import serve  # noqa: E402
from cli.store import search, sql, upgrade  # noqa: E402

for command in (demo, build, train, encode, annotate, link, predict_layout, report, sql, search, upgrade, edit,
                eval_edits, serve, check):
    main.add_command(command)

if __name__ == "__main__":
    main()
