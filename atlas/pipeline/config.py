"""Options of the pipeline's jobs: generate, executors, SAE training jobs, build.

Kept free of heavy imports: the CLI builds its options from it at startup."""

from __future__ import annotations

from dataclasses import dataclass, field

from atlas.annotate.config import AnnotateConfig
from atlas.capture.config import StreamConfig
from atlas.errors import BadInputError
from atlas.sae.config import SAE_TYPES, SaeConfig, SaeTrainConfig
from atlas.store.ids import k_variants


@dataclass
class GenerateConfig:
    """Options of `atlas generate`."""

    seed: int = 0
    """Seed of the first image of every prompt; image j of a prompt uses seed + j."""
    n_per_prompt: int = 1
    """Images per prompt (consecutive in the output)."""
    steps: int = 0
    """DDIM steps (0 = the model's default)."""
    guidance: float | None = None
    """Classifier-free guidance scale (unset: the model's own default)."""
    batch_size: int = 32
    """Images denoised together."""


@dataclass
class ExecutorConfig:
    """Where `atlas capture`, `train --all`, `encode` and `build` run their batches or SAEs (see
    atlas.pipeline.executor)."""

    executor: str = "local"
    """local (this process) or ray (batches, or SAEs to train, spread over Ray actors, each loading the model once)."""
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
    """Options of `atlas train`: TopK SAEs per (block, t, branch) of an activation directory, one per k."""

    k: list[int] = field(default_factory=lambda: [SaeConfig.k])
    """Active latents per position (TopK), one SAE per value, all trained in one pass over the activations; the
    first k's SAE is the primary one of its (block, t, branch), each other k's is the variant "k<k>" (the paper:
    10,20)."""
    sae_type: list[str] = field(default_factory=lambda: [SaeConfig.sae_type])
    """SAE types (topk, batchtopk, jumprelu, matryoshka), one SAE per type and k, all trained in one pass: the first
    type's first k is the primary SAE, the others variants named by what differs ("jumprelu", "jumprelu-k20");
    batchtopk, jumprelu and matryoshka fire about k latents per position on average, the atlas keeps at most 4 k."""
    latents: str = f"{SaeConfig.expansion_factor}x"
    """Number of latents: a count (512) or a multiple of the activation width (4x, as in the paper)."""
    lr: float = SaeTrainConfig.lr
    """Adam learning rate (small activation sets need a larger one than the paper's 1e-4)."""
    batch_size: int = SaeTrainConfig.batch_size
    """Positions per optimiser step."""
    epochs: float = 20.0
    """Passes over the training split."""
    min_tokens: int = 0
    """Train on at least this many positions, in more passes over a small split (0 = what the captured images hold:
    --epochs passes over the train split's positions, so a small build trains small SAEs quickly)."""
    dead_tokens: int = SaeConfig.dead_tokens
    """A latent that has not fired for this many positions joins the AuxK loss (0: a fifth of the positions the SAE
    trains on, at most 10M)."""
    seed: int = SaeTrainConfig.seed
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda or cuda:N."""
    buffer_tokens: int = StreamConfig.buffer_tokens
    """Positions held in memory while the shards stream to training, shuffled together (positions x width x the
    stored dtype's bytes, 2 for fp16 and bf16); memory does not grow with the number of positions."""
    checkpoint_minutes: float = SaeTrainConfig.checkpoint_minutes
    """Minutes between checkpoints of an SAE in training (also written on Ctrl-C and SIGTERM); a rerun resumes."""
    retrain: bool = False
    """Train again even when a finished SAE exists (otherwise finished SAEs are kept and an unfinished one resumes)."""

    def __post_init__(self) -> None:
        ks = [self.k] if isinstance(self.k, int) else list(self.k)  # one k may be given as a number
        if not ks or any(int(k) < 1 for k in ks) or len(set(ks)) < len(ks):
            raise BadInputError(f"k: give distinct positive numbers, e.g. 10 or 10,20 (got {self.k})")
        self.k = [int(k) for k in ks]
        types = [self.sae_type] if isinstance(self.sae_type, str) else list(self.sae_type)
        if not types or len(set(types)) < len(types) or any(kind not in SAE_TYPES for kind in types):
            raise BadInputError(f"sae_type: give distinct types of {', '.join(SAE_TYPES)} (got {self.sae_type})")
        self.sae_type = types

    def saes(self) -> list[tuple[str, str, int]]:
        """(variant, SAE type, k) of every SAE of a (block, t, branch), the primary first."""
        pairs = [(kind, k) for kind in self.sae_type for k in self.k]
        return [(variant, kind, k) for variant, (kind, k) in zip(k_variants(self.k, self.sae_type), pairs)]


@dataclass
class BuildConfig:
    """Options of `atlas build`: every stage from prompts to a queryable atlas. An option left unset takes the
    preset's value, else the default of the stage that uses it (`atlas capture`, `atlas train`, the model's own)."""

    atlas: str = ""
    """Atlas directory to build; re-run the same command to resume (empty = $ATLAS_DIR, else ./atlas-data, or
    demo/atlas in a source checkout)."""
    preset: str = "shapes"
    """shapes (the embedded model, CPU, minutes) or sd14 (Stable Diffusion v1.4 with the paper's recipe; GPU)."""
    model: str | None = None
    """Model to load: shapes, shapes-dit (the same world on a diffusion transformer), sd14, sd3-medium, flux-dev,
    flux-schnell, a diffusers directory or a cached Hugging Face id (unset: the preset's)."""
    prompts: str | None = None
    """File with one prompt per line (unset: shapes-world captions, all splits; only a shapes model takes them)."""
    n_images: int | None = None
    """Images to generate (unset: the preset's)."""
    blocks: list[str] | None = None
    """Hook points to capture: aliases (down, mid, up) or module names (unset: the preset's, else capture's)."""
    t: list[float] | None = None
    """Timesteps to capture, t = 1.0 the first denoising step (unset: the preset's, else capture's)."""
    branches: list[str] | None = None
    """CFG halves to capture and train SAEs on: cond, uncond (both: the two) (unset: the preset's, else capture's;
    cond alone on a model without CFG, FLUX)."""
    keys: list[str] | None = None
    """Capture and train only these (block, t, branch), spelled as SAE names (mid/1.0, up/0.0/uncond); replaces
    --blocks, --t and --branches (unset: every combination of those)."""
    dtype: str | None = None
    """Stored precision of the activations: fp16, bf16 or fp32 (unset: capture's)."""
    steps: int | None = None
    """Sampler steps (unset: the model's default: 50 DDIM steps for SD v1.4, 28 for SD3 and FLUX-dev, 4 for
    FLUX-schnell)."""
    guidance: float | None = None
    """Guidance scale: classifier-free, or FLUX-dev's distilled guidance (unset: the model's default: 7.5 for SD v1.4,
    7.0 for SD3, 3.5 for FLUX-dev, none for FLUX-schnell)."""
    k: list[int] | None = None
    """Active latents per position: one SAE per value for every (block, t, branch), the first the primary one (unset:
    the preset's, else `atlas train`'s)."""
    sae_type: list[str] | None = None
    """SAE types (topk, batchtopk, jumprelu, matryoshka): one SAE per type and k, the first type's first k the primary
    one (unset: the preset's, else `atlas train`'s)."""
    latents: str | None = None
    """Latents per SAE: a count or a multiple of the activation width (unset: the preset's, else `atlas train`'s)."""
    lr: float | None = None
    """Adam learning rate of every SAE (unset: the preset's, else `atlas train`'s)."""
    sae_batch_size: int | None = None
    """Positions per SAE optimiser step (unset: the preset's, else `atlas train`'s)."""
    epochs: float | None = None
    """Passes of each SAE over its training positions (unset: the preset's, else `atlas train`'s)."""
    sae_tokens: int | None = None
    """Positions each SAE trains on at least, in several passes over a small capture (unset: the preset's, else
    `atlas train`'s --min-tokens: --epochs passes over what the captured images hold)."""
    annotator: str | None = None
    """Annotator backend: shapes or grounded-sam (unset: the preset's)."""
    any_directory: bool = False
    """Build into --atlas even when it holds files that no atlas has (refused otherwise, so a mistyped --atlas
    does not fill, say, a source checkout's root)."""
    seed: int = 0
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda or cuda:N."""
    threads: int | None = None
    """Torch CPU threads (0 = torch's default, one per core; unset: the preset's, else 0). The shapes preset takes 1:
    its model and SAEs are too small to gain from more, and a thread per core runs many times slower when other
    processes share the CPU (measured: 32 images captured in 16 s on 1 thread, 229 s on 2, at load 17)."""
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    """The annotator's checkpoints (their own options)."""


@dataclass
class SaeBenchConfig:
    """Options of `atlas bench-saes`: the diffusion SAEBench of an atlas's SAEs, and an L0 sweep per SAE type."""

    spliced_images: int = 32
    """Held-out captions generated with each SAE's reconstruction spliced in (0: only the figures on activations)."""
    seed: int = 0
    """Seed of the first generated image (image i uses seed + i) and of the held-out captions."""
    batch_size: int = 16
    """Images denoised together."""
    sweep_k: list[int] = field(default_factory=list)
    """An L0 sweep: train one SAE per k and type of --sweep-types on one key's activations and bench each (empty:
    no sweep)."""
    sweep_types: list[str] = field(default_factory=lambda: list(SAE_TYPES))
    """SAE types of the sweep."""
    sweep_key: str = ""
    """The SAE whose activations and size the sweep takes, by name (mid/1.0/cond; empty: the first primary SAE)."""
    sweep_tokens: int = 0
    """Positions each sweep SAE trains on, in passes over the train split (0: as many as that SAE trained on)."""
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda or cuda:N."""
    threads: int = 1
    """Torch CPU threads (0 = torch's default, one per core): the shapes model and its SAEs gain nothing from more,
    and a thread per core runs many times slower on a shared CPU (as `atlas build --threads`)."""
