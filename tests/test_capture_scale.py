"""Capture at scale: the disk plan (and the refusal of a capture the disk cannot hold), the stored dtype, the
per-key selection, and a Ray capture interrupted and resumed that writes what a local one writes."""

from __future__ import annotations

import json
import math
import shutil
from collections import namedtuple

import pytest
import torch
from click.testing import CliRunner

from atlas.capture import ActivationSet, capture, plan_capture, prepare_capture
from atlas.capture.config import CaptureConfig
from atlas.capture.plan import SHARD_HEADER_BYTES
from atlas.cli.main import main
from atlas.errors import BadInputError, NotFoundError, UnavailableError
from atlas.models import load_model
from atlas.pipeline.build import build_atlas
from atlas.pipeline.config import BuildConfig, ExecutorConfig, SaeJobConfig
from atlas.pipeline.encode import encode_atlas
from atlas.pipeline.executor import open_executor
from atlas.pipeline.train import train_one
from atlas.store import Atlas

PROMPTS = [f"a {colour} {shape}" for colour in ("red", "blue", "green") for shape in ("circle", "square")]


@pytest.fixture(scope="module")
def model(tiny_shapes_dir):
    return load_model(str(tiny_shapes_dir), device="cpu")


def _shard_files(out):
    return sorted(p.relative_to(out / "shards") for p in (out / "shards").rglob("*.safetensors"))


def test_the_plan_counts_what_capture_writes_key_by_key(model, tmp_path):
    config = CaptureConfig(keys=["mid/1.0", "up/0.0/both"], dtype="bf16", steps=2, batch_size=3)
    plan = plan_capture(model, len(PROMPTS), config, tmp_path / "acts")
    assert [row.name for row in plan.rows] == ["mid/1.0", "up/0.0", "up/0.0/uncond"]
    assert plan.free_bytes == shutil.disk_usage(tmp_path).free
    out = capture(model, PROMPTS, tmp_path / "acts", config, progress=False)
    acts = ActivationSet(out)
    for row in plan.rows:
        assert list(row.grid) == acts.marker(0)["grids"][row.block]
        files = [out / "shards" / row.block / f"t{row.t}" / row.branch / f"batch-{b:06d}.safetensors" for b in (0, 1)]
        data = sum(f.stat().st_size for f in files)
        assert 0 <= data - len(PROMPTS) * row.bytes_per_image <= 2 * SHARD_HEADER_BYTES  # exact but for headers
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert sum(r.bytes_per_image for r in plan.rows) * len(PROMPTS) < written <= plan.total_bytes
    text = plan.format()
    assert len(text.splitlines()) == 2 + len(plan.rows) + 2 and "up/0.0/uncond" in text and "bf16" in text

    # fp32 doubles the vectors' bytes; a resumed capture plans only the batches still to do
    wide = plan_capture(model, len(PROMPTS), CaptureConfig(keys=["mid/1.0"], dtype="fp32"))
    h, w, d = wide.rows[0].grid
    assert wide.rows[0].bytes_per_image - plan.rows[0].bytes_per_image == h * w * d * 2
    (out / "done" / "batch-000001.json").unlink()
    resumed = prepare_capture(model, PROMPTS, out, config).plan  # grids from the done marker, no forward pass
    assert resumed.n_images == 3 and resumed.rows == plan.rows


def test_a_capture_the_disk_cannot_hold_is_refused_before_anything_is_written(model, tiny_shapes_dir, tmp_path,
                                                                                 monkeypatch):
    plan = plan_capture(model, 1000, CaptureConfig(), tmp_path, free_bytes=10**6)
    assert plan.total_bytes > 10**6 and not plan.fits
    with pytest.raises(UnavailableError, match=r"^capture needs \S+ MB at .* but 1 MB are free .*--keys.*--dtype"):
        plan.check()
    assert plan_capture(model, 1000, CaptureConfig(), tmp_path, free_bytes=plan.total_bytes * 2).fits

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 50_000, 50_000))
    out = tmp_path / "acts"
    result = CliRunner().invoke(main, ["capture", "--model", str(tiny_shapes_dir), "--n-prompts", "40", "--steps", "3",
                                       "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("capture plan: 40 images") and "does not fit" in lines[-2]
    assert lines[-1].startswith("Error: capture needs ") and f"at {out} but 50 KB are free" in lines[-1]
    assert not out.exists()

    said: list[str] = []
    build = BuildConfig(atlas=str(tmp_path / "atlas"), model=str(tiny_shapes_dir), keys=["up/1.0"], dtype="bf16",
                        steps=3)
    with pytest.raises(UnavailableError, match="capture needs .* at .*activations but 50 KB are free"):
        build_atlas(build, progress=False, say=said.append)
    assert said[0].startswith("capture plan: 640 images to capture, bf16") and said[0].count("\n") == 4
    assert not (tmp_path / "atlas").exists()  # refused before the first stage


def test_bf16_and_fp32_store_the_same_activations_and_train_and_encode(model, tmp_path):
    keys = ["up/1.0"]
    outs = {dtype: capture(model, PROMPTS, tmp_path / dtype, CaptureConfig(keys=keys, dtype=dtype, steps=2),
                           progress=False) for dtype in ("fp32", "bf16", "fp16")}
    x = {dtype: ActivationSet(out).load("up", 1.0, "cond")["x"] for dtype, out in outs.items()}
    assert [x[d].dtype for d in outs] == [torch.float32, torch.bfloat16, torch.float16]
    assert torch.equal(x["bf16"], x["fp32"].bfloat16()) and torch.equal(x["fp16"], x["fp32"].half())

    job = SaeJobConfig(latents="64", k=4, batch_size=128, epochs=1, min_tokens=3000, buffer_tokens=1000)
    fvu = {}
    for dtype in ("bf16", "fp16"):
        acts = ActivationSet(outs[dtype])
        [report] = train_one(acts, "up", 1.0, "cond", tmp_path / f"saes-{dtype}", job, progress=False)
        fvu[dtype] = report.metrics["fvu"]
        with Atlas.create(tmp_path / f"atlas-{dtype}") as atlas, atlas.writer() as writer:
            written = encode_atlas(writer, acts, tmp_path / f"saes-{dtype}", progress=False)
        assert written == {"up/1.0/cond": len(PROMPTS) * 64 * 4}
    assert all(math.isfinite(v) and 0 < v < 1 for v in fvu.values()), fvu
    assert abs(fvu["bf16"] - fvu["fp16"]) < 0.02, fvu


def test_keys_capture_only_the_chosen_combinations(model, tmp_path):
    chosen = capture(model, PROMPTS[:2], tmp_path / "chosen",
                     CaptureConfig(keys=["mid/1.0", "up/0.0/uncond"], steps=2), progress=False)
    everything = capture(model, PROMPTS[:2], tmp_path / "all",
                         CaptureConfig(blocks=["mid", "up"], t=[1.0, 0.0], steps=2), progress=False)
    acts, full = ActivationSet(chosen), ActivationSet(everything)
    assert acts.keys() == [("mid", 1.0, "cond"), ("up", 0.0, "uncond")] and len(full.keys()) == 8
    assert [str(p.parent) for p in _shard_files(chosen)] == ["mid/t1.0/cond", "up/t0.0/uncond"]
    for key in acts.keys():
        assert torch.equal(acts.load(*key)["x"], full.load(*key)["x"])
    with pytest.raises(NotFoundError, match=r"^mid/0.0 was not captured in .*; captured: mid/1.0, up/0.0/uncond$"):
        acts.load("mid", 0.0, "cond")

    for keys, message in ((["middle/1.0"], "unknown block 'middle'"), (["mid"], "is not block/t or block/t/branch"),
                          (["mid/x"], "t 'x' is not a number"), (["mid/1.0/neg"], "unknown branch 'neg'")):
        with pytest.raises(BadInputError, match=message):
            capture(model, PROMPTS, tmp_path / "bad", CaptureConfig(keys=keys), progress=False)
    with pytest.raises(BadInputError, match="unknown dtype 'fp8'"):
        capture(model, PROMPTS, tmp_path / "bad", CaptureConfig(dtype="fp8"), progress=False)
    assert not (tmp_path / "bad").exists()


def test_cli_capture_takes_keys_and_dtype_and_refuses_a_bad_key_before_loading(tiny_shapes_dir, tmp_path):
    out = tmp_path / "acts"
    args = ["capture", "--model", str(tiny_shapes_dir), "--n-prompts", "2", "--steps", "2", "--out", str(out),
            "--device", "cpu", "--keys", "mid/1.0,up/0.0/both", "--dtype", "bf16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[2:5]] == ["mid/1.0", "up/0.0", "up/0.0/uncond"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "bf16" and manifest["keys"] == [["mid", 1.0, "cond"], ["up", 0.0, "cond"],
                                                                ["up", 0.0, "uncond"]]
    bad = CliRunner().invoke(main, args[:-4] + ["--keys", "mid/2.0", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "t must lie in [0, 1]" in bad.output and not (tmp_path / "bad").exists()


def test_a_capture_written_before_keys_and_dtype_resumes_and_reads(model, tmp_path):
    config = CaptureConfig(blocks=["mid"], t=[1.0], steps=2, batch_size=3)
    out = capture(model, PROMPTS, tmp_path, config, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in (manifest, manifest["config"]):
        del entry["keys"], entry["dtype"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "done" / "batch-000001.json").unlink()
    capture(model, PROMPTS, tmp_path, config, progress=False)
    acts = ActivationSet(out)
    assert acts.done == [0, 1] and acts.dtype == torch.float16
    assert acts.keys() == [("mid", 1.0, "cond"), ("mid", 1.0, "uncond")]


class _StopAfter:
    """An executor that stops the capture (as a kill of the driver would) after `n` batches came back."""

    def __init__(self, executor, n: int) -> None:
        self.executor, self.n = executor, n

    def map(self, job, items):
        for i, result in enumerate(self.executor.map(job, items)):
            yield result
            if i + 1 == self.n:
                raise KeyboardInterrupt


@pytest.mark.slow
def test_ray_capture_interrupted_and_resumed_writes_what_a_local_capture_writes(tiny_shapes_dir, tmp_path):
    model = load_model(str(tiny_shapes_dir), device="cpu")
    prompts = PROMPTS + [p + " at the top" for p in PROMPTS]
    config = CaptureConfig(keys=["mid/1.0/both", "up/0.0"], steps=2, batch_size=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a 1-CPU Ray actor: float sums (and so fp16 roundings) depend on the threads
    try:
        capture(model, prompts, tmp_path / "local", config, progress=False)
        with open_executor(ExecutorConfig(executor="ray", actors=2)) as executor:
            with pytest.raises(KeyboardInterrupt):
                capture(model, prompts, tmp_path / "ray", config, progress=False, executor=_StopAfter(executor, 2))
            done = ActivationSet(tmp_path / "ray").done
            kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "shards").rglob("*.safetensors")
                    if int(p.stem.split("-")[1]) in done}
            assert len(done) == 2 and len(kept) == 2 * 3
            capture(model, prompts, tmp_path / "ray", config, progress=False, executor=executor)
            assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the done batches were skipped
    finally:
        torch.set_num_threads(threads)
    local, remote = ActivationSet(tmp_path / "local"), ActivationSet(tmp_path / "ray")
    assert local.done == remote.done == list(range(6)) and local.manifest == remote.manifest
    assert _shard_files(local.path) == _shard_files(remote.path) and len(_shard_files(remote.path)) == 6 * 3
    for b in remote.done:
        assert local.marker(b) == remote.marker(b)
        for key in remote.keys():
            mine, theirs = local.shard(*key, b), remote.shard(*key, b)
            assert all(torch.equal(mine[name], theirs[name]) for name in mine), (key, b)
            assert set(theirs["image_id"].tolist()) == set(remote.marker(b)["image_ids"])
    for image in (local.path / "images").glob("*.png"):
        assert image.read_bytes() == (remote.path / "images" / image.name).read_bytes()
    assert not list(remote.path.rglob("*.tmp"))


def test_block_grids_cost_no_compute_and_fall_back_to_a_real_pass(model, monkeypatch):
    """The planning pass runs on fake tensors (shapes only); a forward that needs values gets a real pass instead,
    with the same grids."""
    from torch._subclasses.fake_tensor import FakeTensor

    from atlas.capture.plan import block_grids

    fake: list[bool] = []

    def first_tensor(_module, args, kwargs):
        fake.append(isinstance(next(a for a in [*args, *kwargs.values()] if torch.is_tensor(a)), FakeTensor))

    handle = model.denoiser.register_forward_pre_hook(first_tensor, with_kwargs=True)
    try:
        grids = block_grids(model, ["down", "mid", "up"])
        assert fake == [True]
        predict = model.predict

        def reads_values(latents, *args, **kwargs):
            float(latents.sum())  # a fake tensor has no value to give
            return predict(latents, *args, **kwargs)

        monkeypatch.setattr(model, "predict", reads_values)
        assert block_grids(model, ["down", "mid", "up"]) == grids
        assert fake[1:] == [False]  # the fake pass stopped at float(), before the denoiser; the real one ran it
    finally:
        handle.remove()
    assert {block: grid[:2] for block, grid in grids.items()} == {"down": (8, 8), "mid": (4, 4), "up": (8, 8)}
