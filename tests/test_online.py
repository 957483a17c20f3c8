"""Online SAE training (atlas.pipeline.online): the buffer on disk stays under its cap, the held-out images are the
ones a full capture holds, the SAEs are `atlas train`'s kind (encode and report read them), and an interrupted
run resumes to the SAEs of an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from atlas.capture import ActivationSet, ShardStream, capture, split_of
from atlas.capture.config import CaptureConfig
from atlas.cli.main import main
from atlas.errors import BadInputError, ConflictError
from atlas.models import load_model
from atlas.pipeline.config import SaeJobConfig
from atlas.pipeline.online import WORK_DIR, OnlineRound, train_online
from atlas.pipeline.online_config import OnlineConfig
from atlas.pipeline.presets import shapes_captions
from atlas.pipeline.train import sae_dir
from atlas.sae import Sae

CAPTURE = CaptureConfig(blocks=["mid", "up"], t=[1.0, 0.0], branches=["cond"], steps=3, batch_size=4)
SAES = SaeJobConfig(k=4, latents="64", batch_size=64, epochs=3, min_tokens=0, device="cpu")
ONLINE = OnlineConfig(buffer_gb=125e-6)
"""Room for two batches of train positions (of four): about half of the training data of PROMPTS."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared machine: one thread beats two that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tiny_shapes_dir):
    return load_model(str(tiny_shapes_dir), device="cpu")


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    """24 captions, 16 of the train split, 4 of the test and 4 of the dictionary split, mixed in every batch."""
    captions = shapes_captions(300, split=None, seed=0)
    by_split = {s: [c for c in captions if split_of(c) == s] for s in ("train", "test", "dictionary")}
    return [p for i in range(4) for p in [*by_split["train"][4 * i:4 * i + 4], by_split["test"][i],
                                          by_split["dictionary"][i]]]


def files_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def weights(out: Path, key: tuple) -> dict[str, torch.Tensor]:
    return Sae.from_pretrained(sae_dir(out, *key)).state_dict()


def test_the_buffer_stays_under_its_cap_and_the_saes_are_atlas_trains_kind(model, prompts, tmp_path):
    seen: list[tuple[OnlineRound, int]] = []
    lines: list[str] = []
    reports = train_online(model, prompts, tmp_path / "held", tmp_path / "saes", CAPTURE, SAES, ONLINE,
                           progress=False, say=lines.append,
                           on_round=lambda r: seen.append((r, files_bytes(tmp_path / "saes" / WORK_DIR / "buffer"))))
    assert len(lines) == 1 and lines[0].startswith("online: buffer of 2 batches")
    assert "capped at --buffer-gb 0.000125" in lines[0] and "for the full cache of 24 images" in lines[0]
    assert [r.round for r, _ in seen] == list(range(len(seen))) and len(seen) == 6 + 2 - 1
    assert max(r.buffered_batches for r, _ in seen) == 2
    assert 0 < max(measured for _, measured in seen) <= ONLINE.buffer_bytes
    assert all(r.buffer_bytes == measured for r, measured in seen)
    assert not (tmp_path / "saes" / WORK_DIR).exists()

    full = ActivationSet(capture(model, prompts, tmp_path / "full", CAPTURE, progress=False))
    held = ActivationSet(tmp_path / "held")
    train_bytes = sum(ShardStream(full, *key, split="train").n_tokens * ShardStream(full, *key).d_in * 2
                      for key in full.keys())
    assert train_bytes > 1.5 * ONLINE.buffer_bytes  # the cap bounded the buffer, not the data
    assert sorted(r.split for r in held.prompts) == ["dictionary"] * 4 + ["test"] * 4
    for report in reports:
        key = (report.block, report.t, report.branch)
        for split in ("test", "dictionary"):  # the same images, seeds and batches as a full capture: the same rows
            assert torch.equal(held.load(*key, split=split)["x"], full.load(*key, split=split)["x"])
        assert {p.name for p in report.path.iterdir()} == {"config.json", "sae.safetensors", "metrics.json",
                                                            "stats.parquet"}
        metrics = json.loads((report.path / "metrics.json").read_text())
        assert metrics["scored_on"] == "test" and 0 < metrics["fvu"] < 1
        n_train = ShardStream(full, *key, split="train").n_tokens
        assert metrics["n_train_tokens"] == n_train
        assert metrics["train"]["n_tokens"] == metrics["train"]["steps"] * SAES.batch_size
        assert 3 * n_train - SAES.batch_size - 6 < metrics["train"]["n_tokens"] <= 3 * n_train  # 3 epochs

    runner = CliRunner()
    atlas = str(tmp_path / "atlas")
    result = runner.invoke(main, ["encode", "--activations", str(tmp_path / "held"), "--saes", str(tmp_path / "saes"),
                                  "--atlas", atlas])
    assert result.exit_code == 0 and "encoded 4 SAEs" in result.output, result.output
    result = runner.invoke(main, ["report", "--atlas", atlas])
    assert result.exit_code == 0, result.output
    report_md = (tmp_path / "atlas" / "report" / "report.md").read_text()
    assert all(f"{r.metrics['explained_variance']:.3f}" in report_md for r in reports)


def test_an_interrupted_run_resumes_to_the_saes_of_an_uninterrupted_one(model, prompts, tmp_path):
    train_online(model, prompts, tmp_path / "held-a", tmp_path / "a", CAPTURE, SAES, ONLINE, progress=False)
    out, held = tmp_path / "b", tmp_path / "held-b"
    work = out / WORK_DIR

    def crash_at(n: int):
        def on_round(r: OnlineRound) -> None:
            if r.round == n:
                raise RuntimeError("the machine went away")
        return on_round

    often = replace(SAES, checkpoint_minutes=1e-9)  # a checkpoint after every round
    with pytest.raises(RuntimeError):
        train_online(model, prompts, held, out, CAPTURE, often, ONLINE, progress=False, on_round=crash_at(2))
    assert torch.load(work / "checkpoint.pt", weights_only=True)["round"] == 2
    shutil.rmtree(work / "buffer")  # lost with the machine: generated again

    with pytest.raises(ConflictError, match="other prompts or settings"):
        train_online(model, prompts, held, out, CAPTURE, SAES, replace(ONLINE, buffer_gb=1.0), progress=False)

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train_online(model, prompts, held, out, CAPTURE, SAES, ONLINE, progress=False,
                     on_round=lambda r: signal.raise_signal(signal.SIGINT) if r.round == 4 else None)
    assert signal.getsignal(signal.SIGINT) is handler
    assert torch.load(work / "checkpoint.pt", weights_only=True)["round"] == 5
    assert not list(out.rglob("metrics.json"))

    reports = train_online(model, prompts, held, out, CAPTURE, SAES, ONLINE, progress=False)
    for report in reports:
        key = (report.block, report.t, report.branch)
        for name, value in weights(tmp_path / "a", key).items():
            assert torch.equal(weights(out, key)[name], value), (key, name)
        metrics = json.loads((sae_dir(tmp_path / "a", *key) / "metrics.json").read_text())
        assert report.metrics["fvu"] == metrics["fvu"]
    assert not work.exists()
    mtime = (reports[0].path / "sae.safetensors").stat().st_mtime_ns
    again = train_online(model, prompts, held, out, CAPTURE, SAES, ONLINE, progress=False)  # finished: kept
    assert (again[0].path / "sae.safetensors").stat().st_mtime_ns == mtime
    assert [r.metrics for r in again] == [r.metrics for r in reports]


def test_a_buffer_too_small_for_one_batch_is_one_line(model, prompts, tmp_path):
    with pytest.raises(BadInputError, match=r"--buffer-gb 1e-05 holds no batch: .* give --buffer-gb 0.0\d+ or more"):
        train_online(model, prompts, tmp_path / "held", tmp_path / "saes", CAPTURE, SAES, OnlineConfig(buffer_gb=1e-5),
                     progress=False)
    with pytest.raises(BadInputError, match="none of the 16 prompts falls in the kept splits"):
        train_online(model, prompts[:4] * 4, tmp_path / "h2", tmp_path / "s2", CAPTURE, SAES, ONLINE, progress=False)
    for other, saes, message in [(dataclasses.replace(CAPTURE, keys=["mid/1.0"]), SAES, "--keys and --dtype are"),
                                   (dataclasses.replace(CAPTURE, dtype="bf16"), SAES, "--keys and --dtype are"),
                                   (CAPTURE, dataclasses.replace(SAES, k=[4, 8]), "give one --k, not 4,8")]:
        with pytest.raises(BadInputError, match=message):
            train_online(model, prompts, tmp_path / "h3", tmp_path / "s3", other, saes, ONLINE, progress=False)
        assert not (tmp_path / "h3").exists() and not (tmp_path / "s3").exists()


def test_the_command_trains_prints_the_cap_and_refuses_bad_options_in_one_line(tiny_shapes_dir, tmp_path):
    runner = CliRunner()
    base = ["train-online", "--model", str(tiny_shapes_dir), "--activations", str(tmp_path / "held"),
            "--out", str(tmp_path / "saes"), "--blocks", "mid", "--t", "1.0", "--branches", "cond", "--steps", "3",
            "--images-per-batch", "8", "--latents", "32", "--k", "4", "--epochs", "2", "--min-tokens", "0",
            "--device", "cpu"]
    for args, message in [(["--n-images", "40", "--keep", "train"], "'train' is not one of dictionary, test"),
                          (["--n-images", "40", "--buffer-gb", "0"], "--buffer-gb must be a positive number"),
                          (["--n-images", "40", "--keep-images", "-1"], "--keep-images must be 0 (all) or more"),
                          ([], "give --prompts FILE or --n-images N")]:
        result = runner.invoke(main, [*base, *args])
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output, result.output
    result = runner.invoke(main, [*base, "--n-images", "40", "--buffer-gb", "0.001"])
    assert result.exit_code == 0, result.output
    assert "online: buffer of" in result.output and "for the full cache of 40 images" in result.output
    assert "| mid | " in result.output and (tmp_path / "saes" / "mid" / "t1.0" / "cond" / "metrics.json").exists()
    assert "train-online" in runner.invoke(main, ["--help"]).output
