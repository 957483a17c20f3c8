"""`atlas shapes ...`: the shapes world's own commands (train, export and score the embedded model).

The one surface module that imports the shapes world; every other room reaches it through
atlas.pipeline.presets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from atlas.cli.common import OUTPUT_DIR, FiniteFloat, device_option, model_option, one_line_errors
from atlas.cli.options import build_config, config_options
from atlas.shapes.config import ShapesTrainConfig


@click.group()
def shapes() -> None:
    """The shapes world: train, export and evaluate the embedded model; render ground truth."""


@shapes.command("train")
@config_options(ShapesTrainConfig)
@one_line_errors
def shapes_train(**options) -> None:
    """Train the shapes model (UNet, or with --backbone dit a diffusion transformer) from scratch, or resume the run
    in --run-dir (Ctrl-C saves a checkpoint)."""
    from atlas.shapes.train import train

    path = train(build_config(ShapesTrainConfig, options))
    click.echo(f"checkpoint: {path}")


@shapes.command("export")
@click.option("--run-dir", default="runs/shapes", show_default=True, help="Training run to export.")
@click.option("--out", "out_dir", default=None, type=OUTPUT_DIR,
              help="Model directory [default: data/shapes for a UNet run; RUN_DIR/model for a DiT run, which "
                   "never replaces the shipped UNet].")
@click.option("--eval/--no-eval", "run_eval", default=True, show_default=True,
              help="Score the exported model on 256 held-out captions and put the table in the model card.")
@click.option("--command", "train_command", default="atlas shapes train --run-dir runs/shapes", show_default=True,
              help="The training command to record in the model card.")
@click.option("--guidance", default=None, type=FiniteFloat(min=0, min_open=True),
              help="Default CFG scale to ship with the weights (used by eval, generate and atlas builds when not "
                   "told) [default: that of the export the run started from (--init-from), else 3.0]; pick it with "
                   "`atlas shapes eval --guidance` on two --seed sets.")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Default DDIM steps to ship with the weights (used by eval, generate and atlas builds when not "
                   "told) [default: that of the export the run started from (--init-from), else 20]; pick them "
                   "with `atlas shapes eval --steps` on two --seed sets.")
@one_line_errors
def shapes_export(run_dir: str, out_dir: str | None, run_eval: bool, train_command: str,
                  guidance: float | None, steps: int | None) -> None:
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

    train_config = json.loads((Path(run_dir) / "train_config.json").read_text())
    default_out = Path(run_dir) / "model" if train_config.get("backbone") == "dit" else shapes_model_dir()
    out = Path(out_dir) if out_dir else default_out
    facts = export(ckpt, out, guidance, steps)
    click.echo(f"exported step {facts['steps']} ({facts['hours']:.2f} h of training) to {out}")
    result = None
    if run_eval:
        result, images, scenes = evaluate(load_model(str(out)), 256, progress=True)
        write_eval(result, images, scenes, out)
        click.echo(result.table())
    card = write_model_card(out, facts, train_config, train_command, result, f"atlas shapes eval --model {out}")
    click.echo(f"model card: {card}")


@shapes.command("eval")
@model_option
@device_option
@click.option("--n", default=256, show_default=True, type=click.IntRange(min=1),
              help="Held-out captions to generate and score.")
@click.option("--steps", default=0, type=click.IntRange(min=0), help="DDIM steps (0 = model default).")
@click.option("--guidance", default=None, type=FiniteFloat(min=0), help="CFG scale [default: the model's own].")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Which held-out captions and noise seeds: 0 is the model card's set; others confirm a result "
                   "on images nobody chose a checkpoint by.")
@click.option("--out", "out_dir", default=None, type=OUTPUT_DIR,
              help="Also write eval.json and a grid of the images here.")
@click.option("--strict", is_flag=True, help="Exit with code 1 when any figure is under its bar.")
@one_line_errors
def shapes_eval(model_name: str, device: str, n: int, steps: int, guidance: float | None, seed: int,
                out_dir: str | None, strict: bool) -> None:
    """Score a model on held-out captions with the classical annotator and print the quality table."""
    from atlas.models import load_model
    from atlas.shapes.evaluate import evaluate, write_eval

    model = load_model(model_name, device=device)
    result, images, scenes = evaluate(model, n, steps or None, guidance, seed=seed,
                                      progress=True)
    click.echo(result.table())
    if out_dir:
        write_eval(result, images, scenes, out_dir)
        click.echo(f"wrote {out_dir}/eval.json and {out_dir}/eval_grid.png")
    if strict and not result.passes():
        sys.exit(1)
