"""Sparse autoencoders: z = S(W_enc (x - b) + b_enc), x_hat = W_dec^T z + b (shared bias b = b_dec), where the
sparsifier S is the config's `sae_type`:

- topk: the k largest ReLU'd pre-activations of each position;
- batchtopk: the k * B largest of a batch of B positions while training (a position may get more or fewer than
  k, at most `SaeConfig.cap`); at inference the pre-activations above a global threshold, the running mean of the
  smallest selected value during training (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders");
- jumprelu: pre-activations above a learned threshold per latent; the step has no gradient, so the threshold
  learns through the straight-through estimator of Rajamanoharan et al. 2024 (a rectangle kernel of width
  `bandwidth`), with the sparsity loss (L0 / k - 1)^2;
- matryoshka: batchtopk whose loss is the mean FVU of nested prefixes of the dictionary (latents [0, m) for each
  m of `SaeConfig.prefixes`), so early latents learn general concepts (Bussmann et al. 2025).

At inference the last three keep at most `SaeConfig.cap` latents per position (the largest), so every type
encodes to (N, cap) (activation, index) pairs, zeros where fewer fire.

For topk, batchtopk and matryoshka only the encoder's forward is dense over all latents. Its backward and the
decoder touch only the selected latents (gathers, `embedding_bag`, one sparse CSR product), so the cost beyond
the one big matmul grows with k, not with n_latents; AuxK touches only the dead latents. JumpReLU trains
densely: which latents fire is only known after the threshold, whose gradient needs the pre-activations near it.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from atlas.errors import UnavailableError
from atlas.files import atomic_write
from atlas.sae.config import SaeConfig

CONFIG_NAME = "cfg.json"
"""The SAE's config, named and shaped as sparsify's (`SparseCoder.load_from_disk` reads it; it ignores our extra
keys, as `SaeConfig.from_dict` ignores sparsify's)."""
LEGACY_CONFIG_NAME = "config.json"
"""What atlases written before the sparsify layout call the config (still read)."""
SPARSIFY_NAMES = {"W_enc": "encoder.weight", "b_enc": "encoder.bias"}
"""Our parameter names -> sparsify's tensor names in sae.safetensors (W_dec and b_dec are the same in both)."""
DENSE_AUX_DENSITY = 8
"""AuxK goes dense when k_aux * this >= the number of dead latents (selection density >= 1/8)."""
WEIGHTS_NAME = "sae.safetensors"
THRESHOLD_MOMENTUM = 0.9
"""batchtopk, matryoshka: weight of the old inference threshold in its running mean over training batches. 0.99
lagged behind the growing activations of a short run (the shapes world's 20-100 steps): inference L0 8.6 at k = 10
after 20 steps, 9.3 after 100; 0.9 gave 9.9 and 9.9 (up block, 4096 positions)."""


class EncoderOutput(NamedTuple):
    top_acts: Tensor
    """(N, k) activations of the selected latents, >= 0 (0 when fewer than k pre-activations are positive); for the
    types with a varying number per position (N, cap), 0 where fewer fire."""
    top_indices: Tensor
    """(N, k) or (N, cap) int64 indices of the selected latents."""
    pre_acts: Tensor
    """(N, n_latents) pre-ReLU pre-activations, detached; AuxK picks dead latents from them."""


class ForwardOutput(NamedTuple):
    x_hat: Tensor
    """(N, d_in) reconstruction."""
    top_acts: Tensor
    top_indices: Tensor
    fvu: Tensor
    """Fraction of variance unexplained on this batch (the reconstruction loss)."""
    auxk_loss: Tensor
    """AuxK loss: FVU of the residual x - x_hat reconstructed by the top-k_aux dead latents (0 without dead ones)."""
    loss: Tensor
    """The type's training objective besides AuxK: fvu (topk, batchtopk), fvu + l0_coefficient * (L0 / k - 1)^2
    (jumprelu), the mean FVU of the nested prefixes (matryoshka)."""


class _GatherLinear(torch.autograd.Function):
    """values[t, j] = x[t] . W[idx[t, j]] + b[idx[t, j]], read from already computed dense pre-activations.

    The forward is a gather; the backward touches only the gathered rows, so no (N, n_latents) gradient exists.
    Backward runs outside autocast (no custom_bwd) and in the weights' dtype: fp32 master weights under bf16.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, idx)
        return pre.gather(1, idx)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, idx = ctx.saved_tensors
        grad = grad.to(weight.dtype).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, weight, per_sample_weights=grad, mode="sum").to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = sparse_rows_matmul(idx, grad, x.to(weight.dtype), weight.shape[0])
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
            grad_b.index_add_(0, idx.flatten(), grad.flatten())
        return grad_x, grad_w, grad_b, None, None


class _DenseFromPre(torch.autograd.Function):
    """pre = x @ W^T + b returned from an already computed (no-grad) product, with the usual dense backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, pre: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return pre.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        grad_x = (grad @ weight).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_w = grad.T @ x.to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def _rectangle(x: Tensor, theta: Tensor, eps: float) -> Tensor:
    """K((x - theta) / eps) / eps with K the rectangle kernel (1 on (-1/2, 1/2)): the pseudo-derivative of the step."""
    return ((x - theta).abs() < eps / 2).to(x.dtype) / eps


class _JumpReLU(torch.autograd.Function):
    """z = x * H(x - theta); dz/dx = H(x - theta), dz/dtheta = -theta K((x - theta) / eps) / eps (straight-through)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(x, theta)
        ctx.eps = eps
        return x * (x > theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, theta = ctx.saved_tensors
        grad_theta = (-theta * _rectangle(x, theta, ctx.eps) * grad).sum(0)
        return grad * (x > theta), grad_theta, None


class _Step(torch.autograd.Function):
    """H(x - theta); no gradient to x, dH/dtheta = -K((x - theta) / eps) / eps (straight-through)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(x, theta)
        ctx.eps = eps
        return (x > theta).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, theta = ctx.saved_tensors
        return None, (-_rectangle(x, theta, ctx.eps) * grad).sum(0), None


def batch_top(pre: Tensor, k: int, cap: int) -> tuple[Tensor, Tensor, Tensor]:
    """BatchTopK's selection: the k * N largest positive entries of the (N, n) pre-activations, a row keeping at most
    `cap` (its largest; as at inference), as (N, m) indices with a keep mask (m the most a row kept), and the
    smallest selected value (0 when none is positive). Taking each row's top `cap` first keeps the batch-wide top-k
    small (N * cap entries); dropping the columns no row needs keeps the sparse decode and its backward at m."""
    n_rows = pre.shape[0]
    vals, idx = pre.topk(min(cap, pre.shape[1]), dim=1, sorted=False)
    flat = vals.reshape(-1)
    top = flat.topk(min(k * n_rows, flat.numel()), sorted=False)
    positive = top.values > 0
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=pre.device)
    keep[top.indices[positive]] = True
    keep = keep.view(vals.shape)
    smallest = top.values[positive].min() if bool(positive.any()) else pre.new_zeros(())
    m = max(1, int(keep.sum(1).max()))
    if m < keep.shape[1]:
        cols = vals.masked_fill(~keep, -math.inf).topk(m, dim=1, sorted=False).indices
        idx, keep = idx.gather(1, cols), keep.gather(1, cols)
    return idx, keep, smallest


def sparse_rows_matmul(idx: Tensor, values: Tensor, x: Tensor, n_rows: int) -> Tensor:
    """out[r] = sum over (t, j) with idx[t, j] = r of values[t, j] * x[t], as one CSR x dense product.

    This is the weight gradient of a TopK layer. Materialising the (N * k, d) products and `index_add_`-ing
    them (sparsify's way) moves k times the batch through memory; sorting N * k indices and a CSR matmul
    is 4-5x faster on CPU (d 128-1280, k 10-16).
    """
    n, m = idx.shape
    flat = idx.flatten()
    order = torch.argsort(flat)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=idx.device)
    crow[1:] = torch.bincount(flat, minlength=n_rows).cumsum(0)
    cols = torch.div(order, m, rounding_mode="floor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta" and the invariant-check notice
        csr = torch.sparse_csr_tensor(crow, cols, values.flatten()[order], (n_rows, n), check_invariants=False)
    return csr @ x


class Sae(nn.Module):
    """TopK SAE with a shared pre-encoder / decoder bias, unit-norm decoder rows and tied initialisation.

    Row i of `W_dec` is the concept vector of latent i. Inputs of any leading shape (..., d_in) are accepted.
    """

    def __init__(
        self,
        cfg: SaeConfig,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_in = cfg.d_in
        self.n_latents = cfg.num_latents
        # Tied init (OpenAI TopK paper, sparsify): decoder rows = the encoder's rows normalised, so step 0 is
        # close to a projection onto the k best-matching directions. The encoder keeps nn.Linear's scale
        # (uniform +-1/sqrt(d), row norm ~0.58): trained encoder rows settle at norm 0.7-0.85, and starting
        # below 1 gave lower FVU at equal lr than unit rows (toy d=128, 1500 steps: 0.334 vs 0.355).
        bound = self.d_in**-0.5
        w = (torch.rand(self.n_latents, self.d_in, generator=generator, dtype=torch.float32) * 2 - 1) * bound
        self.W_enc = nn.Parameter(w.to(device=device, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(self.n_latents, device=device, dtype=dtype))
        self.W_dec = nn.Parameter((w / w.norm(dim=1, keepdim=True)).to(device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in, device=device, dtype=dtype))
        if cfg.sae_type in ("batchtopk", "matryoshka"):  # -1: not estimated yet (every positive value passes)
            self.register_buffer("threshold", torch.full((), -1.0, device=device, dtype=dtype))
        if cfg.sae_type == "jumprelu":  # both set from the first batch by init_bias
            self.log_threshold = nn.Parameter(torch.full((self.n_latents,), math.log(1e-3), device=device,
                                                         dtype=dtype))
            self.register_buffer("bandwidth", torch.full((), cfg.bandwidth or 1e-4, device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    # --- core ---------------------------------------------------------------------------------------------

    def _pre_acts(self, x_c: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.addmm(self.b_enc, x_c.detach(), self.W_enc.T)

    def _select(self, x_c: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
        """ReLU'd activations at idx, differentiable w.r.t. x_c and the encoder only where autograd needs it."""
        if torch.is_grad_enabled() and (x_c.requires_grad or self.W_enc.requires_grad or self.b_enc.requires_grad):
            return F.relu(_GatherLinear.apply(x_c, self.W_enc, self.b_enc, pre, idx))
        return F.relu(pre.gather(1, idx))

    def thresholds(self) -> Tensor | None:
        """The inference threshold: per latent (jumprelu), global (batchtopk, matryoshka), None for topk."""
        if self.cfg.sae_type == "jumprelu":
            return self.log_threshold.exp()
        return getattr(self, "threshold", None)

    def _infer(self, x_c: Tensor, pre: Tensor) -> tuple[Tensor, Tensor]:
        """(activations, indices) of the inference rule: topk, or the at most `cap` largest above the threshold."""
        idx = pre.topk(self.cfg.cap, dim=1, sorted=False).indices
        acts = self._select(x_c, pre, idx)
        theta = self.thresholds()
        if theta is None:
            return acts, idx
        above = pre.gather(1, idx) > (theta[idx] if theta.ndim else theta).detach()
        return acts * above, idx

    def encode(self, x: Tensor) -> EncoderOutput:
        """Select the k largest pre-activations of each token (other types: their inference rule, see the module).

        TopK is taken before the ReLU: ReLU is monotone, so the selected values are identical and a full
        (N, n_latents) ReLU pass is saved; ties among non-positive entries only change which zero is reported.
        """
        x = x.reshape(-1, self.d_in).to(self.dtype)
        x_c = x - self.b_dec
        pre = self._pre_acts(x_c)
        return EncoderOutput(*self._infer(x_c, pre), pre)

    def decode(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """Sparse decode: sum_j top_acts[t, j] * W_dec[top_indices[t, j]] + b_dec, without a dense z."""
        out = F.embedding_bag(top_indices, self.W_dec, per_sample_weights=top_acts.to(self.W_dec.dtype), mode="sum")
        return out + self.b_dec

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        """Reconstruct x; with a boolean `dead_mask` (n_latents,) also compute the AuxK loss of the dead latents."""
        shape = x.shape
        x = x.reshape(-1, self.d_in).to(self.dtype)
        x_c = x - self.b_dec
        pre = self._pre_acts(x_c)
        kind = self.cfg.sae_type
        total_variance = (x - x.mean(0)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
        sparsity = None
        if self.training and kind == "jumprelu":
            x_hat, top_acts, top_idx, sparsity = self._jumprelu_train(x_c, pre)
        else:
            if self.training and kind in ("batchtopk", "matryoshka"):
                top_idx, keep, smallest = batch_top(pre, self.cfg.k, self.cfg.cap)
                top_acts = self._select(x_c, pre, top_idx) * keep
                self._track_threshold(smallest)
            else:
                top_acts, top_idx = self._infer(x_c, pre)
            x_hat = self.decode(top_acts, top_idx)

        x_hat = x_hat.to(x.dtype)
        err = x - x_hat
        fvu = err.pow(2).sum() / total_variance
        if kind == "matryoshka":
            loss = torch.stack([(x - self.decode(top_acts * (top_idx < end), top_idx).to(x.dtype)).pow(2).sum()
                                for end in self.cfg.prefixes()[:-1]] + [err.pow(2).sum()]).mean() / total_variance
        else:
            loss = fvu if sparsity is None else fvu + self.cfg.l0_coefficient * sparsity
        auxk_loss = self._auxk_loss(x_c.detach(), pre, err.detach(), dead_mask)
        return ForwardOutput(x_hat.reshape(shape), top_acts, top_idx, fvu, auxk_loss, loss)

    def _jumprelu_train(self, x_c: Tensor, pre: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Dense JumpReLU: reconstruction, the firing latents as (N, m) pairs and the sparsity loss (L0 / k - 1)^2."""
        theta = self.log_threshold.exp()
        eps = float(self.bandwidth)
        pre_grad = _DenseFromPre.apply(x_c, self.W_enc, self.b_enc, pre)
        z = _JumpReLU.apply(pre_grad, theta, eps)
        l0_mean = _Step.apply(pre_grad, theta, eps).sum(1).mean()
        x_hat = z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        fired = z.detach()
        top_acts, top_idx = fired.topk(max(1, int((fired > 0).sum(1).max())), dim=1, sorted=False)
        return x_hat, top_acts, top_idx, (l0_mean / self.cfg.k - 1).pow(2)

    @torch.no_grad()
    def _track_threshold(self, smallest: Tensor) -> None:
        """Move the inference threshold towards this batch's smallest selected activation (running mean)."""
        if float(smallest) <= 0:
            return
        value = smallest.to(self.threshold.dtype)
        self.threshold.copy_(value if float(self.threshold) < 0 else
                             THRESHOLD_MOMENTUM * self.threshold + (1 - THRESHOLD_MOMENTUM) * value)

    def _auxk_loss(self, x_c: Tensor, pre: Tensor, residual: Tensor, dead_mask: Tensor | None) -> Tensor:
        """FVU of the residual explained by the top-k_aux dead latents (OpenAI's normalised AuxK).

        Normalising by the residual's own variance (not the input's, as sparsify does) keeps the term O(1) as
        the main loss falls, so alpha = 1/32 keeps its meaning through training. Gradients reach the dead
        latents' encoder rows too (sparsify's fused encoder drops them), which is what makes them fire again;
        x is detached so AuxK does not move the shared bias.
        """
        zero = residual.new_zeros(())
        if dead_mask is None:
            return zero
        dead = dead_mask.nonzero().squeeze(1)
        n_dead = dead.numel()
        if n_dead == 0:
            return zero
        k_aux = min(self.cfg.k_aux, n_dead)
        pre_dead = pre.index_select(1, dead)
        if k_aux * DENSE_AUX_DENSITY >= n_dead:
            e_hat = self._auxk_dense(x_c, pre_dead, dead, k_aux)
        else:
            aux_idx = dead[pre_dead.topk(k_aux, dim=1, sorted=False).indices]
            aux_acts = self._select(x_c, pre, aux_idx).to(self.W_dec.dtype)
            e_hat = F.embedding_bag(aux_idx, self.W_dec, per_sample_weights=aux_acts, mode="sum")
        variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(torch.finfo(residual.dtype).tiny)
        return (e_hat.to(residual.dtype) - residual).pow(2).sum() / variance

    def _auxk_dense(self, x_c: Tensor, pre_dead: Tensor, dead: Tensor, k_aux: int) -> Tensor:
        """AuxK through dense (N, n_dead) products, for when most dead latents are selected for every token.

        Then a gather/scatter per selected entry moves more memory than a matmul over all dead latents does
        (BLAS runs ~8x more FLOP/s than embedding_bag on CPU); the selection becomes a 0/1 mask.
        """
        w_enc = self.W_enc.index_select(0, dead)
        b_enc = self.b_enc.index_select(0, dead)
        acts = F.relu(_DenseFromPre.apply(x_c, w_enc, b_enc, pre_dead))
        n_drop = pre_dead.shape[1] - k_aux
        if 0 < n_drop < k_aux:  # cheaper to find the few that are left out
            keep = torch.ones_like(pre_dead, dtype=acts.dtype)
            keep.scatter_(1, pre_dead.topk(n_drop, dim=1, largest=False, sorted=False).indices, 0.0)
            acts = acts * keep
        elif n_drop > 0:
            keep = torch.zeros_like(pre_dead, dtype=acts.dtype)
            keep.scatter_(1, pre_dead.topk(k_aux, dim=1, sorted=False).indices, 1.0)
            acts = acts * keep
        return acts.to(self.W_dec.dtype) @ self.W_dec.index_select(0, dead)

    # --- training helpers -----------------------------------------------------------------------------------

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Keep concept vectors unit-norm, so activations carry the scale and the TopK comparison is fair."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Drop the radial part of W_dec's gradient: the norm is reset each step anyway, so it only adds noise
        to Adam's moment estimates."""
        if self.W_dec.grad is None:
            return
        parallel = torch.einsum("nd,nd->n", self.W_dec.grad, self.W_dec)
        self.W_dec.grad.addcmul_(parallel.unsqueeze(1), self.W_dec, value=-1.0)

    @torch.no_grad()
    def init_bias(self, sample: Tensor, method: str | None = None, iters: int = 20) -> None:
        """Start b at the geometric median (a few Weiszfeld steps; robust to outlier tokens) or mean of `sample`;
        a JumpReLU SAE also starts every threshold where k latents per position of `sample` fire on average (and
        its bandwidth, unless configured, at a tenth of that)."""
        method = method or self.cfg.b_init
        x = sample.reshape(-1, self.d_in).to(device=self.device, dtype=torch.float32)
        b = geometric_median(x, iters=iters) if method == "geometric_median" else x.mean(0)
        self.b_dec.copy_(b.to(self.dtype))
        if self.cfg.sae_type == "jumprelu":
            pre = self._pre_acts(x.to(self.dtype) - self.b_dec).reshape(-1)
            n_fire = min(self.cfg.k * x.shape[0], pre.numel() - 1)  # the next value: exactly n_fire are above it
            theta = pre.topk(n_fire + 1).values[-1].clamp_min(1e-6)
            self.log_threshold.fill_(float(theta.log()))
            self.bandwidth.fill_(self.cfg.bandwidth or 0.1 * float(theta))

    # --- persistence ----------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write config.json + sae.safetensors to the directory, each atomically (atlas.sae.metrics.write_metrics
        adds stats.parquet and metrics.json beside them)."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        sparsify = {"activation": self.cfg.sae_type, "normalize_decoder": True, "num_latents": self.n_latents,
                    "multi_topk": False, "skip_connection": False, "transcode": False}
        config = json.dumps({"_class_name": "Sae", **sparsify, **self.cfg.to_dict()}, indent=2) + "\n"
        atomic_write(path / CONFIG_NAME, lambda tmp: tmp.write_text(config))
        tensors = {SPARSIFY_NAMES.get(name, name): p.detach().contiguous().cpu()
                   for name, p in self.state_dict().items()}
        atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None) -> Sae:
        """Load what `save_pretrained` wrote (or an older atlas's config.json + W_enc/b_enc, or sparsify's
        `save_to_disk` of a TopK SAE); weights keep their stored dtype. A checkpoint that is missing, cut or not an
        SAE's is an UnavailableError naming it (one line), not a traceback."""
        from safetensors import SafetensorError

        path = Path(directory)
        try:
            cfg = SaeConfig.from_dict(read_config(path))
            ours = {value: key for key, value in SPARSIFY_NAMES.items()}
            tensors = {ours.get(name, name): tensor
                       for name, tensor in load_file(str(path / WEIGHTS_NAME), device=str(device or "cpu")).items()}
            sae = cls(cfg, device="meta", dtype=tensors["W_enc"].dtype)
            sae.load_state_dict(tensors, assign=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UnavailableError(f"the SAE checkpoint {path} is missing or corrupt ({type(err).__name__}: "
                                   f"{detail}); retrain it with `atlas train`") from None
        return sae


def read_config(directory: str | Path) -> dict[str, Any]:
    """The config dict of the SAE saved in `directory`: cfg.json, or an older atlas's config.json. A sparsify
    config names the latent count `num_latents` (0 = expansion_factor * d_in), ours `n_latents`: both give it."""
    path = Path(directory)
    name = CONFIG_NAME if (path / CONFIG_NAME).exists() else LEGACY_CONFIG_NAME
    config = json.loads((path / name).read_text())
    config.setdefault("n_latents", config.get("num_latents", 0))
    return config


def geometric_median(x: Tensor, iters: int = 20, tol: float = 1e-6) -> Tensor:
    """Weiszfeld iterations from the mean; the point minimising the summed Euclidean distance to the rows."""
    x = x.to(torch.float32)
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-8)
        m_new = (w.unsqueeze(1) * x).sum(0) / w.sum()
        shift = (m_new - m).norm()
        m = m_new
        if shift <= tol * m.norm().clamp_min(1.0):
            break
    return m
