"""Shared fixtures: tiny randomly initialised models saved in diffusers layout, loaded like real ones."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
"""Set when `make test` runs the suite in pytest-xdist workers (one per core): each then computes on one thread."""
torch.set_num_threads(1 if WORKER else max(1, min(2, torch.get_num_threads())))

INTEGRATION_FIXTURES = {"shapes_atlas", "two_branch_atlas", "two_k_atlas", "evolution_atlas"}
"""Fixtures that build a real atlas (about a minute): a test using one, directly or through another fixture, is
marked `integration` and left out of `make test-fast`."""

RAY_FILES = {"test_capture_scale.py", "test_ray.py", "test_train_ray.py"}
"""Test files that each start a local Ray instance: two at once on two cores starve each other."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks `integration`."""
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module", autouse=True)
def one_ray_at_a_time(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Under xdist (`make test` runs each file in one worker: `--dist loadfile`), the Ray files hold one lock while
    they run, so no two Ray instances share the cores."""
    if WORKER is None or request.path.name not in RAY_FILES:
        yield
        return
    with FileLock(tmp_path_factory.getbasetemp().parent / "ray.lock"):
        yield


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """`name`/atlas built by `build` once per test run: the xdist workers share it (the first builds it while the
    others wait on a lock), so it must be treated as read-only."""
    if WORKER is None:
        path = tmp_path_factory.mktemp(name) / "atlas"
        build(path)
        return path
    root = tmp_path_factory.getbasetemp().parent / name
    root.mkdir(exist_ok=True)
    with FileLock(root / "lock"):
        if not (root / "built").exists():
            build(root / "atlas")
            (root / "built").touch()
    return root / "atlas"


def built_by_cli(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Path:
    """`name`/atlas built once per test run (`built_once`) by `atlas build --atlas <path> ARGS`."""
    from click.testing import CliRunner

    from atlas.cli.main import main

    def build(path: Path) -> None:
        result = CliRunner().invoke(main, ["build", "--atlas", str(path), *args])
        assert result.exit_code == 0, result.output

    return built_once(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def tiny_shapes_dir(tmp_path_factory):
    """A shapes-architecture model with random weights, saved exactly as `atlas shapes export` saves one."""
    from atlas.shapes.model import ShapesModelConfig, new_shapes_model

    path = tmp_path_factory.mktemp("tiny-shapes")
    model = new_shapes_model(ShapesModelConfig(channels=(32, 32, 64), text_width=32, text_layers=1, attention_heads=2))
    model.save_pretrained(path, half=True)
    return path


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny Stable-Diffusion-v1.4-shaped pipeline (same block types, hook names, layout on disk)."""
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=16)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2, "a</w>": 3, "d": 4, "o": 5, "g</w>": 6, "c": 7,
             "a": 8, "t</w>": 9}
    path = tmp_path_factory.mktemp("tiny-sd14")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                max_position_embeddings=16))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    model_dir = path / "model"
    pipe.save_pretrained(model_dir)
    assert DDIMScheduler.from_pretrained(model_dir / "scheduler").config.steps_offset == 1
    return model_dir


@pytest.fixture(scope="session")
def shapes_atlas(tmp_path_factory):
    """A small real atlas of the shipped shapes model (48 images, 9 cond SAEs, codes, objects, concept labels),
    built once per test session by the same `build_atlas` that `atlas build` runs. Treat it as read-only."""
    from atlas.pipeline.build import build_atlas
    from atlas.pipeline.config import BuildConfig

    return built_once(tmp_path_factory, "shapes-atlas", lambda path: build_atlas(
        BuildConfig(atlas=str(path), n_images=48, sae_tokens=100_000), progress=False, say=lambda line: None))


@pytest.fixture(scope="session")
def two_branch_atlas(tmp_path_factory):
    """A tiny shapes atlas with an SAE per CFG branch (cond and uncond) of the mid block at t = 1.0, built by the
    `atlas build` command. Treat it as read-only."""
    return built_by_cli(tmp_path_factory, "two-branch-atlas", "--n-images", "32",
                        "--blocks", "mid", "--t", "1.0", "--branches", "cond,uncond", "--sae-tokens", "5000")


@pytest.fixture(scope="session")
def two_k_atlas(tmp_path_factory):
    """A tiny shapes atlas with two SAEs of the mid block at t = 1.0 (cond): the primary at k = 2 and the variant
    "k4", built by the `atlas build --k 2,4` command. Treat it as read-only."""
    return built_by_cli(tmp_path_factory, "two-k-atlas", "--n-images", "32",
                        "--blocks", "mid", "--t", "1.0", "--branches", "cond", "--k", "2,4", "--sae-tokens", "5000")


@pytest.fixture(scope="session")
def evolution_atlas(tmp_path_factory):
    """A tiny shapes atlas with SAEs of the up block at three timesteps (1.0, 0.5, 0.0; cond), so trajectories and
    lineage have neighbours, built by the `atlas build` command (its evolve stage included). Treat it as
    read-only."""
    return built_by_cli(tmp_path_factory, "evolution-atlas", "--n-images", "32",
                        "--blocks", "up", "--t", "1.0,0.5,0.0", "--branches", "cond", "--sae-tokens", "5000")


@pytest.fixture(scope="session")
def tiny_clip_config() -> dict:
    """An open_clip model config small enough for tests (32 px images, 16-dim embeddings)."""
    return {"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_config):
    """A ClipScorer over a tiny open_clip model built from the config alone: random weights, nothing loaded, so no
    similarity means anything. Skips where open_clip is not installed."""
    open_clip = pytest.importorskip("open_clip")
    from atlas.edit.scores import ClipScorer

    torch.manual_seed(0)
    return ClipScorer(open_clip.CLIP(**tiny_clip_config), open_clip.image_transform(32, is_train=False),
                      open_clip.SimpleTokenizer(context_length=16))
