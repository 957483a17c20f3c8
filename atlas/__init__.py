"""Concept Atlas: sparse-autoencoder concept atlases of text-to-image diffusion models.

Everything the `atlas` command does can be done from here, e.g.

    import atlas
    model = atlas.load_model("shapes")
    images = atlas.generate(model, ["a red circle on the left"], seeds=[0])
"""

from atlas.models import Hooks, ModelNotFoundError, TextToImageModel, generate, load_model, t_to_step

__version__ = "0.1.0"
__all__ = ["Hooks", "ModelNotFoundError", "TextToImageModel", "generate", "load_model", "t_to_step"]
