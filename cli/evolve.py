"""`atlas evolve`: concept trajectories over t and lineage across t, added to an existing atlas."""

from __future__ import annotations

import click

from atlas.cli.common import CONTEXT, atlas_option, one_line_errors
from atlas.cli.options import build_config, config_options
from atlas.evolution.config import EvolveConfig


@click.command(context_settings=CONTEXT)
@config_options(EvolveConfig)
@atlas_option
@one_line_errors
def evolve(atlas_dir: str | None, **options) -> None:
    """Measure how concepts live and descend across denoising steps (the `trajectories` and `lineage` views).

    Every SAE encodes the same images' activations at every captured step of its block (not only its own), which
    gives each concept's mass, share of images and mean activation per step, and its first, peak and fade t.
    Concepts of neighbouring timesteps are linked by decoder cosine and by coactivation (the cosine of their
    activation maps on the same images and positions); each concept keeps its --links best children and parents.
    `atlas build` runs it as a stage; run it again to replace the tables.

    \b
    Examples:
      atlas evolve --atlas atlas
      atlas sql "SELECT concept_id, at_t, mass, first_t, peak_t, fade_t FROM trajectories
                 WHERE concept_id = 'up/1.0/12' ORDER BY at_t DESC"
      atlas search --like up/1.0/12 --follow lineage
    """
    from atlas.pipeline.evolution import evolve_atlas
    from atlas.store import open_writer

    config = build_config(EvolveConfig, options)
    with open_writer(atlas_dir) as writer:
        found = evolve_atlas(writer, config)
    click.echo(f"stored {found.trajectories:,} trajectory rows and {found.lineage:,} lineage links, measured on "
               f"{found.images} images")
