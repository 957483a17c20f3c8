"""SD3 (MMDiT) and FLUX (double/single-stream) backbones: tiny random models of each architecture, saved by diffusers'
own pipelines and loaded from disk with no atlas spec, sample exactly as those pipelines do; hooks see each block's
image-token update on the token grid; zero edits change nothing; a missing encoder is named in one line."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas.capture import ActivationSet, capture, delta_at
from atlas.capture.config import CaptureConfig
from atlas.cli.main import main
from atlas.edit.add import AddEdit, generate_added
from atlas.edit.core import ConceptEdit, edit_hooks, parse_region, region_to_grid
from atlas.errors import BadInputError
from atlas.models import Hooks, ModelNotFoundError, check_model, generate, load_model, step_to_t, t_to_step
from atlas.models.mmdit import pack, unpack
from atlas.models.random import JOINT_KINDS, write_random_joint
from atlas.models.sampler import initial_noise, sample_latents
from atlas.pipeline.build import capture_config, check_build
from atlas.pipeline.config import BuildConfig
from atlas.sae import Sae, SaeConfig

PROMPTS = ["a red circle on the left", "a dog"]
WIDTH = 16  # the tiny transformers' inner width: 2 heads of 8


@pytest.fixture(scope="module")
def joint_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    return {kind: write_random_joint(root / kind, kind) for kind in JOINT_KINDS}


@pytest.fixture(scope="module")
def models(joint_dirs):
    return {kind: load_model(str(path), device="cpu") for kind, path in joint_dirs.items()}


@pytest.mark.parametrize("kind, backbone, denoiser, hooks, steps, guidance", [
    ("sd3", "sd3", "SD3Transformer2DModel", ["transformer_blocks.0", "transformer_blocks.1", "transformer_blocks.2"],
     28, 7.0),
    ("flux-dev", "flux", "FluxTransformer2DModel",
     ["transformer_blocks.0", "single_transformer_blocks.0", "single_transformer_blocks.1"], 28, 3.5),
    ("flux-schnell", "flux", "FluxTransformer2DModel",
     ["transformer_blocks.0", "single_transformer_blocks.0", "single_transformer_blocks.1"], 4, 0.0),
])
def test_a_diffusers_directory_loads_with_no_spec(joint_dirs, models, kind, backbone, denoiser, hooks, steps,
                                                  guidance):
    path, model = joint_dirs[kind], models[kind]
    assert not (path / "atlas_model.json").exists() and (path / "model_index.json").is_file()
    assert (model.spec.backbone, type(model.denoiser).__name__, model.unet) == (backbone, denoiser, None)
    assert [model.hook_module_name(b) for b in ("down", "mid", "up")] == hooks
    assert (model.spec.default_steps, model.spec.default_guidance) == (steps, guidance)
    assert model.spec.resolution == 32 and model.latent_shape == (4, 8, 8) and model.token_grid == (4, 4)
    vae = json.loads((path / "vae" / "config.json").read_text())
    assert (model.spec.vae_scaling_factor, model.spec.vae_shift_factor) == (vae["scaling_factor"],
                                                                           vae["shift_factor"])
    encoders = [type(e).__name__ for e in (model.text_encoder, model.text_encoder_2, model.text_encoder_3) if e]
    assert encoders == (["CLIPTextModelWithProjection"] * 2 + ["T5EncoderModel"] if backbone == "sd3" else
                        ["CLIPTextModel", "T5EncoderModel"])
    assert type(model.scheduler).__name__ == "FlowMatchScheduler"


@pytest.mark.parametrize("kind", JOINT_KINDS)
def test_sampling_is_the_diffusers_pipelines_own(joint_dirs, models, kind):
    """Same noise, same prompts: the atlas sampler's latents are StableDiffusion3Pipeline's (CFG) and FluxPipeline's
    (dev: distilled guidance embedded; schnell: none), so text encoding, guidance and the flow-matching schedule are
    the model's own. Within float32 rounding (assert_close's defaults), not bit for bit: SD3's pipeline encodes the
    negative and positive prompts as two batches where the sampler encodes one, and on some CPUs the kernels a
    batch of B or 2B selects sum in another order (seen on CI, not on this machine)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    model = models[kind]
    ours = sample_latents(model, PROMPTS, [0, 1], steps=3)
    noise = initial_noise(model, [0, 1])
    common = dict(num_inference_steps=3, guidance_scale=model.spec.default_guidance, output_type="latent",
                  max_sequence_length=16, height=32, width=32)
    if kind == "sd3":
        pipe = StableDiffusion3Pipeline.from_pretrained(joint_dirs[kind])
        theirs = pipe(PROMPTS, latents=noise, **common).images
    else:
        pipe = FluxPipeline.from_pretrained(joint_dirs[kind])
        theirs = unpack(pipe(PROMPTS, latents=pack(noise), **common).images, 8, 8)
    pipe.set_progress_bar_config(disable=True)
    torch.testing.assert_close(ours, theirs)
    other = sample_latents(model, PROMPTS, [0, 1], steps=3, guidance=model.spec.default_guidance + 2.0)
    assert torch.equal(ours, other) == (kind == "flux-schnell")  # schnell has no guidance at all


def doubled_batch_latents(model, prompts: list[str], seeds: list[int], steps: int) -> torch.Tensor:
    """What the sampler computed for FLUX before it ran the cond half alone: the batch [uncond, cond] denoised, its
    cond half kept."""
    scheduler = copy.deepcopy(model.scheduler)
    scheduler.set_timesteps(steps)
    text = model.encode_text([""] * len(prompts) + prompts)
    latents = initial_noise(model, seeds)
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            _, cond = model.predict(torch.cat([latents, latents]), timestep, text).chunk(2)
            latents = scheduler.step(cond, timestep, latents, return_dict=False)[0]
    return latents


@pytest.mark.parametrize("kind", JOINT_KINDS)
def test_a_model_without_cfg_denoises_the_cond_half_alone(models, kind):
    """FLUX (no classifier-free guidance) calls its denoiser on B rows, SD3 on [uncond, cond] (2B). FLUX's latents
    are those of the doubled batch's cond half: the same rows through the same weights; only the kernels a batch of
    B rather than 2B selects may sum in another order, so they are compared within float32 rounding (assert_close's
    defaults: rtol 1.3e-6, atol 1e-5)."""
    model = models[kind]
    rows = []
    handle = model.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(len(kwargs["hidden_states"])), with_kwargs=True)
    try:
        ours = sample_latents(model, PROMPTS, [0, 1], steps=3)
    finally:
        handle.remove()
    assert rows == [2 * len(PROMPTS) if model.spec.cfg else len(PROMPTS)] * 3
    if not model.spec.cfg:
        torch.testing.assert_close(ours, doubled_batch_latents(model, PROMPTS, [0, 1], 3))


@pytest.mark.parametrize("kind", JOINT_KINDS)
def test_a_change_to_the_uncond_half_steers_a_model_with_cfg_only(models, kind):
    """Hooks on FLUX see [zeros, cond] and apply the cond half of a change: one to the uncond half leaves the latents
    bit-identical; on SD3 it steers them through CFG."""
    model = models[kind]
    plain = sample_latents(model, PROMPTS, [0, 1], steps=3)
    seen = []

    def push_uncond(block: str, step: object, delta: torch.Tensor) -> torch.Tensor:
        seen.append(bool(delta[:len(delta) // 2].any()))
        change = torch.zeros_like(delta)
        change[:len(delta) // 2] = 5.0
        return change

    pushed = sample_latents(model, PROMPTS, [0, 1], steps=3, hooks=Hooks().on("mid", push_uncond))
    assert torch.equal(pushed, plain) == (not model.spec.cfg) and seen == [model.spec.cfg] * 3


@pytest.mark.parametrize("kind", ["flux-dev", "flux-schnell"])
def test_the_uncond_branch_of_a_model_without_cfg_is_refused_in_one_line(joint_dirs, models, kind, tmp_path):
    model = models[kind]
    _, cond = delta_at(model, PROMPTS[:1], [0], "mid", 1, "cond", steps=2)
    assert cond.shape == (1, WIDTH, 4, 4) and cond.any()
    with pytest.raises(BadInputError, match="samples without classifier-free guidance, so it has no uncond branch"):
        delta_at(model, PROMPTS[:1], [0], "mid", 1, "uncond", steps=2)
    (tmp_path / "prompts.txt").write_text("a dog\n")
    result = CliRunner().invoke(main, ["capture", "--model", str(joint_dirs[kind]), "--prompts",
                                       str(tmp_path / "prompts.txt"), "--keys", "mid/1.0/uncond", "--steps", "2",
                                       "--out", str(tmp_path / "acts")])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "no uncond branch" in result.output and not (tmp_path / "acts").exists()
    # Branches left to capture's default (cond and uncond): cond alone, with a note saying why.
    result = CliRunner().invoke(main, ["capture", "--model", str(joint_dirs[kind]), "--prompts",
                                       str(tmp_path / "prompts.txt"), "--blocks", "mid", "--t", "1.0", "--steps", "2",
                                       "--out", str(tmp_path / "acts")])
    assert result.exit_code == 0 and "note: no uncond branch" in result.output, result.output
    assert ActivationSet(tmp_path / "acts").keys() == [("mid", 1.0, "cond")]


@pytest.mark.parametrize("kind", ["sd3", "flux-dev"])
def test_the_first_step_is_pure_noise_at_t_1(models, kind):
    """Flow matching starts at sigma = 1 (timestep 1000): t = 1.0 there, 0.0 at the last step, as for DDIM."""
    model = models[kind]
    seen = []
    generate(model, PROMPTS[:1], [0], steps=5, hooks=Hooks().on("mid", lambda b, step, d: seen.append(step)))
    assert [s.index for s in seen] == list(range(5)) and seen[0].timestep == 1000
    assert [s.t for s in seen] == [step_to_t(i, 5) for i in range(5)] and (seen[0].t, seen[-1].t) == (1.0, 0.0)
    assert [s.timestep for s in seen] == sorted((s.timestep for s in seen), reverse=True)
    assert [t_to_step(t, 5) for t in (1.0, 0.5, 0.0)] == [0, 2, 4]


def test_flux_packs_two_by_two_latent_patches_into_row_major_tokens():
    latents = torch.zeros(1, 4, 8, 6)
    latents[0, 2, 5, 2] = 1.0  # latent row 5, col 2: token row 2, col 1 of the 4 x 3 grid
    tokens = pack(latents)
    assert tokens.shape == (1, 12, 16) and tokens.abs().sum(-1)[0].nonzero().flatten().tolist() == [2 * 3 + 1]
    noise = torch.randn(2, 4, 8, 6)
    assert torch.equal(unpack(pack(noise), 8, 6), noise)


@pytest.mark.parametrize("kind, block", [("sd3", "transformer_blocks.1"), ("sd3", "transformer_blocks.2"),
                                         ("flux-dev", "transformer_blocks.0"),
                                         ("flux-dev", "single_transformer_blocks.1")])
def test_hooks_see_the_image_tokens_update_on_the_token_grid(models, kind, block):
    """Each block returns (text tokens, image tokens); the hook's delta is the image tokens' update alone (a FLUX
    single-stream block concatenates text and image inside and splits them on return), token r * 4 + c at (r, c).
    SD3's last block updates no text tokens at all. FLUX runs the cond half alone: its uncond slot is zeros."""
    model = models[kind]
    module = model.denoiser.get_submodule(block)
    raw, seen = {}, {}

    def per_token(module, args, kwargs, out):
        raw.setdefault("image", out[1] - kwargs["hidden_states"])
        raw.setdefault("text", out[0])

    handle = module.register_forward_hook(per_token, with_kwargs=True)
    try:
        generate(model, PROMPTS[:1], [0], steps=2, hooks=Hooks().on(block, lambda b, s, d: seen.setdefault("d", d),
                                                                   steps=[0]))
    finally:
        handle.remove()
    delta, tokens = seen["d"], raw["image"]
    run = 2 if model.spec.cfg else 1  # the rows the denoiser ran: [uncond, cond], or cond alone
    assert delta.shape == (2, WIDTH, 4, 4) and tokens.shape == (run, 16, WIDTH)  # [uncond, cond] x width x grid
    for row, col in ((0, 0), (0, 3), (2, 1), (3, 3)):
        assert torch.equal(delta[2 - run:, :, row, col], tokens[:, row * 4 + col])
    assert not delta[:2 - run].any()
    assert (raw["text"] is None) == (block == "transformer_blocks.2")


@pytest.mark.parametrize("kind", ["sd3", "flux-dev"])
def test_capture_writes_token_grid_shards_of_every_default_block(models, kind, tmp_path):
    """On FLUX, which has no uncond pass, capturing the uncond branch is a one-line error and nothing is written."""
    config = CaptureConfig(blocks=["down", "mid", "up"], t=[1.0, 0.0], steps=3, batch_size=2)
    branches = ("cond", "uncond") if models[kind].spec.cfg else ("cond",)
    if branches == ("cond",):
        with pytest.raises(BadInputError, match="flux-dev .flux. samples without classifier-free guidance, so it has "
                                                "no uncond branch: use cond$"):
            capture(models[kind], PROMPTS, tmp_path / "acts", config, progress=False)
        assert not (tmp_path / "acts").exists()
        config = replace(config, branches=list(branches))
    acts = ActivationSet(capture(models[kind], PROMPTS + ["a cat"], tmp_path / "acts", config, progress=False))
    assert sorted(acts.keys()) == sorted((b, t, br) for b in ("down", "mid", "up") for t in (1.0, 0.0)
                                         for br in branches)
    up = acts.load("up", 0.0, "cond")
    assert up["x"].shape == (3 * 16, WIDTH)
    assert up["row"][:5].tolist() == [0] * 4 + [1] and up["col"][:5].tolist() == [0, 1, 2, 3, 0]


@pytest.mark.parametrize("kind", ["sd3", "flux-dev"])
def test_a_bf16_capture_on_the_cpu_stores_float32_that_match_fp32s(joint_dirs, models, kind, tmp_path):
    """The precision FLUX runs in on a GPU, here on the CPU: the captured image-token updates are stored as float32
    when asked (fp16 by default), and an SAE encodes them in float32, within bf16's rounding of the fp32 model's."""
    half = load_model(str(joint_dirs[kind]), device="cpu", dtype="bf16")
    assert half.dtype == torch.bfloat16 and half.transformer.dtype == torch.bfloat16
    config = CaptureConfig(blocks=["down", "up"], t=[1.0], branches=["cond"], steps=2, dtype="fp32", batch_size=3)
    found = {}
    for name, model in (("fp32", models[kind]), ("bf16", half)):
        acts = ActivationSet(capture(model, PROMPTS + ["a cat"], tmp_path / name, config, progress=False))
        found[name] = acts.load("up", 1.0, "cond")["x"]
    exact, rounded = found["fp32"], found["bf16"]
    assert rounded.dtype == torch.float32 and rounded.shape == exact.shape == (3 * 16, WIDTH)
    assert (rounded - exact).norm() / exact.norm() < 0.15  # bf16 keeps 3 significant digits per operation
    sae = Sae(SaeConfig(d_in=WIDTH, n_latents=32, k=4), generator=torch.Generator().manual_seed(0))
    assert sae.encode(rounded).top_acts.dtype == torch.float32
    stored = ActivationSet(capture(half, PROMPTS, tmp_path / "fp16", replace(config, dtype="fp16"), progress=False))
    assert stored.load("up", 1.0, "cond")["x"].dtype == torch.float16


@pytest.mark.parametrize("kind, block", [("sd3", "mid"), ("flux-dev", "down"), ("flux-schnell", "mid")])
def test_zero_strength_edit_is_bit_identical_and_a_real_edit_is_not(models, kind, block):
    model = models[kind]
    sae = Sae(SaeConfig(d_in=WIDTH, n_latents=32, k=4), generator=torch.Generator().manual_seed(0))
    plain = generate(model, PROMPTS, [0, 1], steps=3)
    zero = ConceptEdit(sae, list(range(8)), block, [0, 1, 2], 0.0)
    assert np.array_equal(generate(model, PROMPTS, [0, 1], steps=3, hooks=edit_hooks([zero])), plain)
    assert np.array_equal(generate(model, PROMPTS, [0, 1], steps=3,
                                   hooks=Hooks().on("up", lambda b, s, d: torch.zeros_like(d))), plain)
    region = region_to_grid(parse_region("top-left", 32), model.token_grid, block)
    spatial = ConceptEdit(sae, list(range(8)), block, [0, 1], 50.0, region)
    assert not np.array_equal(generate(model, PROMPTS, [0, 1], steps=3, hooks=edit_hooks([spatial])), plain)


@pytest.mark.parametrize("kind", JOINT_KINDS)
def test_an_add_edit_batch_has_no_uncond_rows_without_cfg_and_its_concept_edits_are_atlas_edits(models, kind):
    """`generate_added` denoises per image [uncond, cond] unedited and edited plus a donor row on SD3, and on FLUX
    cond, edited cond and the donor. With a strength-0 donor and nothing held, its unedited images are the plain ones
    and its edited images are those of the same concept edit through `edit_hooks` (another batch size: within a
    level of rounding)."""
    model = models[kind]
    sae = Sae(SaeConfig(d_in=WIDTH, n_latents=32, k=4), generator=torch.Generator().manual_seed(0))
    region = parse_region("top-left", 32)
    spatial = ConceptEdit(sae, list(range(8)), "mid", [0, 1], 50.0, region_to_grid(region, model.token_grid, "mid"))
    adds = [[AddEdit("yellow circle", region, ["mid"], [0, 1], 0.0)] for _ in PROMPTS]
    rows = []
    handle = model.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(len(kwargs["hidden_states"])), with_kwargs=True)
    try:
        unedited, edited = generate_added(model, PROMPTS, [0, 1], adds, 3, concept_edits=[[spatial]] * 2, hold=False)
    finally:
        handle.remove()
    assert rows == [len(PROMPTS) * (5 if model.spec.cfg else 3)] * 3
    plain = generate(model, PROMPTS, [0, 1], steps=3)
    moved = generate(model, PROMPTS, [0, 1], steps=3, hooks=edit_hooks([spatial]))
    assert not np.array_equal(moved, plain)
    assert np.abs(unedited.astype(int) - plain.astype(int)).max() <= 1
    assert np.abs(edited.astype(int) - moved.astype(int)).max() <= 1


@pytest.mark.parametrize("kind, remove, named", [
    ("sd3", "text_encoder_3", "text_encoder_3/config.json (T5 text encoder)"),
    ("flux-dev", "text_encoder_2", "text_encoder_2/config.json (T5 text encoder)"),
    ("flux-schnell", "tokenizer_2", "tokenizer_2/tokenizer_config.json"),
])
def test_a_missing_component_is_named_in_one_line(joint_dirs, tmp_path, kind, remove, named):
    path = tmp_path / kind
    shutil.copytree(joint_dirs[kind], path)
    shutil.rmtree(path / remove)
    with pytest.raises(ModelNotFoundError, match="lacks " + named.replace("(", r"\(").replace(")", r"\)")):
        check_model(str(path))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog\n")
    result = CliRunner().invoke(main, ["build", "--preset", "sd14", "--model", str(path), "--prompts", str(prompts),
                                       "--atlas", str(tmp_path / "atlas")])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert named in result.output and "copy the complete diffusers model there" in result.output
    assert not (tmp_path / "atlas").exists()


@pytest.fixture(scope="module")
def grounded_sam(tmp_path_factory):
    """A tiny random Grounding DINO and SAM: what `--preset sd14` checks for before a build starts."""
    from atlas.annotate.config import AnnotateConfig
    from atlas.annotate.random import write_random_grounding_dino, write_random_sam

    root = tmp_path_factory.mktemp("grounded-sam")
    return AnnotateConfig(grounding_dino=str(write_random_grounding_dino(root / "gdino", ["dog", "cat"])),
                          sam=str(write_random_sam(root / "sam")))


@pytest.mark.parametrize("kind, steps, guidance, branches", [
    ("sd14", 50, 7.5, ["cond", "uncond"]), ("sd3", 28, 7.0, ["cond", "uncond"]), ("flux-dev", 28, 3.5, ["cond"]),
    ("flux-schnell", 4, 0.0, ["cond"]),
])
def test_preset_sd14_samples_each_model_with_its_own_defaults(joint_dirs, tiny_sd_dir, grounded_sam, tmp_path, kind,
                                                              steps, guidance, branches):
    """`--preset sd14` leaves steps and guidance to the model (SD v1.4's 50 / 7.5, SD3's, FLUX's); on FLUX, which has
    no CFG, the preset's uncond branch is dropped with a note, and an explicit one is a one-line error."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a dog number {i}\n" for i in range(8)))
    model = str(tiny_sd_dir if kind == "sd14" else joint_dirs[kind])
    base = dict(preset="sd14", model=model, prompts=str(prompts), atlas=str(tmp_path / "atlas"), annotate=grounded_sam)
    said = []
    config = check_build(BuildConfig(**base), say=said.append)
    spec = check_model(model)[1]
    assert (config.steps, config.guidance) == (None, None)  # the model's, as `atlas capture` alone takes them
    assert (spec.steps(config.steps), spec.guidance(config.guidance), config.branches) == (steps, guidance, branches)
    assert len(said) == (branches == ["cond"]) and all("no uncond branch" in line for line in said)
    explicit = check_build(BuildConfig(**base, steps=3, guidance=2.0, branches=["cond"]))
    assert (explicit.steps, explicit.guidance, explicit.branches) == (3, 2.0, ["cond"])
    for asked in (dict(branches=["cond", "uncond"]), dict(keys=["mid/1.0/uncond"])):
        if branches == ["cond"]:
            with pytest.raises(BadInputError, match="samples without classifier-free guidance, so it has no uncond"):
                check_build(BuildConfig(**base, **asked))
        else:
            assert "uncond" in {key[2] for key in capture_config(check_build(BuildConfig(**base, **asked)))
                                .selected_keys()}


NAMED = [("sd3-medium", "sd3", "stabilityai/stable-diffusion-3-medium-diffusers", "ATLAS_SD3_MEDIUM_PATH", True),
         ("flux-dev", "flux-dev", "black-forest-labs/FLUX.1-dev", "ATLAS_FLUX_DEV_PATH", True),
         ("flux-schnell", "flux-schnell", "black-forest-labs/FLUX.1-schnell", "ATLAS_FLUX_SCHNELL_PATH", False)]


@pytest.mark.parametrize("name, kind, repo, env, gated", NAMED)
def test_a_named_model_resolves_from_its_variable_else_the_hugging_face_cache(joint_dirs, tmp_path, monkeypatch, name,
                                                                              kind, repo, env, gated):
    from huggingface_hub import constants

    monkeypatch.setenv(env, str(joint_dirs[kind]))
    path, spec = check_model(name)
    assert path == joint_dirs[kind] and spec.default_steps == (4 if kind == "flux-schnell" else 28)
    monkeypatch.delenv(env)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cached = tmp_path / "hf" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(joint_dirs[kind], cached / "snapshots" / ("0" * 40))
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text("0" * 40)
    path, spec = check_model(name)
    assert path == cached / "snapshots" / ("0" * 40) and spec.backbone == kind.split("-")[0]


@pytest.mark.parametrize("name, kind, repo, env, gated", NAMED)
def test_a_named_model_not_here_says_what_to_download_where_in_one_line(tmp_path, monkeypatch, name, kind, repo, env,
                                                                        gated):
    """Never downloaded: the error names the repo, the Hugging Face cache it was looked for in and the variable that
    points at a copy, before any work starts."""
    from huggingface_hub import constants

    monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog\n")
    result = CliRunner().invoke(main, ["build", "--preset", "sd14", "--model", name, "--prompts", str(prompts),
                                       "--atlas", str(tmp_path / "atlas")])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    for part in (f"{repo} is not in the local Hugging Face cache ({tmp_path / 'hf'})",
                 f"`huggingface-cli download {repo}`", f"set {env} to a diffusers directory"):
        assert part in result.output
    assert ("a gated repo: accept its licence" in result.output) == gated
    assert not (tmp_path / "atlas").exists() and not (tmp_path / "hf").exists()


def test_sd3_without_t5_reads_zeros_in_its_place(joint_dirs, models, tmp_path):
    """SD3 may ship without T5 (model_index.json sets it to null): its pipeline then reads zeros for T5's tokens."""
    path = tmp_path / "sd3-no-t5"
    shutil.copytree(joint_dirs["sd3"], path)
    for part in ("text_encoder_3", "tokenizer_3"):
        shutil.rmtree(path / part)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "text_encoder_3": [None, None],
                                                       "tokenizer_3": [None, None]}))
    model = load_model(str(path), device="cpu")
    assert model.text_encoder_3 is None and model.tokenizer_3 is None
    text = model.encode_text(PROMPTS)
    full = models["sd3"].encode_text(PROMPTS)
    clip = 16  # the CLIP tokens come first, then T5's (here all zero)
    assert torch.equal(text.tokens[:, :clip], full.tokens[:, :clip]) and not text.tokens[:, clip:].any()
    assert torch.equal(text.pooled, full.pooled)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd3", "flux-dev"])
def test_atlas_build_search_edit_and_the_web_atlas_work_on_a_joint_model(joint_dirs, kind, tmp_path):
    """`atlas build --model PATH` with the default blocks (no --blocks), random Grounding DINO and SAM, then `atlas
    sql`, `atlas search`, `atlas edit` and the web atlas's edit on it. Random weights: only that each ran counts."""
    from fastapi.testclient import TestClient

    from atlas.annotate.random import write_random_grounding_dino, write_random_sam
    from atlas.server import create_app

    prompts = ["a dog on a red car", "a cat and a car", "a red dog", "a dog and a cat"]
    words = sorted({w for p in prompts for w in p.split()})
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    gdino, sam, atlas = write_random_grounding_dino(tmp_path / "gdino", words), write_random_sam(tmp_path / "sam"), \
        tmp_path / "atlas"

    def cli(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    cli("build", "--preset", "sd14", "--model", str(joint_dirs[kind]), "--prompts", str(tmp_path / "prompts.txt"),
        "--n-images", "4", "--steps", "3", "--t", "1.0,0.0", "--branches", "cond", "--k", "8", "--atlas", str(atlas),
        "--grounding-dino", str(gdino), "--sam", str(sam), "--box-threshold", "0", "--text-threshold", "0",
        "--device", "cpu", "--sae-tokens", "256", "--threads", "1")
    rows = cli("sql", "--atlas", str(atlas), "--format", "json",
               "SELECT block, grid_h, grid_w, d_in FROM saes ORDER BY block, t")
    assert [(r["block"], r["grid_h"], r["grid_w"], r["d_in"]) for r in json.loads(rows)] == [
        (b, 4, 4, WIDTH) for b in ("down", "down", "mid", "mid", "up", "up")]
    manifest = json.loads((atlas / "activations" / "manifest.json").read_text())
    assert manifest["source"] == str(joint_dirs[kind].resolve()) and manifest["steps"] == 3
    cli("link", "--atlas", str(atlas), "--iou", "0", "--min-hits", "1")
    assert "dog" in cli("search", "dog", "--atlas", str(atlas))
    said = cli("edit", "a dog on a red car", "--atlas", str(atlas), "--concept", "dog", "--region", "top-left",
               "--strength", "8", "--out", str(tmp_path / "edit.png"))
    assert "spatial edit of 'dog'" in said and (tmp_path / "edit.png").stat().st_size > 0
    with TestClient(create_app(atlas, threads=1), base_url="http://127.0.0.1") as client:
        token = client.get("/session.json").json()["csrf_token"]
        answer = client.post("/edit.json", headers={"X-CSRF-Token": token},
                             json={"prompt": "a red dog", "concept": "dog", "region": "1100/1100/0000/0000"})
    assert answer.status_code == 200 and answer.json()["ok"], answer.text
