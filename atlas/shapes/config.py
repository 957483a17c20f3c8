"""Options of training the shapes model (`atlas shapes train`).

Kept free of heavy imports: the CLI builds its options from it at startup."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ShapesTrainConfig:
    """Options of `atlas shapes train`."""

    run_dir: str = "runs/shapes"
    """Directory for the checkpoint, the loss log and the training config."""
    minutes: float = 60.0
    """Wall-clock budget of this invocation (resuming adds another budget)."""
    max_steps: int = 0
    """Stop at this total step count (0 = no limit)."""
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    """Fraction of captions replaced by the empty prompt, so classifier-free guidance works."""
    grad_clip: float = 1.0
    checkpoint_minutes: float = 5.0
    threads: int = 0
    """Torch CPU threads (0 = torch's default)."""
    seed: int = 0
    init_from: str = ""
    """When the run has no checkpoint yet: start from an exported model directory (e.g. data/shapes),
    continuing its step count, instead of random weights."""
    schedule: str = "zero-snr"
    """Noise schedule of a new run: zero-snr (the shipped weights') or sd (SD v1.4's; its first step sees some
    signal, which first-step layout findings need). A resumed run keeps its own."""
    text_encoder: str = "trained"
    """trained (learned with the UNet) or frozen (kept at its seeded random initialisation, as SD keeps CLIP
    frozen: a jointly trained one learned to map 'left' and 'right' to the same output). With --init-from and
    frozen, only the UNet is loaded. A resumed run keeps its own."""
    fine_cross_attention: bool = False
    """Cross-attention at the 16 x 16 level too (down_blocks.0, up_blocks.2), so that the text reaches the
    resolution where shapes are drawn. With --init-from a model without it, the new attention starts at zero
    (the model first draws what it drew) and learns from there. A resumed run keeps its own."""
    attention_depth: int = 1
    """Transformer layers in each attention block (SD v1.4 has 1 per block but 16 blocks; this model has 4).
    With --init-from a shallower model, the new layers start at zero. A resumed run keeps its own."""
    backbone: str = "unet"
    """Denoiser of a new run: unet (the shipped shapes model's) or dit (a PixArt-style diffusion transformer on an
    8 x 8 grid of image tokens, atlas.shapes.dit), with the same text encoder, pixel space and schedules. A resumed
    run keeps its own; --init-from takes an export of the same backbone."""
    object_count_weights: str = "0.4,0.35,0.25"
    """Relative frequency of training scenes with 1, 2, 3 ... objects, at most 4 (more weight on crowded scenes
    teaches them more often)."""
    shared_colour_fraction: float = 0.0
    """Of the training scenes with two or more objects, the share in which two objects have the same colour
    ('a red square and a red circle', the scenes the model most often draws wrong); 0 leaves it to chance
    (about 2 in 11 two-object scenes)."""
    high_noise_fraction: float = 0.0
    """Fraction of each batch trained at the noisiest 10 % of timesteps. There the noisy image hardly shows where
    the objects are, so only the caption can say it: without this the model reads layout off the noise at every
    other timestep and never learns 'left' or 'top'."""
