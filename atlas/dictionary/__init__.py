"""The concept dictionary: which SAE latents depict which objects (`link`), and storing it (`link_atlas`)."""

from atlas.lazy import lazy_face

_NAMES = {"LinkConfig": "atlas.dictionary.config", "link": "atlas.dictionary.link",
          "link_atlas": "atlas.dictionary.run"}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
