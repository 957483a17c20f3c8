"""Online SAE training against training from a full capture, on the same tokens: held-out FVU, disk, wall time.

The shipped shapes model generates --n images (the shapes world's captions, all splits) twice:

    cache   `atlas capture` (every key's dense fp16 shards) then `atlas train --all` (train_all): the paper's way
    online  `atlas train-online` (train_online) with a buffer of --buffer-fraction of the cache's shard bytes

Both use the same seeds and batches of images, so the training positions are the same and the held-out (test)
positions bit for bit the same; both train the same SAE configuration (the `atlas train` defaults but
--min-tokens, to keep the run short; images at --steps 10 rather than the model's 20) and score on those test
images. Disk peak: the cache's activation
directory after capture (it only grows); online, the largest of buffer + kept directory seen after any round
(the buffer at its fullest). The last line is

    RESULT fvu_cache=<mean over keys> fvu_online=<mean> fvu_ratio=<online / cache> disk_ratio=<online / cache peak>
           buffer_ratio=<online buffer peak / cache peak> seconds_cache=.. seconds_online=..

    OMP_NUM_THREADS=2 .venv/bin/python bench/online_vs_cache.py              # 4 keys, 160 images: minutes
    OMP_NUM_THREADS=2 .venv/bin/python bench/online_vs_cache.py --n 240 --blocks down,mid,up --t 1.0,0.5,0.0 \
        --min-tokens 200000                                                     # 9 keys: under an hour
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def files_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=160, help="images generated (all splits)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps (the model default is 20)")
    parser.add_argument("--blocks", default="mid,up")
    parser.add_argument("--t", default="1.0,0.0")
    parser.add_argument("--images-per-batch", type=int, default=4)
    parser.add_argument("--buffer-fraction", type=float, default=0.1, help="buffer cap / the cache's shard bytes")
    parser.add_argument("--min-tokens", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()

    import torch

    from atlas.capture import ActivationSet, capture
    from atlas.capture.config import CaptureConfig
    from atlas.models import load_model
    from atlas.pipeline.config import SaeJobConfig
    from atlas.pipeline.online import train_online
    from atlas.pipeline.online_config import OnlineConfig
    from atlas.pipeline.presets import shapes_captions
    from atlas.pipeline.train import train_all

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="online-vs-cache-"))
    model = load_model("shapes", device="cpu")
    prompts = shapes_captions(args.n, split=None, seed=0)
    capture_config = CaptureConfig(blocks=args.blocks.split(","), t=[float(t) for t in args.t.split(",")],
                                   branches=["cond"], steps=args.steps, batch_size=args.images_per_batch)
    sae_config = SaeJobConfig(min_tokens=args.min_tokens, device="cpu")

    start = time.perf_counter()
    acts = ActivationSet(capture(model, prompts, work / "acts", capture_config, progress=False))
    cache_disk = files_bytes(work / "acts")
    cache = train_all(acts, work / "saes-cache", sae_config, progress=False)
    seconds_cache = time.perf_counter() - start
    shard_bytes = files_bytes(work / "acts" / "shards")

    online = OnlineConfig(buffer_gb=args.buffer_fraction * shard_bytes / 1e9)
    peaks = {"total": 0, "buffer": 0}

    def measure(_: object) -> None:
        buffer = files_bytes(work / "saes-online" / "online" / "buffer")
        peaks["buffer"] = max(peaks["buffer"], buffer)
        peaks["total"] = max(peaks["total"], buffer + files_bytes(work / "held"))

    start = time.perf_counter()
    reports = train_online(model, prompts, work / "held", work / "saes-online", capture_config, sae_config, online,
                           progress=False, say=print, on_round=measure)
    seconds_online = time.perf_counter() - start

    print(f"{'key':<16} {'fvu cache':>10} {'fvu online':>10}")
    for a, b in zip(cache, reports):
        print(f"{a.block + ' ' + str(a.t):<16} {a.metrics['fvu']:>10.4f} {b.metrics['fvu']:>10.4f}")
    fvu_cache = statistics.mean(r.metrics["fvu"] for r in cache)
    fvu_online = statistics.mean(r.metrics["fvu"] for r in reports)
    print(f"disk: cache {cache_disk / 1e6:.1f} MB (shards {shard_bytes / 1e6:.1f} MB), online peak "
          f"{peaks['total'] / 1e6:.1f} MB (buffer {peaks['buffer'] / 1e6:.1f} MB, cap {online.buffer_bytes / 1e6:.1f} "
          f"MB, held-out {files_bytes(work / 'held') / 1e6:.1f} MB); wall: cache {seconds_cache:.0f} s, online "
          f"{seconds_online:.0f} s; scored on {cache[0].scored_on} / {reports[0].scored_on}")
    print(f"RESULT fvu_cache={fvu_cache:.4f} fvu_online={fvu_online:.4f} fvu_ratio={fvu_online / fvu_cache:.3f} "
          f"disk_ratio={peaks['total'] / cache_disk:.3f} buffer_ratio={peaks['buffer'] / cache_disk:.3f} "
          f"seconds_cache={seconds_cache:.0f} seconds_online={seconds_online:.0f}")


if __name__ == "__main__":
    main()
