"""Hook points on the denoiser's transformer blocks: read or change the residual update delta.

Capture reads delta = output - input of a block at chosen denoising steps; edits return a change
that is added to the block's output. A UNet's Transformer2DModel works on (B, C, H, W) already; a
DiT block's update, one vector per image token (B, N, C), is shown to handlers on the token grid
(B, C, H / patch, W / patch) and their change goes back to the tokens, so every stage sees the same
shapes. SD3's and FLUX's blocks return (text tokens, image tokens): hooks read and change the image
tokens' update only (`TextToImageModel.image_slot`), the text tokens' is excluded. A change that is
exactly zero leaves the output bit-identical, and with no handler active at a step the block runs
untouched.

A run without classifier-free guidance (FLUX: `attach(model, cond_only=True)`) denoises the cond half
alone; handlers still see delta in CFG order, its uncond half zeros (there was no uncond pass: capture
refuses that branch, `TextToImageModel.check_branches`), and only the cond half of their change is applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from atlas.errors import BadInputError

if TYPE_CHECKING:
    from atlas.models.base import TextToImageModel


@dataclass(frozen=True)
class StepInfo:
    """Where the sampler is: step index (0 = first, pure noise), t in [0, 1] (1.0 = first step)."""

    index: int
    n_steps: int
    timestep: int

    @property
    def t(self) -> float:
        return step_to_t(self.index, self.n_steps)


def step_to_t(index: int, n_steps: int) -> float:
    """Step index -> t; the first step is t = 1.0, the last t = 0.0."""
    return 1.0 if n_steps == 1 else 1.0 - index / (n_steps - 1)


def t_to_step(t: float, n_steps: int) -> int:
    """t -> step index as in PAPER.md: round((1 - t) * (n_steps - 1)), halves rounded up (0.5 -> 25 of 50)."""
    if not 0.0 <= t <= 1.0:
        raise BadInputError(f"t must lie in [0, 1] (1.0 is the first step), got {t}")
    return int((1.0 - t) * (n_steps - 1) + 0.5 + 1e-9)


# A handler sees (block alias, step, delta of shape (2B, C, H, W) in CFG order [uncond, cond]; on a cond-only
# run the uncond half is zeros) and returns None (no change) or a tensor of that shape added to the block output.
DeltaHandler = Callable[[str, StepInfo, torch.Tensor], torch.Tensor | None]


def cond_only_change(handler: Callable[[torch.Tensor], torch.Tensor | None],
                     delta: torch.Tensor) -> torch.Tensor | None:
    """The rule for a run without an uncond pass: `handler` sees the cond rows' `delta` (B, ...) in CFG order with
    zeros for the uncond half, [zeros, delta] (2B, ...), and only the cond half of its change (B, ...) applies."""
    change = handler(torch.cat([torch.zeros_like(delta), delta]))
    return None if change is None else change[len(delta):]


@dataclass
class _Registration:
    block: str
    handler: DeltaHandler
    steps: frozenset[int] | None


class Hooks:
    """A set of delta handlers to attach to a model for the duration of one sampling run."""

    def __init__(self) -> None:
        self._registrations: list[_Registration] = []
        self.step: StepInfo | None = None

    def on(self, block: str, handler: DeltaHandler, steps: Iterable[int] | None = None) -> Hooks:
        """Call `handler` at `block` (alias or module name) on the given step indices (None = all)."""
        self._registrations.append(_Registration(block, handler, None if steps is None else frozenset(steps)))
        return self

    def __bool__(self) -> bool:
        return bool(self._registrations)

    def attach(self, model: TextToImageModel, cond_only: bool = False) -> list[torch.utils.hooks.RemovableHandle]:
        """Register forward hooks on the model's denoiser; remove them with `handle.remove()`. `cond_only`: the
        denoiser runs the cond half alone (B, not 2B), shown to handlers as [zeros, cond]."""
        by_module: dict[str, list[_Registration]] = {}
        for reg in self._registrations:
            by_module.setdefault(model.hook_module_name(reg.block), []).append(reg)
        modules = dict(model.denoiser.named_modules())
        return [modules[name].register_forward_hook(self._make_hook(regs, model.token_grid, model.image_slot,
                                                                    cond_only), with_kwargs=True)
                for name, regs in by_module.items()]

    def _make_hook(self, regs: list[_Registration], grid: tuple[int, int] | None, slot: int, cond_only: bool):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            step = self.step
            active = [r for r in regs if step is not None and (r.steps is None or step.index in r.steps)]
            if not active:
                return None
            hidden_in = args[0] if args else kwargs["hidden_states"]
            if isinstance(output, torch.Tensor):  # a DiT block returns its hidden states as they are
                out = output
            else:
                out = output[slot] if isinstance(output, tuple) else output.sample
            delta = out - hidden_in
            if grid is not None:  # tokens (B, N, C) in row-major order -> the token grid (B, C, H, W)
                delta = delta.transpose(1, 2).reshape(delta.shape[0], delta.shape[2], *grid)
            if cond_only:
                change = cond_only_change(lambda pair: self._sum(active, step, pair), delta)
            else:
                change = self._sum(active, step, delta)
            if change is None:
                return None
            if grid is not None:
                change = change.flatten(2).transpose(1, 2)
            new_out = out + change.to(out.dtype)
            if isinstance(output, torch.Tensor):
                return new_out
            if isinstance(output, tuple):
                return (*output[:slot], new_out, *output[slot + 1:])
            output.sample = new_out
            return output

        return hook

    @staticmethod
    def _sum(active: list[_Registration], step: StepInfo, delta: torch.Tensor) -> torch.Tensor | None:
        """The active handlers' changes added up (None when none changes anything)."""
        change = None
        for reg in active:
            result = reg.handler(reg.block, step, delta)
            if result is not None:
                change = result if change is None else change + result
        return change
