"""Sampling with the model's scheduler (DDIM, or flow-matching Euler for SD3 and FLUX) and its guidance (CFG, or FLUX's
distilled guidance), batch order [uncond, cond] (cond alone without CFG), hookable per step."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch

from atlas.errors import BadInputError
from atlas.models.base import TextToImageModel
from atlas.models.hooks import Hooks, StepInfo
from atlas.progress import bar as progress_bar


def initial_noise(model: TextToImageModel, seeds: Sequence[int]) -> torch.Tensor:
    """One noise tensor per seed, drawn on the CPU so that a seed gives the same image on any device."""
    shape = model.latent_shape
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    sigma = getattr(model.scheduler, "init_noise_sigma", 1.0)
    return (torch.stack(noise) * sigma).to(model.device, model.dtype)


@torch.no_grad()
def sample_latents(model: TextToImageModel, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None,
                   guidance: float | None = None, hooks: Hooks | None = None,
                   negative_prompt: str = "", on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """Denoise one batch: returns final latents (B, C, H, W). `hooks` see every denoiser call with its step;
    `on_step` is called after each step (progress). A model with classifier-free guidance denoises the batch
    [uncond, cond] (2B); one without (FLUX) the cond half alone (B), its hooks still see [uncond, cond] (`Hooks`)."""
    if len(prompts) != len(seeds):
        raise BadInputError("need one seed per prompt")
    steps, guidance = model.spec.steps(steps), model.spec.guidance(guidance)
    scheduler = copy.deepcopy(model.scheduler)
    scheduler.set_timesteps(steps, device=model.device)
    cond_only = not model.spec.cfg
    text = model.encode_text(list(prompts) if cond_only else [negative_prompt] * len(prompts) + list(prompts))
    latents = initial_noise(model, seeds)
    handles = hooks.attach(model, cond_only) if hooks else []
    try:
        for index, timestep in enumerate(scheduler.timesteps):
            if hooks is not None:
                hooks.step = StepInfo(index, steps, int(timestep))
            if cond_only:
                guided = model.predict(scheduler.scale_model_input(latents, timestep), timestep, text, guidance)
            else:
                model_in = scheduler.scale_model_input(torch.cat([latents, latents]), timestep)
                uncond, cond = model.predict(model_in, timestep, text, guidance).chunk(2)
                guided = model.guide(uncond, cond, guidance)
            latents = scheduler.step(guided, timestep, latents, return_dict=False)[0]
            if on_step is not None:
                on_step()
    finally:
        for handle in handles:
            handle.remove()
        if hooks is not None:
            hooks.step = None
    return latents


def generate(model: TextToImageModel, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None,
             guidance: float | None = None, hooks: Hooks | None = None, batch_size: int = 32,
             progress: bool = False) -> np.ndarray:
    """Generate one image per (prompt, seed): uint8 array (N, H, W, 3). Batches never mix results."""
    prompts, seeds = list(prompts), list(seeds)
    images = []
    bar = progress_bar(total=len(prompts), unit="img", desc="generate", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        latents = sample_latents(model, prompts[chunk], seeds[chunk], steps, guidance, hooks)
        images.append(model.to_uint8(model.decode(latents)))
        bar.update(len(prompts[chunk]))
    bar.close()
    if not images:
        shape = model.spec.resolution
        return np.zeros((0, shape, shape, 3), dtype=np.uint8)
    return np.concatenate(images)
