"""SD3-medium and FLUX.1 at their published transformer sizes, random weights: one capture step at 1024 px through
the atlas's hooks, on the CPU in bf16 (no machine of ours has the released weights or a GPU).

Per model, two runs:

- the whole transformer on the meta device (`atlas.models.random.real_size_model(device="meta")`: no memory, no
  compute): its parameter count and, from one denoiser call through the hooks, the update every block hands to a
  capture, (batch, width, rows, cols);
- a real-width transformer with random bf16 weights in a child process (its own peak RSS): SD3-medium whole (24
  blocks, 2B parameters); FLUX (12B, 24 GB in bf16, more than this machine holds) as a slice of 1 double- and 1
  single-stream block at the real width. `atlas.capture.capture` runs one denoising step (t = 1.0) on one prompt
  at 1024 x 1024 (128 x 128 latents: SD3 64 x 64 patches, FLUX 64 x 64 packed tokens) and stores every block's
  cond update. Printed: per block its stored shape and forward seconds (SD3's sampler runs the batch [uncond, cond],
  FLUX's, without classifier-free guidance, the cond half alone), the denoiser call, the whole capture, and the RSS
  after building and at its peak. For FLUX, the same process then times one denoiser call on the doubled batch
  [uncond, cond], as the sampler ran FLUX before it dropped the uncond half: the gain of running cond alone.

The text encoders and the VAE are narrow stand-ins with the real output widths and token counts (CLIP 77 tokens,
T5 256 for SD3 and schnell, 512 for dev), so the time and memory are the transformer's; FLUX's full step is
projected from the slice as 19 double + 38 single blocks (marked as projection).

    .venv/bin/python bench/mmdit_real_size.py [--kinds sd3,flux-dev,flux-schnell] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLICES = {"sd3": None, "flux-dev": (1, 1), "flux-schnell": (1, 1)}
"""Blocks of the real-width run: SD3 whole, FLUX 1 double + 1 single block."""
PROMPT = "a red dog on the left of a blue car"


def rss_gib() -> float:
    """This process's resident set now, GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def meta(kind: str) -> dict:
    """Parameters, hook points and per-block update shapes of the whole transformer, on the meta device."""
    from atlas.models.mmdit import block_names
    from atlas.models.random import REAL_TRANSFORMERS, meta_update_shapes, real_size_model

    model = real_size_model(kind, device="meta")
    blocks = block_names(REAL_TRANSFORMERS[kind])
    shapes = meta_update_shapes(model, blocks)
    return {"params": sum(p.numel() for p in model.transformer.parameters()), "blocks": len(blocks),
            "hook_points": model.spec.hook_points, "shapes": sorted({str(s) for s in shapes.values()}),
            "every_block": sorted(shapes) == sorted(blocks), "token_grid": model.token_grid}


def one(kind: str, threads: int) -> dict:
    """The real-width run (in a child process): build, one capture step, timings and memory."""
    import torch

    from atlas.capture import ActivationSet, capture
    from atlas.capture.config import CaptureConfig
    from atlas.models.mmdit import block_names
    from atlas.models.random import real_size_model

    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = real_size_model(kind, device="cpu", dtype="bf16", layers=SLICES[kind])
    built_s, built_rss = time.perf_counter() - start, rss_gib()
    blocks = block_names(dict(model.transformer.config))
    modules = dict(model.transformer.named_modules())
    starts: dict[str, float] = {}
    seconds: dict[str, float] = {}
    handles = []
    for name in blocks + [""]:  # "" is the whole transformer
        module = modules[name]
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: starts.__setitem__(
            name, time.perf_counter())))
        handles.append(module.register_forward_hook(lambda m, a, o, name=name: seconds.__setitem__(
            name, time.perf_counter() - starts[name])))
    config = CaptureConfig(blocks=blocks, t=[1.0], branches=["cond"], steps=1, batch_size=1)
    with tempfile.TemporaryDirectory(dir="/work/tmp") as out:
        start = time.perf_counter()
        acts = ActivationSet(capture(model, [PROMPT], Path(out) / "acts", config, progress=False))
        capture_s = time.perf_counter() - start
        stored = {b: [list(x.shape), str(x.dtype).removeprefix("torch.")]
                  for b in blocks for x in [acts.load(b, 1.0, "cond")["x"]]}
    run = {"params": sum(p.numel() for p in model.transformer.parameters()), "blocks": blocks, "built_s": built_s,
           "built_rss_gib": built_rss, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "capture_s": capture_s, "denoiser_s": seconds[""], "block_s": {b: seconds[b] for b in blocks},
           "stored": stored, "text_tokens": int(model.encode_text([PROMPT]).tokens.shape[1])}
    if not model.spec.cfg:
        doubled_call(model)
        run.update(doubled_denoiser_s=seconds[""], doubled_block_s={b: seconds[b] for b in blocks})
    for handle in handles:
        handle.remove()
    return run


def doubled_call(model: object) -> None:
    """One first-step denoiser call on the batch [uncond, cond]: what the sampler ran for FLUX before it ran the cond
    half alone (the timing hooks record it)."""
    import copy

    import torch

    from atlas.models.sampler import initial_noise

    scheduler = copy.deepcopy(model.scheduler)
    scheduler.set_timesteps(1, device=model.device)
    latents = initial_noise(model, [0])
    with torch.no_grad():
        model.predict(torch.cat([latents, latents]), scheduler.timesteps[0], model.encode_text(["", PROMPT]))


def projected_step(block_s: dict[str, float]) -> float:
    """A whole FLUX denoiser call from the slice's per-block seconds: 19 double + 38 single blocks."""
    double = [s for b, s in block_s.items() if b.startswith("transformer_blocks")]
    single = [s for b, s in block_s.items() if b.startswith("single")]
    return 19 * sum(double) / len(double) + 38 * sum(single) / len(single)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="sd3,flux-dev,flux-schnell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.threads)))
        return
    result = {}
    for kind in args.kinds.split(","):
        shape = meta(kind)
        print(f"{kind} (meta device): {shape['params'] / 1e9:.2f}B parameters, {shape['blocks']} blocks, hook "
              f"points {shape['hook_points']}, token grid {shape['token_grid']}, update per block "
              f"{', '.join(shape['shapes'])} (every block hooked: {shape['every_block']})", flush=True)
        child = subprocess.run([sys.executable, __file__, "--one", kind, "--threads", str(args.threads)],
                               capture_output=True, text=True, check=True)
        run = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{kind} real width, {len(run['blocks'])} blocks, {run['params'] / 1e9:.2f}B parameters in bf16, "
              f"{run['text_tokens']} text tokens: built in {run['built_s']:.0f} s, RSS {run['built_rss_gib']:.1f} GiB "
              f"built, {run['peak_rss_gib']:.1f} GiB peak; one capture step {run['capture_s']:.1f} s, denoiser call "
              f"{run['denoiser_s']:.1f} s", flush=True)
        for block, secs in run["block_s"].items():
            stored, dtype = run["stored"][block]
            print(f"  {block:28s} stored {stored} {dtype}  {secs:.2f} s")
        key = kind.replace("-", "_")
        result[f"{key}_params_b"] = round(shape["params"] / 1e9, 3)
        result[f"{key}_denoiser_s"] = round(run["denoiser_s"], 2)
        result[f"{key}_capture_s"] = round(run["capture_s"], 2)
        result[f"{key}_peak_rss_gib"] = round(run["peak_rss_gib"], 2)
        result[f"{key}_block_s"] = round(sum(run["block_s"].values()) / len(run["block_s"]), 3)
        if kind != "sd3":  # the whole step, projected from the slice's blocks
            projected, before = projected_step(run["block_s"]), projected_step(run["doubled_block_s"])
            print(f"  projection: 19 double + 38 single blocks = {projected:.0f} s per denoiser call on cond alone, "
                  f"{before:.0f} s on the doubled batch [uncond, cond] (slice call {run['doubled_denoiser_s']:.1f} s)")
            result[f"{key}_projected_step_s"] = round(projected, 1)
            result[f"{key}_doubled_denoiser_s"] = round(run["doubled_denoiser_s"], 2)
            result[f"{key}_doubled_projected_step_s"] = round(before, 1)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
