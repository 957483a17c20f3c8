"""`atlas shapes train` resumes where it stopped; `export` writes a loadable diffusers-layout model."""

from __future__ import annotations

import json

import numpy as np
import torch

from atlas.errors import BadInputError, ConflictError
from atlas.models import generate, load_model
from atlas.shapes.config import ShapesTrainConfig
from atlas.shapes.model import ShapesModelConfig
from atlas.shapes.train import export, train

TINY = ShapesModelConfig(channels=(32, 32, 64), text_width=32, text_layers=1, attention_heads=2)


def test_training_resumes_and_exports(tmp_path):
    run = tmp_path / "run"
    config = ShapesTrainConfig(run_dir=str(run), max_steps=3, batch_size=4, warmup_steps=1, threads=1)
    ckpt = train(config, TINY, progress=False)
    first = torch.load(ckpt, weights_only=False)
    assert first["state"]["step"] == 3
    config.max_steps = 5
    train(config, TINY, progress=False)
    second = torch.load(ckpt, weights_only=False)
    assert second["state"]["step"] == 5  # continued from 3, did not restart
    assert not torch.equal(first["unet"]["conv_in.weight"], second["unet"]["conv_in.weight"])
    assert json.loads((run / "train_config.json").read_text())["max_steps"] == 5

    out = tmp_path / "model"
    facts = export(ckpt, out, guidance=4.5, steps=30)
    assert facts["steps"] == 5
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "tokenizer/tokenizer.json", "scheduler/scheduler_config.json", "atlas_model.json"):
        assert (out / part).exists(), part
    model = load_model(str(out), device="cpu")
    assert model.spec.hook_points["mid"] == "mid_block.attentions.0"
    assert (model.spec.default_guidance, model.spec.default_steps) == (4.5, 30)  # chosen at export, shipped
    images = generate(model, ["a red circle"], [0], steps=2)
    assert images.shape == (1, 32, 32, 3)
    ema = torch.load(ckpt, weights_only=False)["ema"][0]
    np.testing.assert_allclose(model.unet.conv_in.weight.numpy(), ema.half().float().numpy())

    # A later session without the checkpoint continues from the exported weights and step count.
    resumed = ShapesTrainConfig(run_dir=str(tmp_path / "run2"), max_steps=6, batch_size=4, threads=1,
                                init_from=str(out))
    state = torch.load(train(resumed, TINY, progress=False), weights_only=False)["state"]
    assert state["step"] == 6 and len(state["losses"]) == len(json.loads((out / "training.json").read_text())["losses"])
    resumed.max_steps, resumed.init_from = 7, ""
    train(resumed, TINY, progress=False)  # resumed again: train_config.json still names the starting point
    assert json.loads((tmp_path / "run2" / "train_config.json").read_text())["init_from"] == str(out)
    export(tmp_path / "run2" / "checkpoint.pt", tmp_path / "model2")  # none given: the starting export's
    spec = load_model(str(tmp_path / "model2"), device="cpu").spec
    assert (spec.default_guidance, spec.default_steps) == (4.5, 30)
    export(ckpt, tmp_path / "model3")  # a run from scratch: the architecture's defaults
    spec = load_model(str(tmp_path / "model3"), device="cpu").spec
    assert (spec.default_guidance, spec.default_steps) == (3.0, 20)


def test_a_run_keeps_its_noise_schedule(tmp_path):
    from dataclasses import replace

    config = ShapesTrainConfig(run_dir=str(tmp_path / "run"), max_steps=1, batch_size=2, warmup_steps=1, threads=1)
    ckpt = train(config, replace(TINY, schedule="sd"), progress=False)
    config.max_steps = 2
    train(config, TINY, progress=False)  # resumed without asking for sd: the checkpoint's schedule wins
    saved = torch.load(ckpt, weights_only=False)
    assert saved["model_config"]["schedule"] == "sd" and saved["state"]["step"] == 2
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["schedule"] == "sd"  # what it ran with
    export(ckpt, tmp_path / "model")
    scheduler = load_model(str(tmp_path / "model"), device="cpu").scheduler
    scheduler.set_timesteps(20)
    assert int(scheduler.timesteps[0]) == 951 and float(scheduler.alphas_cumprod[951]) > 0.005


def test_a_frozen_text_encoder_keeps_its_random_weights(tmp_path):
    from dataclasses import replace

    config = ShapesTrainConfig(run_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, warmup_steps=1, threads=1)
    ckpt = train(config, replace(TINY, frozen_text_encoder=True), progress=False)
    first = torch.load(ckpt, weights_only=False)
    config.max_steps = 4
    train(config, TINY, progress=False)  # resumed: the checkpoint's frozen encoder wins
    second = torch.load(ckpt, weights_only=False)
    assert second["model_config"]["frozen_text_encoder"] and second["state"]["step"] == 4
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["text_encoder"] == "frozen"
    assert len(second["ema"]) == len(second["unet"])  # the EMA follows the UNet only
    for name, weight in first["text_encoder"].items():
        assert torch.equal(weight, second["text_encoder"][name]), name
    assert not torch.equal(first["unet"]["conv_in.weight"], second["unet"]["conv_in.weight"])
    export(ckpt, tmp_path / "model")
    model = load_model(str(tmp_path / "model"), device="cpu")
    text = model.encode_text(["a red circle on the left", "a red circle on the right"])
    assert (text[0, 6] - text[1, 6]).norm() > 0.1 * text[0, 6].norm()  # 'left' and 'right' stay apart


def test_high_noise_fraction_draws_that_share_from_the_noisiest_tenth():
    from atlas.shapes.train import sample_timesteps

    torch.manual_seed(0)
    assert int(sample_timesteps(500, 1000, 1.0).min()) >= 900
    share = float((sample_timesteps(20_000, 1000, 0.3) >= 900).float().mean())
    assert abs(share - (0.3 + 0.7 * 0.1)) < 0.02  # the drawn share plus the uniform draws that land there
    assert float((sample_timesteps(20_000, 1000, 0.0) >= 900).float().mean()) < 0.12


def test_the_shipped_text_encoder_tells_positions_apart():
    """The jointly trained encoder once mapped 'left' and 'right' to the same output, so no UNet could place
    objects by the caption: every position word must change the embedding the UNet attends to."""
    model = load_model("shapes", device="cpu")
    words = ("left", "right", "top", "bottom")
    with torch.no_grad():
        text = model.encode_text([f"a red circle on the {w}" for w in words]).float()
    for i in range(len(words)):
        for j in range(i + 1, len(words)):
            gap = (text[i] - text[j]).norm(dim=-1).max().item()
            assert gap > 0.1 * text[i].norm(dim=-1).mean().item(), (words[i], words[j], gap)


def test_a_grown_model_starts_as_the_smaller_one_and_exports_its_new_attention(tmp_path):
    from dataclasses import replace

    from atlas.shapes.card import write_model_card
    from atlas.shapes.train import load_checkpoint_model, load_growing

    small = tmp_path / "small"
    export(train(ShapesTrainConfig(run_dir=str(tmp_path / "run"), max_steps=1, batch_size=2, warmup_steps=1,
                                   threads=1), TINY, progress=False), small)
    grown_config = ShapesTrainConfig(run_dir=str(tmp_path / "grown"), max_steps=1, batch_size=2, threads=1,
                                     init_from=str(small))
    deeper = replace(TINY, fine_cross_attention=True, attention_depth=2)
    ckpt = train(grown_config, deeper, progress=False)  # at step 1 already: nothing trained
    before, grown = load_model(str(small), device="cpu"), load_checkpoint_model(ckpt)
    assert hasattr(grown.unet.down_blocks[0], "attentions") and not hasattr(before.unet.down_blocks[0], "attentions")
    torch.manual_seed(0)
    sample, text = torch.randn(2, 14, 16, 16), torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = before.unet(sample, torch.tensor([3, 900]), text).sample
        assert torch.allclose(grown.unet(sample, torch.tensor([3, 900]), text).sample, expected, atol=1e-5)

    grown_config.max_steps = 3
    facts = export(train(grown_config, progress=False), tmp_path / "grown-model")  # resumed: keeps the attention
    model = load_model(str(tmp_path / "grown-model"), device="cpu")
    card = write_model_card(tmp_path / "grown-model", facts, {"text_encoder": "trained"}, "atlas shapes train")
    assert ("- cross-attention to the text at 16x16, 8x8 and 4x4 (mid block), 2 transformer layers per attention "
            "block") in card.read_text()
    assert json.loads((tmp_path / "grown" / "train_config.json").read_text())["fine_cross_attention"]
    assert model.unet.up_blocks[2].attentions[0].proj_out.weight.abs().sum() > 0  # it learned from zero
    assert model.unet.mid_block.attentions[0].transformer_blocks[1].attn2.to_out[0].weight.abs().sum() > 0
    assert model.spec.hook_points["down"] == "down_blocks.1.attentions.0"
    try:
        load_growing(before.unet, model.unet.state_dict())
    except ConflictError as err:
        assert "does not fit this run's sizes" in str(err) and "unexpected" in str(err)
    else:
        raise AssertionError("a larger UNet's weights loaded into a smaller one")


def test_training_scenes_can_be_made_more_crowded_and_share_colours_more_often(tmp_path):
    import random

    import pytest

    from atlas.shapes.train import world_config
    from atlas.shapes.world import random_scene

    rng = random.Random(0)
    assert {len(random_scene(rng, world_config("0,0,1")).objects) for _ in range(50)} == {3}
    assert {len(random_scene(rng, world_config("1,1")).objects) for _ in range(50)} == {1, 2}
    def shared(scene):
        return len({o.color for o in scene.objects}) < len(scene.objects)

    assert sum(shared(random_scene(rng, world_config("0,1"))) for _ in range(400)) < 120  # chance: about 73
    assert 170 < sum(shared(random_scene(rng, world_config("0,1", 0.5))) for _ in range(400)) < 230
    assert all(shared(random_scene(rng, world_config("0,0,1", 1.0))) for _ in range(50))
    with pytest.raises(BadInputError, match="one weight per object count"):
        world_config("0,0")
    assert len(random_scene(rng, world_config("0,0,0,1", 0.5)).objects) == 4  # the most a scene can place
    with pytest.raises(BadInputError, match="at most 4 objects"):
        world_config("0,0,0,0,1")  # five never fit: drawing such a world would never return
    with pytest.raises(BadInputError, match="one weight per object count"):
        train(ShapesTrainConfig(run_dir=str(tmp_path / "run"), object_count_weights=""), TINY, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
