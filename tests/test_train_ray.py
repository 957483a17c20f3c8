"""`atlas train --all --executor ray`: on a local Ray instance with 2 CPU actors, each SAE trains on its own actor
and ends with the weights and FVU the same seed gives in this process (slow: a capture and three sets of actors);
failures are one line naming the SAE."""

from __future__ import annotations

import json
import os
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from atlas.capture import ActivationSet, capture
from atlas.capture.config import CaptureConfig
from atlas.capture.synthetic import write_synthetic
from atlas.cli.main import main
from atlas.errors import UnavailableError
from atlas.models import load_model
from atlas.pipeline.config import ExecutorConfig, SaeJobConfig
from atlas.pipeline.executor import RayExecutor
from atlas.pipeline.train import SaeKey, sae_dir, train_all

CONFIG = {"latents": "32", "k": "4", "batch_size": "64", "epochs": "1", "min_tokens": "1500", "lr": "0.003"}


def train_args(acts, out, *extra: str) -> list[str]:
    options = [arg for name, value in CONFIG.items() for arg in (f"--{name.replace('_', '-')}", value)]
    return ["train", "--activations", str(acts), "--out", str(out), "--all", *options, *extra]


@pytest.fixture(scope="module")
def acts(tiny_shapes_dir, tmp_path_factory):
    """Two (block, t, branch) keys of 6 images: two SAEs to spread over two actors."""
    config = CaptureConfig(blocks=["down", "mid"], t=[1.0], branches=["cond"], steps=1, batch_size=3)
    prompts = ["a red circle", "a blue square", "a green triangle", "two circles", "a yellow square", "a star"]
    return capture(load_model(str(tiny_shapes_dir), device="cpu"), prompts, tmp_path_factory.mktemp("acts"), config,
                   progress=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """One (block, t, branch) of random activations, without a model."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), n_images=20, side=4, d=8, batch_size=5)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance of 2 CPUs, which the executors join (and so leave running)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_trains_the_saes_local_training_trains_and_keeps_finished_ones(acts, ray_cluster, tmp_path):
    config = SaeJobConfig(latents="32", k=[4], batch_size=64, epochs=1.0, min_tokens=1500, lr=0.003)  # as CONFIG
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a 1-CPU actor: float sums depend on the threads
    try:
        local = train_all(ActivationSet(acts), tmp_path / "local", config, progress=False)
    finally:
        torch.set_num_threads(threads)

    result = CliRunner().invoke(main, train_args(acts, tmp_path / "ray", "--executor", "ray", "--actors", "2"))
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["SAE down t=1.0 cond", "SAE mid t=1.0 cond"]
    assert len({line.split("(cpu worker ")[1] for line in lines}) == 2, lines  # one SAE per actor
    for report in local:
        path = sae_dir(tmp_path / "ray", report.block, report.t, report.branch)
        mine, theirs = load_file(report.path / "sae.safetensors"), load_file(path / "sae.safetensors")
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[name], theirs[name]) for name in mine), report
        metrics = json.loads((path / "metrics.json").read_text())
        assert metrics["fvu"] == pytest.approx(report.metrics["fvu"], abs=1e-5)
        ev = f"{report.metrics['explained_variance']:.3f}"
        assert f"SAE {report.block} t=1.0 cond: explained variance {ev}" in result.stderr
        assert f"| {report.block} | {report.k} | {ev} |" in result.stdout

    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*") if p.is_file()}
    with RayExecutor(ExecutorConfig(executor="ray", actors=2)) as executor:
        again = train_all(ActivationSet(acts), tmp_path / "ray", config, executor=executor, progress=False)
    assert [(r.block, r.path) for r in again] == [(r.block, sae_dir(tmp_path / "ray", r.block, r.t, r.branch))
                                                  for r in local]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*") if p.is_file()} == files  # kept


def test_failures_are_one_line_naming_the_sae(synthetic, ray_cluster, tmp_path, monkeypatch):
    broken = shutil.copytree(synthetic, tmp_path / "acts")
    (broken / "shards" / "mid" / "t1.0" / "cond" / "batch-000001.safetensors").write_bytes(b"x")
    result = CliRunner().invoke(main, train_args(broken, tmp_path / "saes", "--executor", "ray", "--actors", "1"))
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: SAE mid t=1.0 cond: corrupt or missing activation shard")

    dying = SimpleNamespace(start=lambda device: lambda key: os._exit(1))
    with RayExecutor(ExecutorConfig(executor="ray", actors=1)) as executor, \
            pytest.raises(UnavailableError, match=r"^a Ray actor died while running SAE up t=0.5 cond \(.*\); run"):
        list(executor.map(dying, [SaeKey("up", 0.5, "cond")]))

    one = ["train", "--activations", str(synthetic), "--out", str(tmp_path / "saes"), "--block", "mid", "--t", "1"]
    for args, code, message in ((train_args(synthetic, tmp_path / "saes", "--ray-address", "auto"), 1,
                                 "Error: --ray-address needs --executor ray"),
                                (one + ["--executor", "ray"], 2, "--executor ray trains with --all")):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == code and message in result.output, result.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as when Ray is not installed
    result = CliRunner().invoke(main, train_args(synthetic, tmp_path / "saes", "--executor", "ray"))
    assert result.exit_code == 1 and result.output.startswith("Error: --executor ray needs Ray"), result.output
