"""Text-to-image models: loading (`load_model`), hook points, the DDIM + CFG sampler, label embeddings."""

from atlas.lazy import lazy_face

_NAMES = {
    "TextToImageModel": "atlas.models.base", "pick_device": "atlas.models.device", "pick_dtype": "atlas.models.device",
    "Hooks": "atlas.models.hooks", "StepInfo": "atlas.models.hooks", "step_to_t": "atlas.models.hooks",
    "t_to_step": "atlas.models.hooks", "ModelNotFoundError": "atlas.models.loader", "load_model": "atlas.models.loader",
    "check_model": "atlas.models.loader",
    "generate": "atlas.models.sampler", "sample_latents": "atlas.models.sampler", "SD14_SPEC": "atlas.models.spec",
    "ModelSpec": "atlas.models.spec", "TextEmbedder": "atlas.models.text",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
