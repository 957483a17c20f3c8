"""The flow-matching Euler scheduler of SD3 and FLUX, with the interface of the atlas sampler."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler


class FlowMatchScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' FlowMatchEulerDiscreteScheduler with the interface the atlas sampler uses: `set_timesteps(steps)`
    alone and an identity `scale_model_input`. The first step is sigma = 1 (pure noise): t = 1.0, as for DDIM."""

    mu: float | None = None
    """None: SD3's schedule (the scheduler's default). Set: FLUX's, as its pipeline asks for it: sigmas 1 .. 1/steps,
    shifted by `mu` (fixed for the model's one resolution) when the config says `use_dynamic_shifting`."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      **kwargs) -> None:
        if self.mu is not None and "sigmas" not in kwargs:
            kwargs["sigmas"] = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
            kwargs.setdefault("mu", self.mu)
        super().set_timesteps(num_inference_steps, device=device, **kwargs)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        return sample
