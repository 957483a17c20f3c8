"""The DiT backbone: a PixArt-style shapes model generates, its blocks' updates reach hooks on the token grid,
zero edits change nothing, and `atlas shapes train --backbone dit` trains, resumes and exports."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas.capture import ActivationSet, capture
from atlas.capture.config import CaptureConfig
from atlas.edit.core import ConceptEdit, edit_hooks, parse_region, region_to_grid
from atlas.errors import BadInputError, ConflictError
from atlas.models import Hooks, generate, load_model
from atlas.sae import Sae, SaeConfig
from atlas.shapes.config import ShapesTrainConfig
from atlas.shapes.model import ShapesModelConfig, new_shapes_model
from atlas.shapes.train import export, load_checkpoint_model, train

TINY_DIT = ShapesModelConfig(backbone="dit", text_width=32, text_layers=1, dit_width=32, dit_depth=3, dit_heads=2)
PROMPTS = ["a red circle on the left", "a blue square on a striped background"]


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    """A tiny random DiT shapes model saved as `atlas shapes export` saves one."""
    path = tmp_path_factory.mktemp("tiny-dit")
    new_shapes_model(TINY_DIT).save_pretrained(path, half=True)
    return path


@pytest.fixture(scope="module")
def model(dit_dir):
    return load_model(str(dit_dir), device="cpu")


def test_a_dit_model_saves_loads_and_generates(dit_dir, model):
    assert (dit_dir / "transformer").is_dir() and not (dit_dir / "unet").exists()
    assert json.loads((dit_dir / "atlas_model.json").read_text())["backbone"] == "dit"
    assert type(model.denoiser).__name__ == "PixArtTransformer2DModel" and model.unet is None
    assert model.token_grid == (8, 8)  # the 16 x 16 latent in 2 x 2 patches
    assert [model.hook_module_name(b) for b in ("down", "mid", "up")] == [
        "transformer_blocks.0", "transformer_blocks.1", "transformer_blocks.2"]
    a = generate(model, PROMPTS, [3, 4], steps=3)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, generate(model, PROMPTS, [3, 4], steps=3))
    assert not np.array_equal(a[0], generate(model, PROMPTS[:1], [5], steps=3)[0])


def test_hooks_see_each_blocks_update_per_image_token_on_the_token_grid(model):
    block = model.denoiser.get_submodule(model.hook_module_name("mid"))
    tokens, seen = {}, {}

    def per_token_update(module, args, kwargs, out):  # returns None: the output stays as it is
        tokens.setdefault("d", out - args[0])

    def record(block_name, step, delta):
        seen["d"] = delta

    handle = block.register_forward_hook(per_token_update, with_kwargs=True)
    try:
        generate(model, PROMPTS[:1], [0], steps=2, hooks=Hooks().on("mid", record, steps=[0]))
    finally:
        handle.remove()
    delta, per_token = seen["d"], tokens["d"]
    assert delta.shape == (2, 32, 8, 8) and per_token.shape == (2, 64, 32)  # CFG [uncond, cond] x width x grid
    for row, col in ((0, 0), (0, 7), (3, 5), (7, 0)):  # token row * 8 + col sits at (row, col)
        assert torch.equal(delta[:, :, row, col], per_token[:, row * 8 + col])


def test_capture_writes_token_grid_shards(model, tmp_path):
    config = CaptureConfig(blocks=["down", "up"], t=[1.0, 0.0], steps=3, batch_size=2)
    acts = ActivationSet(capture(model, PROMPTS + ["a green triangle"], tmp_path / "acts", config, progress=False))
    up = acts.load("up", 1.0, "cond")
    assert up["x"].shape == (3 * 64, 32)
    assert up["row"][:9].tolist() == [0] * 8 + [1] and up["col"][:9].tolist() == list(range(8)) + [0]


def test_zero_strength_edit_is_bit_identical_and_a_real_edit_is_not(model):
    sae = Sae(SaeConfig(d_in=32, n_latents=64, k=4), generator=torch.Generator().manual_seed(0))
    plain = generate(model, PROMPTS, [0, 1], steps=4)
    zero = ConceptEdit(sae, list(range(8)), "mid", list(range(4)), 0.0)
    assert np.array_equal(generate(model, PROMPTS, [0, 1], steps=4, hooks=edit_hooks([zero])), plain)
    assert np.array_equal(generate(model, PROMPTS, [0, 1], steps=4,
                                   hooks=Hooks().on("up", lambda b, s, d: torch.zeros_like(d))), plain)
    region = region_to_grid(parse_region("top-left", 32), model.token_grid, "mid")
    spatial = ConceptEdit(sae, list(range(8)), "mid", [0, 1], 50.0, region)
    assert not np.array_equal(generate(model, PROMPTS, [0, 1], steps=4, hooks=edit_hooks([spatial])), plain)


def test_dit_training_resumes_exports_and_the_export_generates(tmp_path):
    run = tmp_path / "run"
    config = ShapesTrainConfig(run_dir=str(run), max_steps=3, batch_size=4, warmup_steps=1, threads=1,
                               backbone="dit")
    ckpt = train(config, TINY_DIT, progress=False)
    first = torch.load(ckpt, weights_only=False)
    assert first["state"]["step"] == 3 and "transformer" in first and "unet" not in first
    config.max_steps = 5
    train(config, replace(TINY_DIT, backbone="unet"), progress=False)  # resumed: the checkpoint's backbone wins
    second = torch.load(ckpt, weights_only=False)
    assert second["state"]["step"] == 5 and second["model_config"]["backbone"] == "dit"
    name = "pos_embed.proj.weight"
    assert not torch.equal(first["transformer"][name], second["transformer"][name])
    assert json.loads((run / "train_config.json").read_text())["backbone"] == "dit"

    out = tmp_path / "model"
    assert export(ckpt, out)["steps"] == 5
    model = load_model(str(out), device="cpu")
    assert model.spec.backbone == "dit" and model.spec.name == "shapes-dit"
    trained = load_checkpoint_model(ckpt)  # EMA weights, as exported
    np.testing.assert_allclose(model.transformer.proj_out.weight.numpy(),
                               trained.transformer.proj_out.weight.detach().half().float().numpy())
    assert generate(model, ["a red circle"], [0], steps=2).shape == (1, 32, 32, 3)

    # a later run continues from the DiT export; a UNet export cannot start a DiT, nor a DiT overwrite a UNet
    resumed = ShapesTrainConfig(run_dir=str(tmp_path / "run2"), max_steps=6, batch_size=4, threads=1,
                                init_from=str(out), backbone="dit")
    assert torch.load(train(resumed, TINY_DIT, progress=False), weights_only=False)["state"]["step"] == 6
    unet_export = tmp_path / "unet-model"
    unet_run = ShapesTrainConfig(run_dir=str(tmp_path / "unet-run"), max_steps=1, batch_size=2, threads=1)
    export(train(unet_run, replace(TINY_DIT, backbone="unet", channels=(32, 32, 64), attention_heads=2),
                 progress=False), unet_export)
    with pytest.raises(BadInputError, match="holds a unet model and this run trains a dit"):
        train(replace(resumed, run_dir=str(tmp_path / "run3"), init_from=str(unet_export)), TINY_DIT, progress=False)
    with pytest.raises(ConflictError, match="holds a model with a unet/"):
        export(ckpt, unet_export)


def test_cli_trains_a_dit_of_the_default_size_and_exports_it_beside_the_run(tmp_path):
    from atlas.cli.main import main

    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["shapes", "train", "--backbone", "dit", "--run-dir", str(run), "--max-steps",
                                       "1", "--batch-size", "2", "--threads", "1", "--text-encoder", "frozen"])
    assert result.exit_code == 0, result.output
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    assert saved["model_config"]["dit_width"] == 192 and saved["model_config"]["dit_depth"] == 6
    assert 3.5e6 < sum(w.numel() for w in saved["transformer"].values()) < 4.5e6
    result = CliRunner().invoke(main, ["shapes", "export", "--run-dir", str(run), "--no-eval"])
    assert result.exit_code == 0, result.output
    card = (run / "model" / "README.md").read_text()  # beside the run: the shipped UNet stays in data/shapes
    assert "6 transformer blocks of width 192 (6 heads) on the 8x8 grid of image tokens" in card
    assert "`mid` = `transformer_blocks.3`" in card
    assert load_model(str(run / "model"), device="cpu").spec.backbone == "dit"


@pytest.mark.parametrize("name", ["shapes", "shapes-dit", "sd14"])
def test_a_dit_shapes_atlas_is_judged_and_edited_as_the_shapes_world(tmp_path, name):
    """eval-edits on a DiT shapes atlas once fell back to the generic path (labels linked at the block, the atlas's
    own prompts, CLIP for style), so its figures were not comparable with the U-Net's. Both shapes models take the
    shapes world's cases and judge; any other model does not."""
    from atlas.edit.config import EvalEditsConfig
    from atlas.pipeline.edits import STYLE_TARGET, case_source, object_labels
    from atlas.pipeline.judges import ShapesJudge, is_shapes_atlas, judge_for
    from atlas.store import Atlas

    store = Atlas.create(tmp_path / "atlas", model_name=name)
    try:
        shapes = name != "sd14"
        assert is_shapes_atlas(store) is shapes
        if shapes:
            assert isinstance(judge_for(store), ShapesJudge)
            labels, style, prompts = case_source(store, EvalEditsConfig())
            assert labels == object_labels(EvalEditsConfig().seed) and style == STYLE_TARGET
            assert prompts[0] == f"a {labels[0]} on a plain background"
        else:
            assert judge_for(store) is None  # not annotated yet: nothing to judge by
    finally:
        store.close()
