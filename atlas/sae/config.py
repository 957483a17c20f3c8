"""Configuration of a sparse autoencoder (TopK, BatchTopK, JumpReLU, Matryoshka-BatchTopK) and of its training;
the attribute docstrings are the CLI's --help text.

Kept free of torch imports so that `atlas --help` stays instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from atlas.errors import BadInputError

SAE_TYPES = ("topk", "batchtopk", "jumprelu", "matryoshka")
"""The SAE types atlas.sae.Sae implements; "topk" is the paper's."""


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
    """Shape and loss of one SAE (arXiv 2504.15473's TopK: n_latents = 4 d, k in {10, 20}, AuxK 1/32 with k_aux 256).

    Every type keeps AuxK, the unit-norm decoder and the shared bias; they differ in which latents fire.
    """

    sae_type: Literal["topk", "batchtopk", "jumprelu", "matryoshka"] = "topk"
    """topk: the k largest per position. batchtopk: the k * B largest over a batch of B positions while training,
    a learned global threshold at inference (Bussmann et al. 2024). jumprelu: a learned threshold per latent,
    trained through straight-through gradients of the step towards L0 = k (Rajamanoharan et al. 2024).
    matryoshka: batchtopk whose nested prefixes of the dictionary must each reconstruct on their own (Bussmann et
    al. 2025). The last three fire a varying number per position: the atlas stores at most max_active of them."""

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
    max_active: int = 0
    """batchtopk, jumprelu, matryoshka: most latents kept per position at inference, the largest (0: 4 * k); the
    codes of the atlas hold this many at most."""
    l0_coefficient: float = 1.0
    """jumprelu: weight of the sparsity loss (L0 / k - 1)^2 that steers the mean L0 towards k."""
    bandwidth: float = 0.0
    """jumprelu: width of the straight-through estimator's rectangle kernel (0: a tenth of the initial threshold,
    which is set from the first batch so that k latents per position fire)."""
    matryoshka_groups: int = 4
    """matryoshka: nested prefixes of the dictionary, each double the previous (4: n/8, n/4, n/2, n latents)."""

    def __post_init__(self) -> None:
        if self.b_init not in ("geometric_median", "mean"):
            raise BadInputError(f"b_init must be 'geometric_median' or 'mean', got {self.b_init!r}")
        if not 0 < self.k <= self.num_latents:
            raise BadInputError(f"k must be in [1, {self.num_latents}], got {self.k}")
        if self.k_aux < 1 or self.auxk_alpha < 0 or self.dead_tokens < 0:
            raise BadInputError("k_aux must be positive, dead_tokens and auxk_alpha non-negative")
        if self.sae_type not in SAE_TYPES:
            raise BadInputError(f"sae_type must be one of {', '.join(SAE_TYPES)}, got {self.sae_type!r}")
        if self.max_active < 0 or self.l0_coefficient < 0 or self.bandwidth < 0 or self.matryoshka_groups < 1:
            raise BadInputError("max_active, l0_coefficient and bandwidth must be non-negative, matryoshka_groups "
                                "positive")

    @property
    def cap(self) -> int:
        """Most latents one position keeps at inference: k for topk, else max_active (0: 4 * k), at most all."""
        if self.sae_type == "topk":
            return self.k
        return min(self.max_active or 4 * self.k, self.num_latents)

    def prefixes(self) -> list[int]:
        """matryoshka: the ends of the nested prefixes of the dictionary, the last the whole (others: [n])."""
        n = self.num_latents
        if self.sae_type != "matryoshka":
            return [n]
        return sorted({max(1, n >> (self.matryoshka_groups - 1 - g)) for g in range(self.matryoshka_groups)})

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
