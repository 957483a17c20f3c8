"""The `atlas` command: a thin Click layer over the `atlas` Python package."""

from __future__ import annotations

from dataclasses import replace

import click
from click.core import ParameterSource

from atlas.capture.config import CaptureConfig, cond_only
from atlas.cli.common import CONTEXT, OUTPUT_DIR, PROMPT, device_option, model_option, one_line_errors
from atlas.cli.options import build_config, config_options
from atlas.pipeline.config import ExecutorConfig, GenerateConfig


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="concept-atlas")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars (TQDM_DISABLE=1 does the same); results and "
              "errors still print. Without a terminal, bars print a line per quarter done instead of redrawing.")
def main(quiet: bool) -> None:
    """Concept Atlas: sparse-autoencoder concepts of text-to-image diffusion models.

    Start with `atlas demo`: it builds an atlas of the embedded shapes model and queries it.
    """
    from atlas.progress import show_messages

    show_messages(quiet)


@main.command()
@click.argument("prompt", nargs=-1, type=PROMPT)
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False),
              help="File with one prompt per line.")
@model_option
@device_option
@click.option("--out", "out_dir", default="generated", show_default=True, type=OUTPUT_DIR, help="Output directory.")
@config_options(GenerateConfig)
@one_line_errors
def generate(prompt: tuple[str, ...], prompts_file: str | None, model_name: str, device: str, out_dir: str,
             **options) -> None:
    """Generate images: DIR/0000.png ... (prompt order), DIR/images.jsonl and a labelled DIR/grid.png.

    Example: atlas generate "a red circle on the left" "a blue square" --n-per-prompt 4 --out out
    """
    from atlas.models import load_model
    from atlas.pipeline.generate import generate_to_dir, read_prompts

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
@click.option("--out", "out_dir", required=True, type=OUTPUT_DIR,
              help="Activation directory (re-run the same command to resume).")
@config_options(CaptureConfig)
@config_options(ExecutorConfig)
@one_line_errors
def capture(prompts_file: str | None, n_prompts: int, model_name: str, device: str, out_dir: str,
            **options) -> None:
    """Generate images and record delta = output - input of the hooked blocks (dense shards, fp16 by default).

    Every prompt gets a split (train / dictionary / test, from a stable hash of its text), recorded
    in DIR/prompts.jsonl. Interrupt at any time; the same command resumes without duplicating work.
    The disk it needs is printed first, key by key; a capture the disk cannot hold is refused.

    \b
    Examples:
      atlas capture --model shapes --n-prompts 1000 --blocks down,mid,up --t 1.0,0.5,0.0 --out acts
      atlas capture --model sd14 --prompts coco.txt --keys mid/1.0,up/0.0/uncond --dtype bf16 --out acts
      atlas capture --model sd14 --prompts coco.txt --executor ray --ray-address auto --out s3://bucket/acts
    """
    from atlas.capture import capture as run_capture
    from atlas.models import load_model
    from atlas.pipeline.executor import open_executor
    from atlas.pipeline.generate import read_prompts
    from atlas.pipeline.presets import shapes_captions

    if bool(prompts_file) == bool(n_prompts):
        raise click.UsageError("give exactly one of --prompts FILE or --n-prompts N")
    prompts = read_prompts(prompts_file) if prompts_file else \
        shapes_captions(n_prompts, split=None, seed=options["seed"])
    config = build_config(CaptureConfig, options)
    with open_executor(build_config(ExecutorConfig, options)) as executor:
        model = load_model(model_name, device=device)
        named = {name for name in ("branches", "keys")
                 if click.get_current_context().get_parameter_source(name) != ParameterSource.DEFAULT}
        if not model.spec.cfg and not named:
            config = replace(config, branches=cond_only(config.branches, model_name, click.echo))
        out = run_capture(model, prompts, out_dir, config, executor=executor, say=click.echo)
    click.echo(f"captured {len(prompts)} images into {out}")


from atlas.cli.edit import edit, eval_edits  # noqa: E402
from atlas.cli.evolve import evolve  # noqa: E402
from atlas.cli.interop import export  # noqa: E402
from atlas.cli.pipeline import (  # noqa: E402
    annotate,
    build,
    check,
    demo,
    encode,
    link,
    predict_layout,
    report,
    train,
    train_online,
)
from atlas.cli.saebench import bench_saes  # noqa: E402
from atlas.cli.serve import serve  # noqa: E402
from atlas.cli.shapes import shapes  # noqa: E402
from atlas.cli.store import search, sql, upgrade  # noqa: E402

for command in (demo, build, train, encode, annotate, link, predict_layout, report, sql, search, upgrade, edit,
                eval_edits, serve, check, shapes, train_online, export, bench_saes, evolve):
    main.add_command(command)

if __name__ == "__main__":
    main()
