"""Train the shapes model from scratch: resumable, time-boxed, with EMA weights and caption dropout.

Every `checkpoint_minutes` (and on Ctrl-C / SIGTERM) the whole training state is written
atomically to `run_dir/checkpoint.pt`; running again with the same `run_dir` resumes from it.
`export` writes the EMA weights in diffusers layout (fp16 safetensors) for shipping in `data/`.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

import numpy as np
import torch
import torch.nn.functional as F

from atlas.errors import BadInputError, ConflictError, NotFoundError
from atlas.files import atomic_write
from atlas.models.base import TextToImageModel
from atlas.models.loader import denoiser_class
from atlas.models.spec import DENOISERS, SPEC_FILE, ModelSpec
from atlas.progress import bar as progress_bar
from atlas.shapes.config import ShapesTrainConfig
from atlas.shapes.model import ShapesModelConfig, new_shapes_model, training_scheduler
from atlas.shapes.world import WorldConfig, random_scene, render


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def training_batch(rng: random.Random, n: int, world: WorldConfig) -> tuple[list[str], torch.Tensor]:
    scenes = [random_scene(rng, world, split="train") for _ in range(n)]
    images = np.stack([render(s)[0] for s in scenes])
    return [s.caption for s in scenes], _images_to_tensor(images)


def sample_timesteps(n: int, num_train_timesteps: int, high_noise_fraction: float = 0.0) -> torch.Tensor:
    """Uniform training timesteps, except that `high_noise_fraction` of them come from the noisiest 10 %."""
    timesteps = torch.randint(0, num_train_timesteps, (n,))
    high = torch.rand(n) < high_noise_fraction
    top = num_train_timesteps - num_train_timesteps // 10
    timesteps[high] = torch.randint(top, num_train_timesteps, (int(high.sum()),))
    return timesteps


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _trainable(model: TextToImageModel, config: ShapesModelConfig) -> list[torch.nn.Parameter]:
    """The parameters the optimiser and the EMA follow (the text encoder's only when it is trained)."""
    if config.frozen_text_encoder:
        return list(model.denoiser.parameters())
    return list(model.denoiser.parameters()) + list(model.text_encoder.parameters())


def train(config: ShapesTrainConfig, model_config: ShapesModelConfig | None = None, progress: bool = True) -> Path:
    """Train (or resume) until the time budget or `max_steps`; returns the checkpoint path."""
    world = world_config(config.object_count_weights, config.shared_colour_fraction)  # checked before any write
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=False) if ckpt_path.exists() else None
    if ckpt is not None:  # a resumed run keeps the sizes and schedule it started with
        model_config = _model_config(ckpt)
    if config.text_encoder not in ("trained", "frozen"):
        raise BadInputError(f"unknown text encoder mode {config.text_encoder!r}; use trained or frozen")
    model_config = model_config or ShapesModelConfig(schedule=config.schedule,
                                                     frozen_text_encoder=config.text_encoder == "frozen",
                                                     fine_cross_attention=config.fine_cross_attention,
                                                     attention_depth=config.attention_depth,
                                                     backbone=config.backbone)
    model = new_shapes_model(model_config, seed=config.seed)
    model.text_encoder.requires_grad_(not model_config.frozen_text_encoder)
    params = _trainable(model, model_config)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    state = {"step": 0, "seconds": 0.0, "losses": [], "rng": random.Random(config.seed).getstate()}
    if ckpt is not None:
        model.denoiser.load_state_dict(ckpt[model.denoiser_name])
        model.text_encoder.load_state_dict(ckpt["text_encoder"])
        opt.load_state_dict(ckpt["optimizer"])
        for e, saved in zip(ema, ckpt["ema"]):
            e.copy_(saved)
        torch.set_rng_state(ckpt["torch_rng"])
        state = ckpt["state"]
    elif config.init_from:
        state.update(_init_from_export(model, Path(config.init_from), model_config.frozen_text_encoder))
        for e, p in zip(ema, params):
            e.copy_(p.detach())
    if config.init_from and ckpt is None:
        state["init_from"] = config.init_from
    effective = dict(asdict(config), schedule=model_config.schedule, init_from=state.get("init_from", ""),
                     text_encoder="frozen" if model_config.frozen_text_encoder else "trained",
                     fine_cross_attention=model_config.fine_cross_attention,
                     attention_depth=model_config.attention_depth, backbone=model_config.backbone)
    (run_dir / "train_config.json").write_text(json.dumps(effective, indent=2))
    rng = random.Random()
    rng.setstate(state["rng"])
    scheduler = training_scheduler(model_config.schedule)
    stop = _Stop()
    old_handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def save() -> None:
        state["rng"] = rng.getstate()
        checkpoint = {model.denoiser_name: model.denoiser.state_dict(),
                      "text_encoder": model.text_encoder.state_dict(), "optimizer": opt.state_dict(), "ema": ema,
                      "torch_rng": torch.get_rng_state(), "state": state, "model_config": asdict(model_config)}
        atomic_write(ckpt_path, lambda tmp: torch.save(checkpoint, tmp))
        _write_loss_log(run_dir, state["losses"])

    start = time.time()
    last_save = start
    running = None
    bar = progress_bar(desc="train shapes", unit="step", initial=state["step"],
               total=config.max_steps or None, disable=not progress)
    model.denoiser.train()
    model.text_encoder.train(not model_config.frozen_text_encoder)
    try:
        while not stop.requested:
            elapsed = time.time() - start
            if elapsed > config.minutes * 60 or (config.max_steps and state["step"] >= config.max_steps):
                break
            captions, images = training_batch(rng, config.batch_size, world)
            captions = ["" if rng.random() < config.caption_dropout else c for c in captions]
            latents = model.encode_images(images)
            noise = torch.randn_like(latents)
            timesteps = sample_timesteps(len(captions), scheduler.config.num_train_timesteps,
                                         config.high_noise_fraction)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            target = scheduler.get_velocity(latents, noise, timesteps)
            pred = model.predict(noisy, timesteps, model.encode_text(captions))
            loss = F.mse_loss(pred, target)
            for group in opt.param_groups:
                group["lr"] = config.lr * min(1.0, (state["step"] + 1) / config.warmup_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - config.ema_decay)
            state["step"] += 1
            value = loss.item()
            running = value if running is None else 0.98 * running + 0.02 * value
            if state["step"] % 50 == 0:
                state["losses"].append((state["step"], running))
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            if time.time() - last_save > config.checkpoint_minutes * 60:
                state["seconds"] += time.time() - last_save
                last_save = time.time()
                save()
    finally:
        state["seconds"] += time.time() - last_save
        save()
        bar.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    return ckpt_path


def _init_from_export(model: TextToImageModel, directory: Path, denoiser_only: bool = False) -> dict:
    """Load exported (fp16) weights into `model` (only the denoiser with `denoiser_only`); returns the training
    state recorded at export."""
    from transformers import CLIPTextModel

    facts_path = directory / "training.json"
    if not facts_path.exists():
        raise NotFoundError(f"{directory} has no training.json: export it with `atlas shapes export` first")
    backbone = ModelSpec.load(directory).backbone if (directory / SPEC_FILE).exists() else "unet"
    if backbone != model.spec.backbone:
        raise BadInputError(f"{directory} holds a {backbone} model and this run trains a {model.spec.backbone}: "
                         "--init-from takes an export of the same backbone (a run from its seed gets the same frozen "
                         "text encoder)")
    denoiser = denoiser_class(backbone).from_pretrained(directory / model.denoiser_name, torch_dtype=torch.float32)
    load_growing(model.denoiser, denoiser.state_dict())
    if not denoiser_only:
        text = CLIPTextModel.from_pretrained(directory / "text_encoder", torch_dtype=torch.float32)
        model.text_encoder.load_state_dict(text.state_dict())
    facts = json.loads(facts_path.read_text())
    return {"step": facts["steps"], "seconds": facts["hours"] * 3600, "losses": [tuple(x) for x in facts["losses"]]}


def world_config(object_count_weights: str, shared_colour_fraction: float = 0.0) -> WorldConfig:
    """The training world: scenes of 1, 2, 3 ... objects in the given proportions, and of the crowded ones
    `shared_colour_fraction` with a repeated colour (0: as chance has it)."""
    weights = tuple(float(w) for w in object_count_weights.split(",") if w.strip())
    if not weights or sum(weights) <= 0:
        raise BadInputError(f"object count weights {object_count_weights!r}: give one weight per object count, "
                            "e.g. 0.4,0.35,0.25")
    return WorldConfig(max_objects=len(weights), weights_n_objects=weights,
                       shared_colour_fraction=shared_colour_fraction or None)


def load_growing(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `unet`, which may have attention blocks or transformer layers that `state` lacks: their
    outputs start at zero, so the grown UNet computes exactly what the smaller one did and learns from there."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    missing, unexpected = unet.load_state_dict(state, strict=False)
    new: list[str] = []
    for name, module in unet.named_modules():
        if (isinstance(module, (Transformer2DModel, BasicTransformerBlock))
                and not any(name.startswith(outer + ".") for outer in new)
                and not any(k.startswith(name + ".") for k in state)):
            new.append(name)
    unexplained = [k for k in missing if not any(k.startswith(name + ".") for name in new)]
    if unexpected or unexplained:
        raise ConflictError(f"the exported UNet does not fit this run's sizes ({len(unexplained)} missing, "
                            f"{len(unexpected)} unexpected weights, e.g. {(unexplained + unexpected)[0]}): "
                            "start the run with the export's sizes")
    with torch.no_grad():
        for name in new:
            module = unet.get_submodule(name)
            outputs = ([module.proj_out] if isinstance(module, Transformer2DModel)
                       else [module.attn1.to_out[0], module.attn2.to_out[0], module.ff.net[-1]])
            for linear in outputs:
                linear.weight.zero_()
                linear.bias.zero_()


def _write_loss_log(run_dir: Path, losses: list[tuple[int, float]]) -> None:
    lines = ["step,loss"] + [f"{s},{v:.6f}" for s, v in losses]
    (run_dir / "loss.csv").write_text("\n".join(lines) + "\n")


def _model_config(ckpt: dict) -> ShapesModelConfig:
    return ShapesModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["model_config"].items()})


def load_checkpoint_model(ckpt_path: str | Path, use_ema: bool = True) -> TextToImageModel:
    """The model stored in a training checkpoint (EMA weights by default), in eval mode."""
    return _checkpoint_model(torch.load(ckpt_path, weights_only=False), use_ema)


def _checkpoint_model(ckpt: dict, use_ema: bool = True) -> TextToImageModel:
    model_config = _model_config(ckpt)
    model = new_shapes_model(model_config)
    model.denoiser.load_state_dict(ckpt[model.denoiser_name])
    model.text_encoder.load_state_dict(ckpt["text_encoder"])
    if use_ema:
        with torch.no_grad():
            for p, e in zip(_trainable(model, model_config), ckpt["ema"]):
                p.copy_(e)
    model.denoiser.eval()
    model.text_encoder.eval()
    return model


def _starting_defaults(init_from: str) -> tuple[int | None, float | None]:
    """The default sampler steps and CFG scale of the export a run started from (`--init-from`), if it started
    from one."""
    if not (init_from and Path(init_from, SPEC_FILE).exists()):
        return None, None
    spec = ModelSpec.load(init_from)
    return spec.default_steps, spec.default_guidance


def export(ckpt_path: str | Path, out_dir: str | Path, guidance: float | None = None,
           steps: int | None = None) -> dict:
    """Write the EMA weights of a checkpoint to `out_dir` in diffusers layout; returns training facts.

    `guidance` and `steps` become the model's default CFG scale and DDIM steps (what eval, generate and atlas
    builds use when not told): the settings that draw captions best are a property of the weights, measured after
    training. Without them, a run continued from an export keeps that export's, so re-exporting the shipped model
    does not reset them."""
    ckpt = torch.load(ckpt_path, weights_only=False)
    model, state = _checkpoint_model(ckpt), ckpt["state"]
    other = [part for part in DENOISERS.values() if part != model.denoiser_name and Path(out_dir, part).is_dir()]
    if other:  # e.g. a DiT run exported over data/shapes: refused rather than replacing the shipped UNet
        raise ConflictError(f"{out_dir} holds a model with a {other[0]}/: export this {model.spec.backbone} run to "
                         "another directory (--out)")
    start_steps, start_guidance = _starting_defaults(state.get("init_from", ""))
    guidance = guidance if guidance is not None else start_guidance
    steps = steps if steps is not None else start_steps
    if guidance is not None:
        model.spec.default_guidance = guidance
    if steps is not None:
        model.spec.default_steps = steps
    model.save_pretrained(out_dir, half=True)
    _write_loss_log(Path(out_dir), state["losses"])
    facts = {"steps": state["step"], "hours": state["seconds"] / 3600,
             "final_loss": state["losses"][-1][1] if state["losses"] else math.nan}
    Path(out_dir, "training.json").write_text(json.dumps({**facts, "losses": state["losses"]}))
    return facts
