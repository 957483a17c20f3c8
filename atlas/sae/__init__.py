"""Sparse autoencoders on diffusion-UNet residual updates: TopK + AuxK model, training, metrics.

    from atlas.sae import SaeConfig, SaeTrainConfig, train_sae, evaluate, write_metrics
    result = train_sae(acts, SaeConfig(d_in=1280, k=20))       # acts: (N, 1280) CPU tensor or a TokenStream
    result.sae.save_pretrained("runs/sae/mid")
    write_metrics(result.sae, "runs/sae/mid", metrics=evaluate(result.sae, held_out))
"""

from atlas.lazy import lazy_face

_METRICS = ("DeadLatentTracker", "LatentStats", "bench_metrics", "dead_fraction", "decoder_cosines", "evaluate",
            "evaluate_with_stats", "explained_variance", "frequency_counts", "fvu", "l0", "latent_stats",
            "write_metrics")
_NAMES = {
    "SaeConfig": "atlas.sae.config", "SaeTrainConfig": "atlas.sae.config",
    **dict.fromkeys(_METRICS, "atlas.sae.metrics"),
    **dict.fromkeys(("EncoderOutput", "ForwardOutput", "Sae", "geometric_median"), "atlas.sae.model"),
    **dict.fromkeys(("TensorStream", "TokenStream", "TrainResult", "train_sae", "train_saes"), "atlas.sae.train"),
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
