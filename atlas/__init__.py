"""Concept Atlas: sparse-autoencoder concept atlases of text-to-image diffusion models.

Everything the `atlas` command does can be done from here, e.g.

    import atlas
    model = atlas.load_model("shapes")
    images = atlas.generate(model, ["a red circle on the left"], seeds=[0])
    store = atlas.open("atlas")                      # a built atlas, read-only
    store.concepts(label="red circle", t=1.0, block="mid")
"""

from atlas.models import Hooks, ModelNotFoundError, TextToImageModel, generate, load_model, t_to_step
from atlas.store import Atlas, open_atlas

open = open_atlas  # noqa: A001 - `atlas.open(path)` reads as the product's name for it

__version__ = "0.1.0"
__all__ = ["Atlas", "Hooks", "ModelNotFoundError", "TextToImageModel", "generate", "load_model", "open", "open_atlas",
           "t_to_step"]
