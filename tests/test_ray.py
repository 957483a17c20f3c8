"""The Ray executor: on a local Ray instance with 2 CPU actors, capture and encode write exactly what the local
executor writes for the same prompts and seeds (shards tensor for tensor, images byte for byte, tables row for row)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from atlas.capture import ActivationSet, capture
from atlas.capture.config import CaptureConfig
from atlas.cli.main import main
from atlas.errors import BadInputError, NotFoundError, UnavailableError
from atlas.location import Location
from atlas.models import load_model
from atlas.pipeline.config import ExecutorConfig, SaeJobConfig
from atlas.pipeline.encode import encode_atlas
from atlas.pipeline.executor import RayExecutor, open_executor
from atlas.pipeline.train import train_all
from atlas.shapes.world import captions
from atlas.store import Atlas, open_atlas

TABLES = {  # every catalog table encode fills, with an order that makes the rows comparable
    "models": "SELECT * EXCLUDE (created_at) FROM models ORDER BY id",
    "prompts": "SELECT * FROM prompts ORDER BY id",
    "images": "SELECT * FROM images ORDER BY id",
    "saes": "SELECT * EXCLUDE (created_at) FROM saes ORDER BY id",
    "concepts": "SELECT * FROM concepts ORDER BY sae_id, latent",
    "codes": "SELECT * FROM codes ORDER BY sae_id, image_id, row, col, latent",
    "codes_by_image": "SELECT * FROM codes_by_image ORDER BY sae_id, image_id, row, col, latent",
    "stages": "SELECT name, info FROM stages ORDER BY name",
}


def _build(root, model, prompts, config, saes, executor=None) -> None:
    capture(model, prompts, root / "activations", config, progress=False, executor=executor)
    acts = ActivationSet(root / "activations")
    if not (saes / "mid").exists():
        train_all(acts, saes, SaeJobConfig(latents="64", k=4, batch_size=256, epochs=1, min_tokens=2000),
                  progress=False)
    with Atlas.create(root) as atlas, atlas.writer() as writer:
        encode_atlas(writer, acts, saes, progress=False, executor=executor)


@pytest.mark.slow
def test_ray_executor_writes_what_the_local_executor_writes(tmp_path):
    model = load_model("shapes", device="cpu")
    prompts = captions(6, split=None, seed=0)
    config = CaptureConfig(blocks=["down", "mid"], t=[1.0, 0.0], branches=["cond"], steps=2, batch_size=2)
    saes = tmp_path / "saes"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a 1-CPU Ray actor: float sums (and so fp16 roundings) depend on the threads
    try:
        _build(tmp_path / "local", model, prompts, config, saes)
        with open_executor(ExecutorConfig(executor="ray", actors=2)) as executor:
            _build(tmp_path / "ray", model, prompts, config, saes, executor)
            import ray

            assert ray.cluster_resources()["CPU"] == 2 and ray.available_resources().get("CPU", 0) == 0
            with pytest.raises(BadInputError, match="room for 2 actors"):
                list(RayExecutor(ExecutorConfig(executor="ray", actors=3)).map(None, [0]))
            broken = tmp_path / "broken"
            capture(model, prompts[:2], broken / "activations", config, progress=False, executor=executor)
            (broken / "activations" / "shards" / "mid" / "t1.0" / "cond" / "batch-000000.safetensors").write_bytes(b"x")
            with pytest.raises(UnavailableError, match="corrupt or missing activation shard"), \
                    Atlas.create(broken) as atlas, atlas.writer() as writer:
                encode_atlas(writer, ActivationSet(broken / "activations"), saes, progress=False, executor=executor)
        assert not ray.is_initialized()
    finally:
        torch.set_num_threads(threads)

    local, remote = ActivationSet(tmp_path / "local" / "activations"), ActivationSet(tmp_path / "ray" / "activations")
    assert local.done == remote.done == [0, 1, 2]
    assert local.manifest == remote.manifest and local.prompts == remote.prompts
    for b in local.done:
        assert local.marker(b) == remote.marker(b)
        for key in local.keys():
            mine, theirs = local.shard(*key, b), remote.shard(*key, b)
            assert mine.keys() == theirs.keys() == {"x", "image_id", "row", "col"}
            assert all(torch.equal(mine[name], theirs[name]) for name in mine), (key, b)
    for image in (local.path / "images").glob("*.png"):
        assert image.read_bytes() == (remote.path / "images" / image.name).read_bytes()
    with open_atlas(tmp_path / "local") as a, open_atlas(tmp_path / "ray") as b:
        for name, query in TABLES.items():
            rows = a.sql(query, max_rows=1_000_000).rows
            assert rows and rows == b.sql(query, max_rows=1_000_000).rows, name
        assert a.sql("SELECT count(DISTINCT sae_id), count(DISTINCT image_id) FROM codes").rows == [(4, 6)]


@pytest.mark.parametrize("args, message", [
    (["--executor", "spark"], "unknown executor 'spark'; use local or ray"),
    (["--ray-address", "auto"], "--ray-address needs --executor ray"),
    (["--executor", "ray", "--actors", "-1"], "--actors must be >= 0"),
])
def test_bad_executor_options_are_one_line_errors(tmp_path, args, message):
    for command in (["capture", "--n-prompts", "2", "--out", str(tmp_path / "acts")],
                    ["encode", "--activations", str(tmp_path / "acts"), "--saes", str(tmp_path),
                     "--atlas", str(tmp_path / "atlas")],
                    ["build", "--atlas", str(tmp_path / "atlas")]):
        result = CliRunner().invoke(main, command + args)
        assert result.exit_code == 1 and f"Error: {message}" in result.output, result.output
    assert not (tmp_path / "acts").exists() and not (tmp_path / "atlas").exists()


def test_location_writes_reads_and_lists_on_a_non_local_filesystem(tmp_path):
    """A non-local pyarrow filesystem (the in-memory mock://): the same files, written under a temporary name."""
    remote = Location("mock:///bucket/acts")
    assert remote.local is None and remote.name("done", "batch-000000.json") == "mock:///bucket/acts/done/batch-000000.json"
    assert remote.files("done", ".json") == [] and not remote.exists("manifest.json")
    remote.write("done/batch-000001.json", b"{}")
    remote.write("done/batch-000000.json", b"[]")
    remote.write("shards/mid/t1.0/cond/batch-000000.safetensors", b"x")
    assert remote.files("done", ".json") == ["batch-000000.json", "batch-000001.json"]
    assert remote.read("done/batch-000000.json") == b"[]" and remote.exists("done/batch-000001.json")
    with pytest.raises(NotFoundError, match="mock:///bucket/acts/prompts.jsonl"):
        remote.read("prompts.jsonl")
    local = Location(f"file://{tmp_path}")
    assert local.local == tmp_path
    local.write("done/batch-000000.json", b"{}")
    assert [p.name for p in (tmp_path / "done").iterdir()] == ["batch-000000.json"]  # renamed, no .tmp left
