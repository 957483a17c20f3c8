"""The SAEBench section of the report: the table `atlas bench-saes` stored in <atlas>/report/saebench.json, per SAE
and per SAE of the L0 sweep (light: reads JSON, imports no model)."""

from __future__ import annotations

import json
from pathlib import Path

from atlas.report.tables import markdown_table

BENCH_FILE = "saebench.json"
"""Where `atlas bench-saes` stores its results, in the atlas's report directory."""
COLUMNS = ("name", "sae_type", "k", "l0", "explained_variance", "mse", "cosine", "relative_reconstruction_bias",
           "alive_fraction", "freq_over_1pct", "freq_over_10pct", "max_decoder_cosine", "pixel_change",
           "pixel_recovered", "lpips", "lpips_recovered", "layout_kept", "spliced_objects_present",
           "spliced_positions_respected")
"""The table's columns, those a row has (the spliced ones need `--spliced-images`, layout_kept and the shapes
figures a shapes model)."""
FRONTIER = ("sae_type", "k", "l0", "explained_variance", "pixel_recovered", "lpips", "lpips_recovered",
            "layout_kept", "spliced_objects_present")
"""The sweep's columns: L0 against explained variance and spliced quality."""


def load_saebench(root: str | Path) -> dict:
    """The stored results of `atlas bench-saes` on the atlas at `root`, {} when it has not run."""
    path = Path(root) / "report" / BENCH_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def columns(rows: list[dict], wanted: tuple[str, ...] = COLUMNS) -> list[str]:
    """The wanted columns that some row has a number (not nan) or a name in (LPIPS is nan without its weights)."""
    return [c for c in wanted if any(r.get(c) is not None and r[c] == r[c] for r in rows)]


def saebench_markdown(result: dict) -> list[str]:
    """The report's SAEBench section as markdown lines."""
    lines = ["## SAEBench (diffusion): reconstruction, sparsity and spliced generation", ""]
    if not result.get("saes"):
        return lines + ["Not measured on this atlas: run `atlas bench-saes`, then `atlas report`.", ""]
    lines += [f"Measured {result['date']} by `atlas bench-saes` on the held-out split's activations"
              + (f" and {result['spliced_images']} held-out captions generated with each SAE's reconstruction "
                 "spliced into its block on its window's steps" if result.get("spliced_images") else "")
              + ". relative_reconstruction_bias below 1: the SAE shrinks; lpips_recovered = 1 - LPIPS(spliced) / "
              "LPIPS(update zeroed), SAEBench's loss recovered (pixel_recovered the same with the mean pixel change, "
              "for machines without LPIPS's AlexNet weights); layout_kept: mean IoU of the clean image's objects "
              "with the spliced image's. batchtopk, jumprelu and matryoshka fire a varying number of latents per "
              "position; the atlas stores at most 4 k of them.", ""]
    if result.get("clean"):
        lines += ["Clean images: " + ", ".join(f"{k} {v:.3f}" for k, v in result["clean"].items()), ""]
    lines += markdown_table(result["saes"], columns(result["saes"])) + [""]
    if result.get("sweep"):
        lines += ["L0 sweep (`atlas bench-saes --sweep-k ...`): one SAE per type and k on the same activations, the "
                  "frontier of L0 against explained variance and spliced quality.", ""]
        lines += markdown_table(result["sweep"], columns(result["sweep"], FRONTIER)) + [""]
    return lines
