"""`atlas export`: a Click command over atlas.pipeline.export, registered by cli/main.py."""

from __future__ import annotations

import click

from atlas.cli.common import CONTEXT, OUTPUT_DIR, atlas_option, one_line_errors
from atlas.cli.options import build_config, config_options
from atlas.pipeline.export_config import ExportConfig


@click.command(context_settings=CONTEXT)
@atlas_option
@click.option("--out", "out_dir", required=True, type=OUTPUT_DIR, help="Directory to write saelens/ and neuronpedia/ "
              "into.")
@config_options(ExportConfig)
@one_line_errors
def export(atlas_dir: str | None, out_dir: str, **options) -> None:
    """Write the atlas's SAEs in SAELens' format (OUT/saelens/<block>/t<t>/<branch>/) and its concepts with their
    top images as Neuronpedia-style JSONL (OUT/neuronpedia/features.jsonl).

    sparsify needs no export: `SparseCoder.load_from_disk` reads the atlas's SAE directories as they are.

    \b
    Example:
      atlas export --out export
    """
    from atlas.pipeline.export import export_atlas
    from atlas.store import open_atlas

    with open_atlas(atlas_dir) as atlas:
        counts = export_atlas(atlas, out_dir, build_config(ExportConfig, options))
    click.echo(f"wrote {counts['saes']} SAEs (SAELens) and {counts['features']} concepts (Neuronpedia JSONL) "
               f"to {out_dir}")
