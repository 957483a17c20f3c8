"""Concept evolution over denoising: each concept's life over the captured timesteps (`Trajectories`, `life`) and
its lineage, links to the concepts of the neighbouring timestep's SAE (`Coactivation`, `lineage_links`)."""

from atlas.lazy import lazy_face

_NAMES = {"EvolveConfig": "atlas.evolution.config",
          **dict.fromkeys(("Coactivation", "Trajectories", "decoder_cosine", "life", "lineage_links"),
                          "atlas.evolution.measure")}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
