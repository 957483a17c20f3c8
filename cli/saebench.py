"""`atlas bench-saes`: a Click command over atlas.pipeline.saebench, registered by cli/main.py."""

from __future__ import annotations

import click

from atlas.cli.common import CONTEXT, atlas_option, one_line_errors
from atlas.cli.options import build_config, config_options
from atlas.pipeline.config import SaeBenchConfig


@click.command("bench-saes", context_settings=CONTEXT)
@atlas_option
@config_options(SaeBenchConfig)
@one_line_errors
def bench_saes(atlas_dir: str | None, **options) -> None:
    """The diffusion SAEBench of every SAE of the atlas, printed and stored in ATLAS/report/saebench.json (`atlas
    report` shows it).

    On held-out activations: L0, explained variance, MSE, cosine, relative reconstruction bias, alive fraction,
    latents firing on > 1 % / > 10 % of positions, max decoder cosine. Spliced: held-out captions generated with the
    block's update replaced by the SAE's reconstruction on its window's steps, against the clean images and against
    the update zeroed (pixel change, LPIPS, LPIPS recovered, layout kept, the shapes eval figures). With --sweep-k,
    one SAE per k and type trains on one key's activations (into ATLAS/saes/sweep/) and is benched the same way.

    \b
    Examples:
      atlas bench-saes --atlas demo/atlas
      atlas bench-saes --atlas demo/atlas --sweep-k 4,8,16,32 --spliced-images 16
    """
    from atlas.pipeline.saebench import bench_saes as run
    from atlas.report.saebench import COLUMNS, FRONTIER, columns
    from atlas.store import default_path
    from atlas.tables import text_table

    config = build_config(SaeBenchConfig, options)
    result = run(atlas_dir or default_path(), config, say=click.echo)
    for rows, wanted in ((result["saes"], COLUMNS), (result["sweep"] if config.sweep_k else [], FRONTIER)):
        if rows:
            names = columns(rows, wanted)
            click.echo(text_table(names, [tuple(r.get(c) for c in names) for r in rows]))
