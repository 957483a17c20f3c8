"""Scale benchmark of the atlas store: build an SD-v1.4-shaped synthetic atlas, then time the hot queries.

Shape: d = 1280, 5120 latents, k = 10, a 16 x 16 grid (256 positions), 2 blocks x 3 timesteps = 6
SAEs, and as many images as it takes to store --nonzeros codes (80M by default: 5,209 images).
Codes come from atlas.store.synthetic: latents follow a Zipf-like law (p ~ (rank + 20) ** -0.8,
shuffled over latent ids: entropy 11.45 of 12.3 bits) drawn independently per position -- no spatial
coherence, so compression here is a pessimistic estimate for real codes. Values are positive
(per-latent log-normal scale x exponential).
Concept labels: 40 labels x 150 concepts per SAE with random IoU statistics.

Prints bytes per stored nonzero (both arrangements of codes/), build time, and p50/p95 latency of:
top-20 images of a concept, all codes of one image (all 6 SAEs), the label query ("concepts predicting
label X at t=1.0 in block mid"), and FAISS nearest-10 across the block's timesteps. The last line is
RESULT bytes_per_nonzero=.. top_images_p50_ms=.. image_codes_p50_ms=.. label_query_p50_ms=.. nearest_p50_ms=..
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_LATENTS, D, K, GRID = 5120, 1280, 10, 16
BLOCKS, TIMES = ("mid", "up"), (1.0, 0.5, 0.0)
BATCH_IMAGES = 256


def percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.asarray(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def timed(fn, args_list: list) -> tuple[float, float]:
    times = []
    for args in args_list:
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return percentiles(times)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.parquet")) if path.exists() else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nonzeros", type=int, default=80_000_000, help="stored codes to synthesise")
    parser.add_argument("--repeats", type=int, default=50, help="queries timed per kind")
    parser.add_argument("--threads", type=int, default=0, help="DuckDB and FAISS threads (0 = all cores)")
    parser.add_argument("--out", help="atlas directory to build (default: a temporary one, removed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import faiss

    from atlas.store import Atlas
    from atlas.store.synthetic import synth_codes, zipf_probabilities

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    n_saes = len(BLOCKS) * len(TIMES)
    n_images = -(-args.nonzeros // (n_saes * GRID * GRID * K))
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    if root.exists():
        shutil.rmtree(root)
    print(f"building {root}: {n_saes} SAEs x {n_images} images x {GRID * GRID} positions x k={K} "
          f"= {n_saes * n_images * GRID * GRID * K:,} nonzeros", flush=True)
    try:
        start = time.perf_counter()
        atlas = Atlas.create(root, model_name="synthetic-sd14", threads=args.threads or None)
        writer = atlas.writer()
        prompt_ids = writer.catalog.add_prompts([(f"synthetic prompt {i}", "train") for i in range(n_images)])
        image_ids = writer.catalog.add_images([dict(prompt_id=p, seed=i, guidance=7.5, steps=50,
                                                    path=f"images/{i:06d}.png") for i, p in enumerate(prompt_ids)])
        assert image_ids == list(range(n_images))
        phase = {}
        sae_ids = []
        for block in BLOCKS:
            for t in TIMES:
                decoder = rng.standard_normal((N_LATENTS, D), dtype=np.float32)
                tick = time.perf_counter()
                sae_ids.append(writer.catalog.add_sae(block, t, "cond", K, N_LATENTS, D, {"fvu": 0.1}, None,
                                                      grid=(GRID, GRID), decoder=decoder))
                phase["faiss"] = phase.get("faiss", 0.0) + time.perf_counter() - tick
        tick = time.perf_counter()
        stored = 0
        for sae_id in sae_ids:
            p, scale = zipf_probabilities(rng, N_LATENTS), rng.lognormal(0.0, 0.5, N_LATENTS)
            counts = np.zeros(N_LATENTS, np.int64)
            for first in range(0, n_images, BATCH_IMAGES):
                batch = synth_codes(rng, p, scale, first, min(BATCH_IMAGES, n_images - first), (GRID, GRID), K)
                stored += writer.codes.write(sae_id, *batch)
                counts += np.bincount(batch[3], minlength=N_LATENTS)
            writer.catalog.add_concepts(sae_id, counts / (n_images * GRID * GRID), scale + 0.01, np.ones(N_LATENTS))
        phase["synthesise+stage"] = time.perf_counter() - tick
        tick = time.perf_counter()
        writer.codes.finalize()
        phase["finalize"] = time.perf_counter() - tick
        labels = [f"label {i}" for i in range(40)]
        rows = []
        for sae_id in sae_ids:
            for label in labels:
                for latent in rng.choice(N_LATENTS, 150, replace=False):
                    iou = float(rng.beta(2, 5))
                    rows.append(dict(sae_id=sae_id, latent=int(latent), label=label, mean_iou=iou,
                                     hit_rate=float(min(1.0, iou * 1.5)), precision=float(rng.random()),
                                     recall=float(rng.random()), support=int(rng.integers(1, 500))))
        writer.catalog.set_concept_labels(rows)
        build_s = time.perf_counter() - start
        by_latent, by_image = dir_bytes(root / "codes" / "by_latent"), dir_bytes(root / "codes" / "by_image")
        bytes_per_nonzero = (by_latent + by_image) / stored
        print(f"stored {stored:,} nonzeros; build {build_s:.1f} s "
              f"({', '.join(f'{k} {v:.1f} s' for k, v in phase.items())})")
        print(f"codes on disk: by_latent {by_latent / stored:.3f} + by_image {by_image / stored:.3f} "
              f"= {bytes_per_nonzero:.3f} bytes/nonzero ({(by_latent + by_image) / 2**20:.1f} MiB)", flush=True)

        writer.close()
        atlas.close()
        atlas = Atlas(root, threads=args.threads or None)
        n = args.repeats
        concepts = [(f"{BLOCKS[i % 2]}/{TIMES[i % 3]!r}/{int(rng.integers(N_LATENTS))}",) for i in range(n)]
        images = [(int(rng.integers(n_images)),) for _ in range(n)]
        label_args = [(labels[i % len(labels)],) for i in range(n)]
        atlas.top_images(concepts[0][0], 20)  # first use loads views, metadata and indexes
        atlas.image_codes(images[0][0])
        atlas.nearest(concepts[0][0], 10)
        results = {
            "top_images": timed(lambda c: atlas.top_images(c, 20), concepts),
            "image_codes": timed(atlas.image_codes, images),
            "label_query": timed(lambda label: atlas.concepts(label=label, t=1.0, block="mid", limit=10),
                                 label_args),
            "nearest": timed(lambda c: atlas.nearest(c, 10), concepts),
        }
        sql_top = timed(lambda c: atlas.sql(
            f"SELECT image_id, max(value) AS v FROM codes WHERE block = '{c.split('/')[0]}' AND t = {c.split('/')[1]} "
            f"AND latent = {c.split('/')[2]} GROUP BY image_id ORDER BY v DESC LIMIT 20"), concepts[:10])
        goals = {"top_images": 20, "image_codes": 20, "label_query": None, "nearest": 10}
        for name, (p50, p95) in results.items():
            goal = f" (goal <= {goals[name]} ms)" if goals[name] else ""
            print(f"{name:12s} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms{goal}")
        print(f"{'sql top-20':12s} p50 {sql_top[0]:7.2f} ms  p95 {sql_top[1]:7.2f} ms (through the codes view)")
        print(f"bytes/nonzero {bytes_per_nonzero:.3f} (goal <= 5)")
        print(f"RESULT bytes_per_nonzero={bytes_per_nonzero:.3f} top_images_p50_ms={results['top_images'][0]:.2f} "
              f"image_codes_p50_ms={results['image_codes'][0]:.2f} label_query_p50_ms={results['label_query'][0]:.2f} "
              f"nearest_p50_ms={results['nearest'][0]:.2f}")
        atlas.close()
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
