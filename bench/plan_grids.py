"""What planning a capture costs: each hooked block's grid measured on fake tensors (what `plan_capture` does now)
against the same forward pass on real tensors (what it did before, and still does for a model whose forward needs
values), on models of the real sizes with random weights: SD v1.4 (fp32, 512 px, blocks down/mid/up) and a
real-width FLUX.1-dev slice (bf16, one double- and one single-stream block, 256 px).

    .venv/bin/python bench/plan_grids.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import torch

from atlas.capture.plan import _forward_grids, block_grids
from atlas.models import load_model
from atlas.models.random import real_size_model, write_random_sd


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    values = {}
    with tempfile.TemporaryDirectory() as tmp:
        sd = load_model(str(write_random_sd(f"{tmp}/sd14", half=False)), device="cpu", dtype="fp32")
        flux = real_size_model("flux-dev", layers=(1, 1))
        flux.spec = replace(flux.spec, resolution=256)
        cases = [("sd14", sd, ["down", "mid", "up"]),
                 ("flux_slice", flux, ["transformer_blocks.0", "single_transformer_blocks.0"])]
        for name, model, blocks in cases:
            fake_s, fake = timed(block_grids, model, blocks)
            real_s, real = timed(_forward_grids, model, blocks)
            assert fake == real, (fake, real)
            print(f"{name}: grids {fake}; fake tensors {fake_s:.2f} s, real forward {real_s:.2f} s "
                  f"({real_s / fake_s:.0f}x)")
            values |= {f"{name}_fake_s": fake_s, f"{name}_real_s": real_s, f"{name}_ratio": real_s / fake_s}
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in values.items()))


if __name__ == "__main__":
    main()
