"""Capture: shards hold exactly delta = output - input, images are unchanged, and runs resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from atlas.capture import ActivationSet, capture
from atlas.capture.config import CaptureConfig
from atlas.errors import BadInputError, ConflictError, NotFoundError, UnavailableError
from atlas.models import Hooks, generate, load_model


@pytest.fixture(scope="module")
def model(tiny_shapes_dir):
    return load_model(str(tiny_shapes_dir), device="cpu")


@pytest.mark.slow
def test_capture_records_delta_without_changing_images(model, tmp_path):
    prompts = ["a red circle on the left", "a blue square", "a green triangle at the top"]
    config = CaptureConfig(blocks=["down", "mid"], t=[1.0, 0.0], steps=4, batch_size=2)
    out = capture(model, prompts, tmp_path / "acts", config, progress=False)
    acts = ActivationSet(out)
    assert set(acts.keys()) == {(b, t, br) for b in ("down", "mid") for t in (1.0, 0.0) for br in ("cond", "uncond")}
    mid = acts.load("mid", 1.0, "cond")
    assert mid["x"].shape == (3 * 16, 64) and mid["x"].dtype == torch.float16
    assert mid["image_id"].tolist() == [0] * 16 + [1] * 16 + [2] * 16
    assert mid["row"][:5].tolist() == [0, 0, 0, 0, 1] and mid["col"][:5].tolist() == [0, 1, 2, 3, 0]

    # The shard equals delta computed independently at the same step, for the cond half.
    seen = {}

    def keep(block, step, delta):
        seen["d"] = delta.clone()

    hooks = Hooks().on("mid", keep, steps=[0])
    plain = generate(model, prompts[:2], [0, 1], steps=4, hooks=hooks)
    cond = seen["d"].chunk(2)[1]
    expected = cond.permute(0, 2, 3, 1).reshape(-1, 64).half()
    assert torch.equal(mid["x"][:32], expected)

    # The saved images are the images generated without any hook.
    from PIL import Image
    saved = np.stack([np.asarray(Image.open(out / "images" / f"{i:06d}.png")) for i in range(2)])
    assert np.array_equal(saved, plain)
    records = [json.loads(line) for line in (out / "prompts.jsonl").open()]
    assert [r["seed"] for r in records] == [0, 1, 2] and all(r["split"] in ("train", "dictionary", "test")
                                                             for r in records)


def test_capture_refuses_other_settings_in_the_same_directory(model, tmp_path):
    capture(model, ["a red circle"], tmp_path, CaptureConfig(blocks=["mid"], t=[1.0], steps=2), progress=False)
    with pytest.raises(ConflictError, match="other prompts or settings"):
        capture(model, ["a red circle"], tmp_path, CaptureConfig(blocks=["up"], t=[1.0], steps=2), progress=False)
    with pytest.raises(BadInputError, match="unknown block"):
        capture(model, ["x"], tmp_path / "b", CaptureConfig(blocks=["middle"]), progress=False)
    with pytest.raises(BadInputError, match="same step"):
        capture(model, ["x"], tmp_path / "c", CaptureConfig(t=[1.0, 0.99], steps=4), progress=False)
    acts = ActivationSet(tmp_path)
    with pytest.raises(NotFoundError, match="captured: mid"):
        acts.load("down", 1.0, "cond")
    with pytest.raises(NotFoundError, match=r"t=0.5 was not captured"):
        acts.load("mid", 0.5, "cond")


def test_activations_beyond_fp16_are_refused_in_one_line_and_bf16_keeps_them(model, tmp_path):
    """A block whose update overflows fp16 storage (FLUX's can) stops the capture with a one-line error naming the
    way out, before any shard of that batch is written; bf16 (fp32's range) stores the same values finite."""
    module = model.denoiser.get_submodule(model.hook_module_name("mid"))
    handle = module.register_forward_hook(lambda _m, _inputs, output: tuple(o * 1e6 for o in output)
                                          if isinstance(output, tuple) else output * 1e6)
    try:
        config = CaptureConfig(blocks=["mid"], t=[1.0], branches=["cond"], steps=2)
        with pytest.raises(BadInputError, match=r"^mid at t = 1: activations up to .* overflow fp16 storage "
                                                r"\(max 65504\); capture again with --dtype bf16 or fp32$"):
            capture(model, ["a red circle"], tmp_path / "fp16", config, progress=False)
        assert not list((tmp_path / "fp16").rglob("*.safetensors"))
        out = capture(model, ["a red circle"], tmp_path / "bf16", replace(config, dtype="bf16"), progress=False)
    finally:
        handle.remove()
    x = ActivationSet(out).load("mid", 1.0, "cond")["x"]
    assert x.dtype == torch.bfloat16 and bool(x.isfinite().all()) and float(x.float().abs().max()) > 65504


def test_split_filter_and_corrupt_shard(model, tmp_path):
    prompts = [f"a red circle {'and a blue square ' * (i % 3)}".strip() for i in range(6)]
    out = capture(model, prompts, tmp_path, CaptureConfig(blocks=["mid"], t=[1.0], steps=2, branches=["cond"]),
                  progress=False)
    acts = ActivationSet(out)
    splits = {r.image_id: r.split for r in acts.prompts}
    train = acts.load("mid", 1.0, "cond", split="train")
    assert {int(i) for i in train["image_id"]} == {i for i, s in splits.items() if s == "train"}
    shard = next((out / "shards" / "mid" / "t1.0" / "cond").glob("*.safetensors"))
    shard.write_bytes(b"garbage")
    with pytest.raises(UnavailableError, match="corrupt or missing activation shard"):
        acts.load("mid", 1.0, "cond")


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_every_shard_exactly_once(tiny_shapes_dir, tmp_path):
    out = tmp_path / "acts"
    env = {**os.environ, "ATLAS_SHAPES_MODEL": str(tiny_shapes_dir), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cli.main", "capture", "--n-prompts", "16", "--batch-size", "2", "--steps", "3",
           "--blocks", "mid,up", "--t", "1.0,0.0", "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "done").glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = len(list((out / "done").glob("*.json")))
    assert 2 <= finished_before < 8, "the kill should land mid-run"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    acts = ActivationSet(out)
    assert acts.done == list(range(8))
    for key in acts.keys():
        data = acts.load(*key)
        ids = data["image_id"].numpy()
        n_pos = 16 if key[0] == "mid" else 64
        assert len(ids) == 16 * n_pos
        assert (np.bincount(ids) == n_pos).all()
    assert not list(out.rglob("*.tmp"))
    assert len(list((out / "images").glob("*.png"))) == 16


@pytest.mark.slow
def test_delta_at_reads_without_changing_the_image(tiny_shapes_dir):
    import numpy as np

    from atlas.capture import delta_at
    from atlas.models import generate, load_model

    model = load_model(str(tiny_shapes_dir), device="cpu")
    plain = generate(model, ["a red circle", "a blue square"], [0, 1], steps=4)
    latents, delta = delta_at(model, ["a red circle", "a blue square"], [0, 1], "mid", step=0, steps=4)
    assert np.array_equal(model.to_uint8(model.decode(latents)), plain)
    assert delta.shape[0] == 2 and delta.ndim == 4



def test_shards_equal_the_blocks_own_forward_pass(tiny_sd_dir, tmp_path):
    """Each shard row is output - input of the block's Transformer2DModel, called directly on the inputs it saw.

    Independent of atlas.models.hooks: a plain torch pre-hook records what each Transformer2DModel receives at
    every step, the test calls the module itself on the inputs of t's step, and compares. Checked to fail when
    broken: storing the block's output instead of output - input, or capturing the step after t's, fails it.
    """
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from atlas.models.hooks import t_to_step

    model = load_model(str(tiny_sd_dir), device="cpu")
    prompts, steps, keys = ["a dog on a bench", "a cat"], 4, [("mid", 1.0), ("up", 0.0)]
    out = ActivationSet(capture(model, prompts, tmp_path / "acts",
                                CaptureConfig(blocks=["mid", "up"], t=[1.0, 0.0], steps=steps, batch_size=2),
                                progress=False))
    modules = dict(model.denoiser.named_modules())
    calls: dict[str, list[tuple[tuple, dict]]] = {block: [] for block, _ in keys}
    handles = []
    for block in calls:
        module = modules[model.hook_module_name(block)]
        assert isinstance(module, Transformer2DModel)
        handles.append(module.register_forward_pre_hook(
            lambda _m, args, kwargs, seen=calls[block]: seen.append(
                (tuple(a.clone() for a in args), {k: v.clone() if torch.is_tensor(v) else v
                                                  for k, v in kwargs.items()})), with_kwargs=True))
    try:
        generate(model, prompts, [0, 1], steps=steps)
    finally:
        for handle in handles:
            handle.remove()
    for block, t in keys:
        args, kwargs = calls[block][t_to_step(t, steps)]
        hidden = args[0] if args else kwargs["hidden_states"]
        with torch.no_grad():
            result = modules[model.hook_module_name(block)](*args, **kwargs)
        delta = (result[0] if isinstance(result, tuple) else result.sample) - hidden
        for branch, half in (("uncond", 0), ("cond", 1)):
            expected = delta.chunk(2)[half].permute(0, 2, 3, 1).reshape(-1, delta.shape[1]).half()
            stored = out.load(block, t, branch)["x"]
            assert stored.shape == expected.shape
            torch.testing.assert_close(stored.float(), expected.float(), rtol=0, atol=2e-3)
