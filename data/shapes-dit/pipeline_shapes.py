"""A diffusers pipeline for Concept Atlas' pixel-space models (the shapes model), loadable with diffusers alone:

    DiffusionPipeline.from_pretrained("data/shapes", trust_remote_code=True)("a red circle").images[0]

The model works in pixel space: the image in [-1, 1] is folded `pixel_unshuffle` x `pixel_unshuffle` into channels
(no VAE) and, with `coord_channels`, x/y coordinate planes are appended to the denoiser's input. Classifier-free
guidance batches [negative, prompt] and noise is drawn per image on the CPU, as `atlas generate` does, so a seed
gives the same image here as in `atlas`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class ShapesPipeline(DiffusionPipeline):
    """Text-to-image sampling (DDIM, classifier-free guidance) for a pixel-space UNet or DiT denoiser."""

    model_cpu_offload_seq = "text_encoder->unet->transformer"
    _optional_components = ["unet", "transformer"]

    def __init__(self, text_encoder: torch.nn.Module, tokenizer: object, scheduler: object,
                 unet: torch.nn.Module | None = None, transformer: torch.nn.Module | None = None,
                 pixel_unshuffle: int = 2, coord_channels: bool = True, default_steps: int = 20,
                 default_guidance: float = 4.0) -> None:
        super().__init__()
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, unet=unet,
                              transformer=transformer)
        self.register_to_config(pixel_unshuffle=pixel_unshuffle, coord_channels=coord_channels,
                                default_steps=default_steps, default_guidance=default_guidance)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet if self.unet is not None else self.transformer

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        positions = self.text_encoder.config.max_position_embeddings
        length = min(getattr(self.tokenizer, "model_max_length", positions) or positions, positions)
        ids = self.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt")["input_ids"].to(self.device)
        return self.text_encoder(ids)[0].to(self.denoiser.dtype)

    def _predict(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        sample = latents
        if self.config.coord_channels:
            b, _, h, w = latents.shape
            ys = torch.linspace(-1, 1, h, device=latents.device, dtype=latents.dtype)
            xs = torch.linspace(-1, 1, w, device=latents.device, dtype=latents.dtype)
            sample = torch.cat([latents, torch.stack(torch.meshgrid(xs, ys, indexing="xy")).expand(b, 2, h, w)], 1)
        if self.unet is not None:
            return self.unet(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]
        steps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(len(sample))
        return self.transformer(sample, encoder_hidden_states=text, timestep=steps, return_dict=False)[0]

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str = "", num_inference_steps: int | None = None,
                 guidance_scale: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 return_dict: bool = True) -> ImagePipelineOutput | tuple:
        """Generate one image per prompt. `generator` (one per prompt for per-image seeds, on the CPU) fixes the
        noise; steps and guidance default to the model's own (`default_steps`, `default_guidance`)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        steps = num_inference_steps or self.config.default_steps
        guidance = self.config.default_guidance if guidance_scale is None else guidance_scale
        fold = self.config.pixel_unshuffle
        size = self.denoiser.config.sample_size
        side = int(size[0] if isinstance(size, (list, tuple)) else size)
        channels = 3 * fold * fold
        text = self.encode_prompt([negative_prompt] * len(prompts) + prompts)
        dtype = self.denoiser.dtype
        latents = randn_tensor((len(prompts), channels, side, side), generator=generator, device=torch.device("cpu"),
                               dtype=torch.float32)
        latents = (latents * self.scheduler.init_noise_sigma).to(self.device, dtype)
        self.scheduler.set_timesteps(steps, device=self.device)
        for timestep in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(torch.cat([latents, latents]), timestep)
            uncond, cond = self._predict(model_in, timestep, text).chunk(2)
            latents = self.scheduler.step(uncond + guidance * (cond - uncond), timestep, latents,
                                          return_dict=False)[0]
        images = F.pixel_shuffle(latents, fold) if fold > 1 else latents
        images = ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
