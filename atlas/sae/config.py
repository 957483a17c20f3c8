"""Configuration of a TopK sparse autoencoder and of its training; the attribute docstrings are the CLI's --help text.

Kept free of torch imports so that `atlas --help` stays instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from atlas.errors import BadInputError


def parse_latents(text: str, d_in: int | None = None) -> int:
    """A number of latents written as a count ('512') or a multiple of the activation width ('4x' -> 4 * d_in);
    raises BadInputError with the reason for anything else. Without `d_in` only the notation is checked (the CLI
    does, before any work) and the multiple is returned as if d_in were 1. The one parser of this notation."""
    value = str(text).strip().lower()
    try:
        number = float(value[:-1]) if value.endswith("x") else int(value)
    except ValueError:
        number = 0
    if not 0 < number < float("inf"):
        raise BadInputError(f"--latents {text!r}: give a positive count (512) or a multiple of the width (4x)")
    if value.endswith("x") and d_in is not None:
        number *= d_in
    if d_in is not None and int(number) < 1:
        raise BadInputError(f"--latents {text!r} gives no latent for width {d_in}")
    return int(number)


@dataclass
class SaeConfig:
    """Shape and loss of one TopK SAE (arXiv 2504.15473: n_latents = 4 d, k in {10, 20}, AuxK 1/32 with k_aux 256)."""

    d_in: int = 1280
    """Width of the activations (1280 for SD v1.4's down/mid/up cross-attention blocks)."""
    n_latents: int = 0
    """Number of latents (concepts); 0 = expansion_factor * d_in."""
    expansion_factor: int = 4
    """Latents per input dimension, used when n_latents is 0 (the paper: 4)."""
    k: int = 10
    """Active latents per token (TopK; the paper trains k = 10 and k = 20)."""
    k_aux: int = 256
    """Dead latents that reconstruct the residual in the AuxK loss (capped at the number of dead latents)."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss; 0 disables it (and dead-latent revival with it)."""
    dead_tokens: int = 0
    """A latent that has not fired for this many training tokens is dead and joins the AuxK loss (0: a fifth of
    the run's training tokens, at most 10M, the usual rule at the paper's scale; see `dead_after`)."""
    b_init: Literal["geometric_median", "mean"] = "geometric_median"
    """How the shared bias b starts: geometric median (robust to outlier tokens) or mean of the first batch."""

    def __post_init__(self) -> None:
        if self.b_init not in ("geometric_median", "mean"):
            raise BadInputError(f"b_init must be 'geometric_median' or 'mean', got {self.b_init!r}")
        if not 0 < self.k <= self.num_latents:
            raise BadInputError(f"k must be in [1, {self.num_latents}], got {self.k}")
        if self.k_aux < 1 or self.auxk_alpha < 0 or self.dead_tokens < 0:
            raise BadInputError("k_aux must be positive, dead_tokens and auxk_alpha non-negative")

    def dead_after(self, n_tokens: int) -> int:
        """The dead-latent threshold of a run of `n_tokens` training tokens (0 = unknown length)."""
        if self.dead_tokens:
            return self.dead_tokens
        return min(10_000_000, max(1, n_tokens // 5)) if n_tokens else 10_000_000

    @property
    def num_latents(self) -> int:
        """The resolved number of latents."""
        return self.n_latents or self.expansion_factor * self.d_in

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_latents": self.num_latents}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SaeConfig:
        """Build from a config.json dict, ignoring keys written by other versions."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in d.items() if key in names})


@dataclass
class SaeTrainConfig:
    """Options of SAE training (Adam, AuxK, decoder kept at unit norm)."""

    lr: float = 1e-3
    """Adam learning rate. Runs of a few million tokens or fewer (the shapes world) need more movement per step
    than the paper's 1e-4 for 13-51M tokens; at 5120 latents 4e-4 (about sparsify's rule 2e-4 /
    sqrt(n_latents / 2^14)) trains stably."""
    lr_warmup_steps: int = 0
    """Steps of linear learning-rate warm-up from 0."""
    lr_decay_fraction: float = 0.2
    """Final fraction of the steps over which the learning rate decays linearly to 0 (needs a known length)."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    batch_size: int = 1024
    """Tokens per optimiser step (the paper: 4096)."""
    n_tokens: int = 0
    """Training tokens; 0 = epochs * number of tokens in the data."""
    epochs: float = 1.0
    """Passes over the data when n_tokens is 0 (the paper: 1)."""
    seed: int = 0
    """Seed of the initialisation and of a tensor's shuffling (the first SAE's when several train in one pass)."""
    device: str = "auto"
    """Torch device; "auto" = CUDA when available, else CPU."""
    autocast: bool = True
    """bf16 autocast on CUDA (master weights stay fp32); the CPU always computes in fp32."""
    threads: int = 0
    """Torch CPU threads (0 = leave torch's setting)."""
    log_every: int = 50
    """Steps between history entries (averaged over the steps in between)."""
    checkpoint_minutes: float = 30.0
    """Minutes between checkpoints of a run given a checkpoint directory (it also writes one on SIGINT, SIGTERM
    and at the end)."""
