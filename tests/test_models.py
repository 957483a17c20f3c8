"""Model loading: the sd14 code path on a tiny SD-v1.4-shaped model, the shapes layout, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from atlas.errors import BadInputError, UnavailableError
from atlas.models import (
    Hooks,
    ModelNotFoundError,
    check_model,
    generate,
    load_model,
    pick_device,
    pick_dtype,
    t_to_step,
)


def test_sd14_loads_from_path_like_a_real_checkpoint(tiny_sd_dir, monkeypatch):
    monkeypatch.setenv("ATLAS_SD14_PATH", str(tiny_sd_dir))
    model = load_model("sd14", device="cpu")
    assert model.vae is not None
    assert model.spec.name == "sd14"
    assert model.hook_module_name("down") == "down_blocks.2.attentions.1"
    assert model.hook_module_name("mid") == "mid_block.attentions.0"
    assert model.hook_module_name("up") == "up_blocks.1.attentions.0"
    assert model.latent_shape == (4, 8, 8)
    assert len(model.tokenize(["a dog"])[0]) == 16
    images = generate(model, ["a dog"], [0], steps=2, guidance=7.5)
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.uint8


def test_sd14_timesteps_match_the_paper(tiny_sd_dir):
    """With SD v1.4's scheduler (steps_offset 1), t = 1.0 / 0.5 / 0.0 are timesteps 981 / 481 / 1."""
    model = load_model(str(tiny_sd_dir), device="cpu")
    model.scheduler.set_timesteps(50)
    steps = [t_to_step(t, 50) for t in (1.0, 0.5, 0.0)]
    assert steps == [0, 25, 49]
    assert [int(model.scheduler.timesteps[i]) for i in steps] == [981, 481, 1]


def test_resolution_is_the_denoisers_latent_size_times_the_vae_scale(tiny_sd_dir, tmp_path):
    """A VAE's own sample_size is the size it was trained on (SD v2's is 768 for 512 px models): never the model's."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, model_dir)
    for part, size in (("unet", 4), ("vae", 64)):
        config = json.loads((model_dir / part / "config.json").read_text())
        (model_dir / part / "config.json").write_text(json.dumps({**config, "sample_size": size}))
    model = load_model(str(model_dir), device="cpu")
    assert len(model.vae.config.block_out_channels) == 2  # the VAE halves the image once: 2 pixels per latent cell
    assert model.spec.resolution == 8 and model.latent_shape == (4, 4, 4)
    assert generate(model, ["a dog"], [0], steps=2, guidance=7.5).shape == (1, 8, 8, 3)


def test_sd14_missing_checkpoint_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ATLAS_SD14_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download CompVis/stable-diffusion-v1-4"):
        load_model("sd14")


def test_unknown_model_and_incomplete_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelNotFoundError, match="missing text_encoder, tokenizer, scheduler"):
        load_model(str(tmp_path))


def test_check_model_reads_files_only_and_names_what_is_missing(tiny_sd_dir, tmp_path, monkeypatch):
    path, spec = check_model(str(tiny_sd_dir))
    assert path == tiny_sd_dir and spec.hook_points["mid"] == "mid_block.attentions.0"
    model_dir = tmp_path / "sd"
    shutil.copytree(tiny_sd_dir, model_dir)
    next((model_dir / "vae").glob("*.safetensors")).unlink()
    (model_dir / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelNotFoundError, match=r"lacks vae/ weights \(.safetensors or .bin\), "
                                                 r"scheduler/scheduler_config.json: copy the complete diffusers"):
        check_model(str(model_dir))
    shutil.rmtree(model_dir / "vae")  # sd14 is a latent model: its VAE may not be missing
    monkeypatch.setenv("ATLAS_SD14_PATH", str(model_dir))
    with pytest.raises(ModelNotFoundError, match="^sd14 at .* lacks vae/config.json, vae/ weights"):
        check_model("sd14")


def test_unknown_block_lists_the_valid_ones(tiny_shapes_dir):
    model = load_model(str(tiny_shapes_dir), device="cpu")
    with pytest.raises(BadInputError, match="use one of down, mid, up"):
        model.hook_module_name("middle")


def test_shapes_grids_are_fine_enough_for_spatial_experiments(tiny_shapes_dir):
    model = load_model(str(tiny_shapes_dir), device="cpu")
    seen = {}
    hooks = Hooks()
    for block in ("down", "mid", "up"):
        hooks.on(block, lambda b, step, delta: seen.setdefault(b, tuple(delta.shape)) and None, steps=[0])
    generate(model, ["a red circle"], [0], steps=2, hooks=hooks)
    assert seen["down"][2:] == (8, 8) and seen["up"][2:] == (8, 8) and seen["mid"][2:] == (4, 4)
    assert seen["mid"][0] == 2  # the CFG batch [uncond, cond]


def test_device_and_dtype_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert [pick_dtype(torch.device("cuda"), None, backbone) for backbone in ("unet", "dit", "sd3", "flux")] == [
        torch.float16] * 3 + [torch.bfloat16]  # FLUX overflows fp16
    assert pick_dtype(torch.device("cuda"), "fp16", "flux") == torch.float16  # asked for: given
    assert pick_dtype(torch.device("cpu"), None, "flux") == torch.float32
    with pytest.raises(BadInputError, match="unknown dtype"):
        pick_dtype(torch.device("cpu"), "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(UnavailableError, match="no CUDA GPU"):
            pick_device("cuda")


def test_a_random_sd14_architecture_directory_loads_hooks_and_generates(tmp_path):
    """write_random_sd's tiny size: the SD v1.4 layout and block types, loaded and sampled by the real code path."""
    from atlas.models.random import SIZES, write_random_sd

    path = write_random_sd(tmp_path / "sd", "tiny")
    model = load_model(str(path), device="cpu")
    tiny = SIZES["tiny"]
    assert model.latent_shape == (4, tiny.sample_size, tiny.sample_size)
    assert model.spec.resolution == tiny.sample_size * 8
    assert [model.hook_module_name(b) for b in ("down", "mid", "up")] == \
        ["down_blocks.2.attentions.1", "mid_block.attentions.0", "up_blocks.1.attentions.0"]
    ids = model.tokenize(["a dog!"])[0].tolist()
    assert ids[:7] == [512, 353, 100, 111, 359, 289, 513] and len(ids) == tiny.max_tokens  # one token per byte
    images = generate(model, ["a dog"], [0], steps=2, guidance=7.5)
    assert images.shape == (1, 64, 64, 3)
    with pytest.raises(BadInputError, match="unknown random SD size"):
        write_random_sd(tmp_path / "other", "huge")


def test_the_shipped_dit_is_a_model_name_and_its_variable_moves_it(tmp_path, monkeypatch):
    """`shapes-dit` names data/shapes-dit (a PixArt transformer), ATLAS_SHAPES_DIT_MODEL another directory; a
    directory without the model says how to make one."""
    path, _ = check_model("shapes-dit")
    assert path.name == "shapes-dit" and (path / "transformer").is_dir()
    monkeypatch.setenv("ATLAS_SHAPES_DIT_MODEL", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="shapes-dit model not found in .*atlas shapes train --backbone dit"):
        load_model("shapes-dit")


def test_model_and_embedder_loads_wait_for_each_other(tiny_shapes_dir):
    """transformers resolves classes lazily and two threads resolving at once can fail; every load holds one lock
    (atlas.models.loading.LOADING), so a load started while another holds it waits for it."""
    import threading

    from atlas.models import load_model
    from atlas.models.loading import LOADING
    from atlas.models.text import TextEmbedder

    done: list[str] = []
    loads = [threading.Thread(target=lambda: (load_model(str(tiny_shapes_dir), device="cpu"), done.append("model"))),
             threading.Thread(target=lambda: (TextEmbedder()._parts, done.append("embedder")))]
    with LOADING:
        for thread in loads:
            thread.start()
        for thread in loads:
            thread.join(timeout=1.0)
        assert done == []  # both wait for the lock this thread holds
    for thread in loads:
        thread.join(timeout=120)
    assert sorted(done) == ["embedder", "model"]
