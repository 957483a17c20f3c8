"""SAE training streamed from shards on disk: peak memory against the data's size, throughput against a tensor.

Writes N and 4N positions of width 1280 as capture shards (atlas.capture.synthetic, through the capture's own
shard writer) to temporary activation directories, then trains one SAE per run, each in a fresh child process
whose peak RSS comes from wait4():

    stream N, stream 4N   one pass over every position through a ShardStream of --buffer-tokens positions
    memory N              the N positions loaded into one fp16 tensor first, then one pass over it

The SAE has 1280 latents (1x, not the paper's 4x) so that the runs take minutes on two CPU cores; the width
stays 1280. Both orders are shuffles of the same tokens (the stream's within windows of the buffer's size,
the tensor's as a whole): the runs do not end with the same SAE, but do the same work per step as long as
no latent is dead (AuxK's cost grows with the dead latents; the dead fraction is printed).
tokens/s is the positions trained on over the wall time of the `train_sae` call, which for the stream includes
reading every shard (the tensor's loading is not counted); stream N and memory N alternate for --rounds rounds
and their medians are compared, since other work on the machine moves single runs; tokens per CPU-second
(process time) are printed too, being less sensitive to that. The last line is

    RESULT rss_ratio=<stream 4N / stream N> stream_tokens_per_s=<stream N> memory_tokens_per_s=<memory N>
           throughput_ratio=<stream N / memory N>

    OMP_NUM_THREADS=2 .venv/bin/python bench/sae_memory.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cli_latency import run

KEY = ("mid", 1.0, "cond")
SIDE = 16
"""Positions per image: 16 x 16, SD v1.4's down and up blocks at 512 px."""


def write(directory: str, n_tokens: int, args: argparse.Namespace) -> None:
    from atlas.capture.synthetic import write_synthetic

    write_synthetic(directory, n_images=n_tokens // (SIDE * SIDE), side=SIDE, d=args.d, batch_size=args.shard_images,
                    block=KEY[0], t=KEY[1], branch=KEY[2], seed=args.seed)


def train(mode: str, directory: str, args: argparse.Namespace) -> dict:
    import torch

    from atlas.capture import ActivationSet, ShardStream
    from atlas.sae import SaeConfig, SaeTrainConfig, train_sae

    acts = ActivationSet(directory)
    if mode == "stream":
        data = ShardStream(acts, *KEY, seed=args.seed, buffer_tokens=args.buffer_tokens)
    else:
        data = acts.load(*KEY)["x"]
    sae_config = SaeConfig(d_in=args.d, n_latents=args.latents, k=args.k)
    train_config = SaeTrainConfig(lr=args.lr, batch_size=args.batch_size, epochs=1.0, seed=args.seed, device="cpu",
                                  threads=args.threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = train_sae(data, sae_config, train_config, progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = result.metrics["n_tokens"]
    out = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
           "tokens_per_cpu_s": tokens / cpu_seconds, "fvu": result.metrics["fvu"],
           "dead": result.metrics["dead_fraction"], "threads": torch.get_num_threads()}
    if mode == "stream":
        out["peak_buffered"] = data.peak_buffered
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=1 << 17, help="N: positions of the smaller directory")
    p.add_argument("--d", type=int, default=1280, help="width of the activations")
    p.add_argument("--latents", type=int, default=1280, help="SAE latents (the paper: 4 x 1280)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--buffer-tokens", type=int, default=1 << 16, help="the stream's buffer (keep it below N)")
    p.add_argument("--shard-images", type=int, default=32, help="images per shard (capture's default batch)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="alternating stream N / memory N runs (median tokens/s)")
    p.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        mode, directory = args.child
        if mode == "write":
            write(directory, args.tokens, args)
        else:
            print(json.dumps(train(mode, directory, args)))
        return

    passed = list(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="sae-memory-") as tmp:
        dirs = {}
        for name, n in (("N", args.tokens), ("4N", 4 * args.tokens)):
            dirs[name] = str(Path(tmp) / name)
            seconds, _, _, _ = run([sys.executable, __file__, *passed, "--tokens", str(n), "--child", "write",
                                    dirs[name]])
            print(f"wrote {n} positions x {args.d} as shards in {seconds:.1f} s", flush=True)
        runs: dict[str, list[dict]] = {"stream N": [], "memory N": [], "stream 4N": []}
        pair = [("stream N", "stream", "N"), ("memory N", "memory", "N")]
        plan = pair * args.rounds + [("stream 4N", "stream", "4N")]
        for label, mode, name in plan:
            _, rss_mb, stdout, _ = run([sys.executable, __file__, *passed, "--child", mode, dirs[name]])
            r = {**json.loads(stdout.strip().splitlines()[-1]), "rss_mb": rss_mb}
            runs[label].append(r)
            buffered = f", buffer peak {r['peak_buffered']} positions" if "peak_buffered" in r else ""
            print(f"{label:9}  {r['tokens']:9d} tokens  {r['seconds']:7.1f} s  {r['tokens_per_s']:8.0f} tokens/s  "
                  f"{r['tokens_per_cpu_s']:8.0f} tokens/cpu-s  "
                  f"peak RSS {rss_mb:7.0f} MB  FVU {r['fvu']:.4f}  dead {r['dead']:.3f}  threads {r['threads']}"
                  f"{buffered}", flush=True)
    rss = {label: max(r["rss_mb"] for r in results) for label, results in runs.items()}
    speed = {label: statistics.median(r["tokens_per_s"] for r in results) for label, results in runs.items()}
    cpu = {label: statistics.median(r["tokens_per_cpu_s"] for r in results) for label, results in runs.items()}
    print(f"medians of {args.rounds} alternating rounds; peak RSS: the largest of a label's runs; per CPU-second "
          f"(user + system time, less moved by other work on the machine): stream N {cpu['stream N']:.0f}, "
          f"memory N {cpu['memory N']:.0f}, ratio {cpu['stream N'] / cpu['memory N']:.3f}")
    print(f"RESULT rss_ratio={rss['stream 4N'] / rss['stream N']:.3f} stream_tokens_per_s={speed['stream N']:.0f} "
          f"memory_tokens_per_s={speed['memory N']:.0f} "
          f"throughput_ratio={speed['stream N'] / speed['memory N']:.3f}")

if __name__ == "__main__":
    main()
