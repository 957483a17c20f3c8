"""The shapes world on a U-Net and on a diffusion transformer, side by side (issue 24's comparison).

Both atlases are built with the same settings from the two shipped models and reported, e.g.

    atlas build --atlas /work/tmp/sci-demo --model shapes
    atlas build --atlas /work/tmp/dit-atlas --model shapes-dit
    .venv/bin/python bench/unet_vs_dit.py --unet /work/tmp/sci-demo --dit /work/tmp/dit-atlas

and, for the edits, `atlas eval-edits --kind spatial` and `--kind style` on each (same --n, --strengths, seeds).
Prints explained variance, layout IoU against the caption-reading baseline, how early labels earn concepts and the
edits each needed (strength, held-out success, change inside / outside the region), then
`RESULT unet_up_t1_weighted=.. dit_up_t1_weighted=.. unet_spatial_early_success=.. ...`.
"""

from __future__ import annotations

import argparse

from atlas.report.compare import side_by_side
from atlas.store import open_atlas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", required=True, help="atlas built from the U-Net (`--model shapes`)")
    parser.add_argument("--dit", required=True, help="atlas built from the DiT (`--model shapes-dit`)")
    args = parser.parse_args()
    with open_atlas(args.unet) as unet, open_atlas(args.dit) as dit:
        compared = side_by_side((unet, dit), names=("unet", "dit"))
    print("\n".join(compared["lines"]))
    print("RESULT " + " ".join(f"{key}={value:.4f}" for key, value in sorted(compared["values"].items())))


if __name__ == "__main__":
    main()
