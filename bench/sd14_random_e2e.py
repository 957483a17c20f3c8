"""`atlas build --preset sd14` end to end at SD v1.4's real sizes, with random weights (no machine of ours has the
released ones).

Writes (or reuses) an SD v1.4-architecture model directory with random weights (atlas.models.random: UNet
320/640/1280/1280, 768-wide cross-attention, 64 x 64 latents, 512 px images, CLIP-L text encoder) and tiny random
Grounding DINO and SAM checkpoints (thresholds 0: random detectors score low), then runs the real `atlas build
--preset sd14` in a child process on a handful of prompts with few DDIM steps (both CFG branches, blocks
down/mid/up at t 1.0/0.5/0.0: grids 16x16 / 8x8 / 16x16 of 1280), then `atlas report` and `atlas eval-edits`.
Prints peak RSS of the build, seconds per image of each stage (the build's own stage timings) and bytes per
image stored. No peer runs the paper's pipeline, so there is no ratio; the figures feed docs/scaling.md.

    .venv/bin/python bench/sd14_random_e2e.py --prompts 4 --steps 3
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["a dog on a red car", "a cat and a car", "a red dog", "the car on the cat", "a dog and a cat",
           "a red car", "the cat on the dog", "a car and a red cat"]
WORDS = sorted({w for p in PROMPTS for w in p.split()})


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(cmd: list[str], must: bool = True) -> tuple[str, float, float]:
    """Run `cmd` in a child; returns its stdout (its last stderr line when it failed and need not succeed), wall
    seconds and the peak RSS (MB) of children so far."""
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode and must:
        sys.exit(f"{' '.join(cmd[3:5])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    out = result.stdout if not result.returncode else (result.stderr.strip().splitlines() or [""])[-1]
    return out, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help=f"images to build from (at most {len(PROMPTS)})")
    parser.add_argument("--steps", type=int, default=3, help="DDIM steps (3: t = 1.0, 0.5, 0.0 are distinct steps)")
    parser.add_argument("--model", default="", help="an existing random SD v1.4 directory (default: write one)")
    parser.add_argument("--work", default="", help="working directory (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from atlas.annotate.random import write_random_grounding_dino, write_random_sam
    from atlas.models.random import write_random_sd

    work = Path(args.work or tempfile.mkdtemp(prefix="sd14-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else work / "sd14-random"
    if not (model / "unet").is_dir():
        print(f"writing a random SD v1.4 to {model} ...", flush=True)
        write_random_sd(model, "sd14")
    gdino = write_random_grounding_dino(work / "grounding-dino", WORDS)
    sam = write_random_sam(work / "sam")
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[: args.prompts]) + "\n")
    atlas = work / "atlas"
    if atlas.exists():
        shutil.rmtree(atlas)  # a resumed build would skip the stages this measures
    atlas_cli = [sys.executable, "-m", "atlas.cli.main"]
    build, build_s, rss = run([*atlas_cli, "build", "--preset", "sd14", "--model", str(model), "--prompts",
                               str(prompts), "--n-images", str(args.prompts), "--steps", str(args.steps),
                               "--atlas", str(atlas), "--grounding-dino", str(gdino), "--sam", str(sam),
                               "--box-threshold", "0", "--text-threshold", "0", "--device", "cpu", "--threads",
                               str(args.threads)])
    print(build)
    stages = {name: float(s) for name, s in re.findall(r"\[\d/\d\] (\w+) .*?\((\d+(?:\.\d+)?) s\)", build, re.S)}
    report, report_s, _ = run([*atlas_cli, "report", "--atlas", str(atlas)])
    print(report[-3000:])
    # random weights link almost no concept to a label under the paper's rule; relink with the loosest rule so
    # that eval-edits has concepts to edit with and the whole path runs (its numbers mean nothing here)
    run([*atlas_cli, "link", "--atlas", str(atlas), "--iou", "0", "--min-hits", "1"])
    edits, edits_s, _ = run([*atlas_cli, "eval-edits", "--atlas", str(atlas), "--kind", "spatial", "--n", "1",
                             "--windows", "early", "--strengths", "1", "--max-concepts", "1", "--batch-size", "4",
                             "--out", str(work / "eval")], must=False)
    print(edits[-2000:])
    ran = int((work / "eval" / "eval-spatial.md").exists())
    n = args.prompts
    per_image = " ".join(f"{k}_s_per_image={v / n:.2f}" for k, v in stages.items())
    print(f"RESULT images={n} steps={args.steps} build_s={build_s:.1f} peak_rss_mb={rss:.0f} "
          f"atlas_bytes_per_image={du(atlas) / n:.0f} activation_bytes_per_image={du(atlas / 'activations') / n:.0f} "
          f"sae_bytes={du(atlas / 'saes'):.0f} report_s={report_s:.1f} eval_edits_s={edits_s:.1f} "
          f"eval_edits_ran={ran} "
          f"{per_image}")


if __name__ == "__main__":
    main()
