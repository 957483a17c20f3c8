"""Sparse autoencoders on diffusion-UNet residual updates: TopK + AuxK model, training, metrics.

    from atlas.sae import SaeConfig, SaeTrainConfig, train_sae, evaluate
    result = train_sae(acts, SaeConfig(d_in=1280, k=20))       # acts: (N, 1280) CPU tensor
    result.sae.save_pretrained("runs/sae/mid", metrics=evaluate(result.sae, held_out))
"""

from atlas.sae.config import SaeConfig, SaeTrainConfig
from atlas.sae.metrics import (
    DeadLatentTracker,
    LatentStats,
    dead_fraction,
    evaluate,
    evaluate_with_stats,
    explained_variance,
    fvu,
    l0,
    latent_stats,
    write_metrics,
)
from atlas.sae.model import EncoderOutput, ForwardOutput, Sae, geometric_median
from atlas.sae.train import TrainResult, train_sae

__all__ = [
    "DeadLatentTracker",
    "EncoderOutput",
    "ForwardOutput",
    "LatentStats",
    "Sae",
    "SaeConfig",
    "SaeTrainConfig",
    "TrainResult",
    "dead_fraction",
    "evaluate",
    "evaluate_with_stats",
    "explained_variance",
    "fvu",
    "geometric_median",
    "l0",
    "latent_stats",
    "train_sae",
    "write_metrics",
]
