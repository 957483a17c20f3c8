"""Streaming SAE training from shards on disk: the bounded shuffle buffer, checkpoint and resume, several SAEs in
one pass, and `atlas train`'s use of them."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from atlas.capture import ActivationSet, ShardStream
from atlas.capture.synthetic import write_synthetic
from atlas.errors import BadInputError, ConflictError, UnavailableError
from atlas.pipeline.train import CHECKPOINT_DIR
from atlas.sae import SaeConfig, SaeTrainConfig, train_sae, train_saes
from atlas.sae.train import CHECKPOINT_NAME

KEY = ("mid", 1.0, "cond")
SAE = SaeConfig(d_in=8, n_latents=24, k=3, k_aux=8, dead_tokens=300)
TRAIN = SaeTrainConfig(lr=3e-3, batch_size=64, epochs=3, log_every=5)


@pytest.fixture(scope="module")
def acts_dir(tmp_path_factory):
    """12 shards of 5 images x 16 positions x 8 wide; treat as read-only."""
    return write_synthetic(tmp_path_factory.mktemp("acts"), n_images=60, side=4, d=8, batch_size=5)


def stream(path, **kw) -> ShardStream:
    return ShardStream(ActivationSet(path), *KEY, **{"split": "train", "buffer_tokens": 200, "chunk_tokens": 48, **kw})


def rows(x: torch.Tensor) -> Counter:
    return Counter(row.numpy().tobytes() for row in x.to(torch.float16))


def take(s: ShardStream, n: int, start: int = 0) -> torch.Tensor:
    """The first n tokens of the stream from token `start`."""
    out, have = [], 0
    for chunk in s.chunks(start):
        out.append(chunk)
        have += chunk.shape[0]
        if have >= n:
            break
    return torch.cat(out)[:n]


def test_each_pass_gives_every_position_of_the_split_once_through_a_bounded_buffer(acts_dir):
    acts = ActivationSet(acts_dir)
    s = stream(acts_dir)
    train = acts.load(*KEY, split="train")["x"]
    assert s.n_tokens == train.shape[0] < acts.load(*KEY)["x"].shape[0]  # the split filter left some out
    assert max(s.sizes.values()) <= 80 and len(s.windows(0)) >= 4
    seq = take(s, 2 * s.n_tokens)
    for one_pass in seq.split(s.n_tokens):
        assert rows(one_pass) == rows(train)
    assert 0 < s.peak_buffered <= 200 and s._buffer.shape[0] <= 200
    test = take(stream(acts_dir, split="test"), 10)
    assert not set(rows(test)) & set(rows(train))


def test_order_is_a_function_of_the_seed_and_resumes_at_any_token(acts_dir):
    s = stream(acts_dir, seed=4)
    seq = take(s, 3 * s.n_tokens)
    assert torch.equal(seq, take(stream(acts_dir, seed=4, chunk_tokens=7), 3 * s.n_tokens))
    assert not torch.equal(seq[: s.n_tokens], seq[s.n_tokens : 2 * s.n_tokens])  # each pass reshuffled
    assert not torch.equal(seq, take(stream(acts_dir, seed=5), 3 * s.n_tokens))
    for start in (1, 130, s.n_tokens + 77):
        assert torch.equal(take(s, 200, start), seq[start : start + 200])


def test_a_shard_larger_than_the_buffer_is_refused(acts_dir):
    with pytest.raises(BadInputError, match="--buffer-tokens 80 or more"):
        stream(acts_dir, split=None, buffer_tokens=79)


def test_several_saes_in_one_pass_end_as_each_trained_alone(acts_dir):
    jobs = [(SAE, TRAIN), (dataclasses.replace(SAE, k=5), dataclasses.replace(TRAIN, lr=1e-3, seed=7))]
    together = train_saes(stream(acts_dir), jobs, progress=False)
    for (sae_cfg, train_cfg), result in zip(jobs, together):
        alone = train_sae(stream(acts_dir), sae_cfg, train_cfg, progress=False)
        for name, value in alone.sae.state_dict().items():
            assert torch.equal(result.sae.state_dict()[name], value), name
        assert [h["fvu"] for h in result.history] == [h["fvu"] for h in alone.history]
    assert not torch.equal(together[0].sae.W_dec, together[1].sae.W_dec)
    with pytest.raises(BadInputError, match="same batch_size"):
        train_saes(stream(acts_dir), [(SAE, TRAIN), (SAE, dataclasses.replace(TRAIN, batch_size=32))], progress=False)


class Interrupting:
    """The stream, with `action` run when the chunk at index `at` is asked for (a TokenStream like it)."""

    def __init__(self, inner: ShardStream, at: int, action) -> None:
        self.inner, self.at, self.action = inner, at, action
        self.n_tokens = inner.n_tokens

    def chunks(self, start: int = 0):
        for i, chunk in enumerate(self.inner.chunks(start)):
            if i == self.at:
                self.action()
            yield chunk

    def describe(self) -> dict:
        return self.inner.describe()


def assert_same_sae(a, b) -> None:
    for name, value in a.sae.state_dict().items():
        assert torch.equal(b.sae.state_dict()[name], value), name
    assert a.metrics["steps"] == b.metrics["steps"] and a.metrics["n_tokens"] == b.metrics["n_tokens"]
    assert [h["fvu"] for h in a.history] == [h["fvu"] for h in b.history]


def test_ctrl_c_writes_a_checkpoint_and_a_rerun_ends_as_an_uninterrupted_run(acts_dir, tmp_path):
    whole = train_sae(stream(acts_dir), SAE, TRAIN, progress=False)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train_sae(Interrupting(stream(acts_dir), 20, lambda: signal.raise_signal(signal.SIGINT)), SAE, TRAIN,
                  progress=False, checkpoint=tmp_path)
    assert signal.getsignal(signal.SIGINT) is handler
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert 0 < saved["step"] < whole.metrics["steps"] and saved["tokens"] == saved["step"] * TRAIN.batch_size
    resumed = train_sae(stream(acts_dir), SAE, TRAIN, progress=False, checkpoint=tmp_path)
    assert_same_sae(whole, resumed)
    again = train_sae(stream(acts_dir), SAE, TRAIN, progress=False, checkpoint=tmp_path)  # finished: nothing to do
    assert_same_sae(whole, again)
    with pytest.raises(ConflictError, match="other data or settings"):
        train_sae(stream(acts_dir), dataclasses.replace(SAE, k=4), TRAIN, progress=False, checkpoint=tmp_path)
    with pytest.raises(ConflictError, match="other data or settings"):
        train_sae(stream(acts_dir, seed=1), SAE, TRAIN, progress=False, checkpoint=tmp_path)


def test_checkpoints_every_few_minutes_and_several_saes_resume_together(acts_dir, tmp_path):
    jobs = [(SAE, TRAIN), (dataclasses.replace(SAE, k=5), dataclasses.replace(TRAIN, seed=3))]
    whole = train_saes(stream(acts_dir), jobs, progress=False)
    path = tmp_path / CHECKPOINT_NAME

    def crash() -> None:
        assert torch.load(path, weights_only=True)["step"] > 0  # written by the clock, not by the failure
        raise RuntimeError("the machine went away")

    often = [(s, dataclasses.replace(t, checkpoint_minutes=1e-9)) for s, t in jobs]
    with pytest.raises(RuntimeError):
        train_saes(Interrupting(stream(acts_dir), 30, crash), often, checkpoint=tmp_path, progress=False)
    for a, b in zip(whole, train_saes(stream(acts_dir), jobs, checkpoint=tmp_path, progress=False)):
        assert_same_sae(a, b)


def test_a_corrupt_shard_is_one_line_and_the_run_resumes_once_it_is_redone(acts_dir, tmp_path):
    local = shutil.copytree(acts_dir, tmp_path / "acts")
    whole = train_sae(stream(local), SAE, TRAIN, progress=False)
    s = stream(local)
    shard = local / "shards" / "mid" / "t1.0" / "cond" / "batch-000003.safetensors"
    good = shard.read_bytes()
    shard.write_bytes(b"garbage")
    with pytest.raises(UnavailableError) as err:
        train_sae(s, SAE, TRAIN, progress=False, checkpoint=tmp_path / "ckpt")
    assert "corrupt or missing activation shard" in str(err.value) and "\n" not in str(err.value)
    assert "batch-000003" in str(err.value)
    shard.write_bytes(good)  # what re-running the capture for that batch does
    assert_same_sae(whole, train_sae(stream(local), SAE, TRAIN, progress=False, checkpoint=tmp_path / "ckpt"))


def test_a_plain_iterable_cannot_resume(acts_dir, tmp_path):
    with pytest.raises(BadInputError, match="resumable run needs"):
        train_sae(iter([torch.randn(100, 8)]), SAE, TRAIN, progress=False, checkpoint=tmp_path)


def test_train_one_streams_checkpoints_and_cleans_up(acts_dir, tmp_path):
    from atlas.pipeline.config import SaeJobConfig
    from atlas.pipeline.train import train_one

    acts = ActivationSet(acts_dir)
    config = SaeJobConfig(latents="3x", k=3, batch_size=64, epochs=2, min_tokens=0, buffer_tokens=200)
    [report] = train_one(acts, *KEY, tmp_path, config, progress=False)
    assert not (report.path / CHECKPOINT_DIR).exists()
    metrics = json.loads((report.path / "metrics.json").read_text())
    n_train = ShardStream(acts, *KEY, split="train").n_tokens
    assert metrics["n_train_tokens"] == n_train and metrics["train"]["n_tokens"] == 2 * n_train // 64 * 64
    assert metrics["scored_on"] == "test" and metrics["n_tokens"] == acts.load(*KEY, split="test")["x"].shape[0]
    [again] = train_one(acts, *KEY, tmp_path, dataclasses.replace(config, retrain=True), progress=False)
    assert again.metrics["explained_variance"] == pytest.approx(metrics["explained_variance"])
    assert list(itertools.chain(report.path.glob("*.tmp"), report.path.glob(CHECKPOINT_DIR))) == []


def test_train_one_trains_every_k_of_a_key_in_one_pass(acts_dir, tmp_path, monkeypatch):
    """`--k 3,5`: one pass over the shards trains both SAEs, the first k's as the primary and the other as the
    variant k5 beside it, each as it would train alone; a rerun keeps them, and another order of k is refused."""
    import atlas.pipeline.train as train
    from atlas.pipeline.config import SaeJobConfig
    from atlas.sae import Sae

    passes = []

    class Counted(ShardStream):
        def chunks(self, start: int = 0):
            passes.append(start)
            return super().chunks(start)

    monkeypatch.setattr(train, "ShardStream", Counted)
    acts = ActivationSet(acts_dir)
    config = SaeJobConfig(latents="3x", k=[3, 5], batch_size=64, epochs=2, min_tokens=0, buffer_tokens=200)
    primary, k5 = train.train_one(acts, *KEY, tmp_path, config, progress=False)
    assert len(passes) == 1
    assert (primary.variant, primary.k, primary.path) == ("", 3, tmp_path / "mid" / "t1.0" / "cond")
    assert (k5.variant, k5.k, k5.path) == ("k5", 5, tmp_path / "mid" / "t1.0" / "cond@k5")
    assert [Sae.from_pretrained(r.path).cfg.k for r in (primary, k5)] == [3, 5]
    assert train.trained_variants(tmp_path, *KEY) == ["", "k5"] and not (primary.path / CHECKPOINT_DIR).exists()
    alone = train_sae(stream(acts_dir, seed=config.seed, buffer_tokens=config.buffer_tokens),
                      SaeConfig(d_in=8, n_latents=24, k=5, k_aux=12, dead_tokens=config.dead_tokens),
                      SaeTrainConfig(lr=config.lr, batch_size=64, n_tokens=2 * k5.metrics["n_train_tokens"]),
                      progress=False)
    assert torch.equal(Sae.from_pretrained(k5.path).W_dec, alone.sae.W_dec)
    assert "| mid | 3 | " in train.ev_table([primary, k5]) and "| mid | 5 | " in train.ev_table([primary, k5])

    mtime = (k5.path / "sae.safetensors").stat().st_mtime_ns
    assert [r.metrics for r in train.train_one(acts, *KEY, tmp_path, config, progress=False)] == [primary.metrics,
                                                                                                 k5.metrics]
    assert (k5.path / "sae.safetensors").stat().st_mtime_ns == mtime and len(passes) == 1
    with pytest.raises(BadInputError, match=r"holds an SAE with k=3, but --k 5,3 gives it k=5 .* reorder --k"):
        train.train_one(acts, *KEY, tmp_path, dataclasses.replace(config, k=[5, 3]), progress=False)
    with pytest.raises(BadInputError, match="distinct positive numbers"):
        SaeJobConfig(k=[3, 3])


SIGTERM_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_sae_stream import SAE, TRAIN, Interrupting, stream
from atlas.sae import train_sae
train_sae(Interrupting(stream({acts!r}), 20, lambda: os.kill(os.getpid(), signal.SIGTERM)), SAE, TRAIN,
          progress=False, checkpoint={ckpt!r})
print("not stopped")
"""


def test_sigterm_checkpoints_then_ends_the_process_as_sigterm_does(acts_dir, tmp_path):
    code = SIGTERM_RUN.format(tests=str(Path(__file__).parent), acts=str(acts_dir), ckpt=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGTERM and "not stopped" not in done.stdout, done.stderr
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] > 0
    whole = train_sae(stream(acts_dir), SAE, TRAIN, progress=False)
    assert_same_sae(whole, train_sae(stream(acts_dir), SAE, TRAIN, progress=False, checkpoint=tmp_path))
