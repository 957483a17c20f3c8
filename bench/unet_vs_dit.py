"""The shapes world on a U-Net and on a diffusion transformer, side by side (issue 24's comparison).

Both atlases are built with the same settings from the two shipped models and reported, e.g.

    atlas build --atlas /work/tmp/sci-demo --model shapes
    atlas build --atlas /work/tmp/dit-atlas --model shapes-dit
    .venv/bin/python bench/unet_vs_dit.py --unet /work/tmp/sci-demo --dit /work/tmp/dit-atlas

Prints explained variance, layout IoU against the caption-reading baseline and how early labels earn concepts,
then `RESULT unet_up_t1_weighted=.. dit_up_t1_weighted=.. unet_labels_linked_t1=.. ...`.
"""

from __future__ import annotations

import argparse

from atlas.report.compare import comparison, emergence, report_figures
from atlas.store import open_atlas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", required=True, help="atlas built from the U-Net (`--model shapes`)")
    parser.add_argument("--dit", required=True, help="atlas built from the DiT (`--model shapes-dit`)")
    args = parser.parse_args()
    figures, emerged = [], []
    for path in (args.unet, args.dit):
        with open_atlas(path) as atlas:
            figures.append(report_figures(atlas))
            emerged.append(emergence(atlas))
    lines, values = comparison(("unet", "dit"), (figures[0], figures[1]), (emerged[0], emerged[1]))
    print("\n".join(lines))
    print("RESULT " + " ".join(f"{key}={value:.4f}" for key, value in sorted(values.items())))


if __name__ == "__main__":
    main()
