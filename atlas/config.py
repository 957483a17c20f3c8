"""Typed configuration of every job; the attribute docstrings are the CLI's --help text.

Kept free of heavy imports so that `atlas --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerateConfig:
    """Options of `atlas generate`."""

    seed: int = 0
    """Seed of the first image of every prompt; image j of a prompt uses seed + j."""
    n_per_prompt: int = 1
    """Images per prompt (consecutive in the output)."""
    steps: int = 0
    """DDIM steps (0 = the model's default)."""
    guidance: float = -1.0
    """Classifier-free guidance scale (negative = the model's default)."""
    batch_size: int = 32
    """Images denoised together."""


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


@dataclass
class CaptureConfig:
    """Options of `atlas capture`."""

    blocks: str = "down,mid,up"
    """Hook points: aliases (down, mid, up) or UNet module names, comma separated."""
    t: str = "1.0,0.5,0.0"
    """Timesteps to record, comma separated; t = 1.0 is the first denoising step (pure noise)."""
    branches: str = "cond,uncond"
    """CFG halves to record: cond, uncond or both."""
    steps: int = 0
    """DDIM steps (0 = the model's default)."""
    guidance: float = -1.0
    """Classifier-free guidance scale (negative = the model's default)."""
    seed: int = 0
    """Image i is generated with seed + i."""
    batch_size: int = 32
    """Images per batch; one shard per (block, t, branch) and batch, so memory stays bounded."""


@dataclass
class ExecutorConfig:
    """Where `atlas capture`, `encode` and `build` run their batches (see atlas.jobs.executor)."""

    executor: str = "local"
    """local (this process) or ray (batches spread over Ray actors, each loading the model once)."""
    ray_address: str = ""
    """ray: address of a running cluster (auto, or ray://head:10001); empty = a local Ray instance for this run."""
    actors: int = 0
    """ray: number of actors (0 = as many as the cluster's CPUs and GPUs hold)."""
    num_gpus_per_actor: float = -1.0
    """ray: GPUs per actor (negative = 1 when the cluster has GPUs, else 0: CPU actors)."""
    num_cpus_per_actor: float = 1.0
    """ray: CPUs per actor; a CPU actor runs torch on this many threads."""


@dataclass
class SaeJobConfig:
    """Options of `atlas train`: one TopK SAE per (block, t, branch) of an activation directory."""

    k: int = 10
    """Active latents per position (TopK); the paper uses 10 and 20."""
    latents: str = "4x"
    """Number of latents: a count (512) or a multiple of the activation width (4x, as in the paper)."""
    lr: float = 1e-3
    """Adam learning rate (small activation sets need a larger one than the paper's 1e-4)."""
    batch_size: int = 1024
    """Positions per optimiser step."""
    epochs: float = 20.0
    """Passes over the training split."""
    min_tokens: int = 1_000_000
    """Train on at least this many positions (more passes when the split is small)."""
    dead_tokens: int = 200_000
    """A latent that has not fired for this many positions joins the AuxK loss."""
    seed: int = 0
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda or cuda:N."""
    retrain: bool = False
    """Train again even when a checkpoint exists (otherwise finished SAEs are kept, so a rerun resumes)."""


@dataclass
class BuildConfig:
    """Options of `atlas build`: every stage from prompts to a queryable atlas."""

    atlas: str = ""
    """Atlas directory to build; re-run the same command to resume (empty = $ATLAS_DIR, else ./atlas, or
    demo/atlas in a source checkout)."""
    preset: str = "shapes"
    """shapes (the embedded model, CPU, minutes) or sd14 (Stable Diffusion v1.4 with the paper's settings; GPU)."""
    model: str = ""
    """Model to load (empty = the preset's)."""
    prompts: str = ""
    """File with one prompt per line (empty = shapes-world captions, all splits)."""
    n_images: int = 0
    """Images to generate (0 = the preset's: 640 for shapes)."""
    branches: str = "cond"
    """CFG halves to capture and train SAEs on: cond, uncond or both."""
    steps: int = 0
    """DDIM steps (0 = the model's default)."""
    guidance: float = -1.0
    """Classifier-free guidance scale (negative = the model's default)."""
    k: int = 10
    """Active latents per position of every SAE."""
    latents: str = "4x"
    """Latents per SAE: a count or a multiple of the activation width."""
    sae_tokens: int = 1_000_000
    """Positions each SAE trains on (several passes over a small capture)."""
    annotator: str = ""
    """Annotator backend (empty = the preset's: shapes, or grounded-sam for sd14)."""
    seed: int = 0
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda or cuda:N."""
    threads: int = 0
    """Torch CPU threads (0 = torch's default)."""
