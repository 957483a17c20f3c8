"""Cost of ingestion: capture + encode + writes vs bare sampling of the same images; local vs Ray executor.

With the shapes model (the shapes preset's capture: blocks down, mid, up at t = 1.0, 0.5, 0.0, cond branch,
the model's 20 steps; SAEs with k = 10 and 4x latents), in one run:

  bare     `atlas.generate` of N images (sampling + decoding, nothing kept)
  ingest   `capture` of the same N prompts and seeds into a fresh directory (images, delta shards, markers)
           + `encode_atlas` into a fresh atlas (catalog, SAEs, FAISS, concept statistics, codes)
  ray      the same ingest with `--executor ray` (a local Ray instance, --actors CPU actors of one thread):
           cold (Ray start, actors loading the model, then the work) and warm (a second ingest on the same actors)

bare and ingest alternate --repeats times; medians are compared. The SAEs are trained beforehand on a small
separate capture (not timed: how fast an SAE encodes does not depend on its training). Last line:

RESULT overhead_pct=.. ray_vs_local_throughput=..

where ray_vs_local_throughput is images/s of the cold Ray ingest (everything included) over the local ingest's.

    nice -n 10 .venv/bin/python bench/ingest_overhead.py [--n 64] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def ingest(model, prompts: list[str], root: Path, config, saes: Path, executor=None) -> dict[str, float]:
    """Capture + encode into a fresh atlas at `root`; seconds per phase."""
    from atlas.capture import ActivationSet, capture
    from atlas.pipeline.encode import encode_atlas
    from atlas.store import Atlas

    start = time.perf_counter()
    capture(model, prompts, root / "activations", config, progress=False, executor=executor)
    captured = time.perf_counter()
    with Atlas.create(root) as atlas, atlas.writer() as writer:
        encode_atlas(writer, ActivationSet(root / "activations"), saes, progress=False, executor=executor)
    return {"capture": captured - start, "encode": time.perf_counter() - captured}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="images per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the local runs (0 = default)")
    parser.add_argument("--out", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)

    import torch

    from atlas.capture import ActivationSet, capture
    from atlas.capture.config import CaptureConfig
    from atlas.models import generate, load_model
    from atlas.pipeline.config import ExecutorConfig, SaeJobConfig
    from atlas.pipeline.executor import open_executor
    from atlas.pipeline.train import train_all
    from atlas.shapes.world import captions

    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = Path(args.out or tempfile.mkdtemp(prefix="ingest-"))
    model = load_model("shapes", device="cpu")
    config = CaptureConfig(branches=["cond"], batch_size=args.batch_size)
    prompts = captions(args.n, split=None, seed=1)
    seeds = list(range(config.seed, config.seed + args.n))
    print(f"{args.n} shapes images, batch {args.batch_size}, {model.spec.default_steps} steps, blocks {config.blocks}, "
          f"t {config.t}, {config.branches}; torch threads {torch.get_num_threads()}; scratch {scratch}")

    saes = scratch / "saes"
    warmup = captions(min(32, args.n), split=None, seed=2)
    capture(model, warmup, scratch / "warmup", config, progress=False)
    train_all(ActivationSet(scratch / "warmup"), saes, SaeJobConfig(min_tokens=20_000, epochs=1), progress=False)

    bare, local = [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        generate(model, prompts, seeds, batch_size=args.batch_size)
        bare.append(time.perf_counter() - start)
        phases = ingest(model, prompts, scratch / f"local-{r}", config, saes)
        local.append(sum(phases.values()))
        print(f"run {r}: bare {bare[-1]:.1f} s; ingest {local[-1]:.1f} s (capture {phases['capture']:.1f}, "
              f"encode {phases['encode']:.1f})")
    bare_s, local_s = statistics.median(bare), statistics.median(local)
    overhead = 100 * (local_s / bare_s - 1)
    print(f"median: bare {bare_s:.1f} s ({args.n / bare_s:.2f} img/s), ingest {local_s:.1f} s "
          f"({args.n / local_s:.2f} img/s): overhead {overhead:.1f} %")

    start = time.perf_counter()
    with open_executor(ExecutorConfig(executor="ray", actors=args.actors)) as executor:
        cold = ingest(model, prompts, scratch / "ray-cold", config, saes, executor)
        cold_s = time.perf_counter() - start
        warm = ingest(model, prompts, scratch / "ray-warm", config, saes, executor)
        warm_s = sum(warm.values())
    print(f"ray, {args.actors} actors: cold {cold_s:.1f} s ({args.n / cold_s:.2f} img/s; capture incl. Ray start "
          f"{cold['capture']:.1f}, encode {cold['encode']:.1f}), warm {warm_s:.1f} s ({args.n / warm_s:.2f} img/s; "
          f"capture {warm['capture']:.1f}, encode {warm['encode']:.1f})")
    print(f"ray vs local throughput: cold {local_s / cold_s:.2f}x, warm {local_s / warm_s:.2f}x")
    print(f"RESULT overhead_pct={overhead:.1f} ray_vs_local_throughput={local_s / cold_s:.3f}")


if __name__ == "__main__":
    main()
