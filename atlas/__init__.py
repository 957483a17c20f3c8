"""Concept Atlas: sparse-autoencoder concept atlases of text-to-image diffusion models.

Everything the `atlas` command does can be done from here, e.g.

    import atlas
    model = atlas.load_model("shapes")
    images = atlas.generate(model, ["a red circle on the left"], seeds=[0])
    store = atlas.open()                             # the default atlas, read-only; or atlas.open(path)
    store.concepts(label="red circle", t=1.0, block="mid")

The face is lazy: `import atlas` loads nothing heavy; each name loads its room on first use.
"""

from atlas.lazy import lazy_face

__version__ = "0.1.0"
_NAMES = {
    "AtlasError": "atlas.errors",
    "Atlas": "atlas.store", "open_atlas": "atlas.store", "open": "atlas.store:open_atlas",
    "Hooks": "atlas.models", "ModelNotFoundError": "atlas.models", "TextToImageModel": "atlas.models",
    "generate": "atlas.models", "load_model": "atlas.models", "t_to_step": "atlas.models",
    "edit": "atlas.pipeline.edits",
    "build": "atlas.pipeline.build:build_atlas",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
