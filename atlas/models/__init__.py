"""Text-to-image models: loading (`load_model`), hook points, and the DDIM + CFG sampler."""

from atlas.models.base import TextToImageModel
from atlas.models.device import pick_device, pick_dtype
from atlas.models.hooks import Hooks, StepInfo, step_to_t, t_to_step
from atlas.models.loader import ModelNotFoundError, load_model
from atlas.models.sampler import generate, sample_latents
from atlas.models.spec import SD14_SPEC, ModelSpec

__all__ = ["Hooks", "ModelNotFoundError", "ModelSpec", "SD14_SPEC", "StepInfo", "TextToImageModel", "generate",
           "load_model", "pick_device", "pick_dtype", "sample_latents", "step_to_t", "t_to_step"]
