"""Adding an object the prompt lacks: detect, then replace (PER-style), with a donor read of the same latents.

The coefficient rule (atlas.edit.core) moves what the prompt already has; it cannot add a yellow circle to "a blue
square": in the shapes model the objects' identity enters only through the cross-attention blocks, and the last steps
repaint anything the text does not name (bench/RESULTS.md, adding concepts). An add edit therefore takes the object
from a donor text and keeps everything else from the unedited run:

    detect   the unedited image's objects (the caller's finder, e.g. the atlas's annotator) are kept out of the
             region, so an object of the prompt that reaches into the region is kept
    donor    at every step the same latents are also read with the donor text ("a yellow circle at the top left
             and a blue square"): its conditional update in the region's cells is what "add the object here" means
    replace  in the region's cells of every edited block, on the window's steps, the conditional update moves from
             the prompt's towards the donor's: delta + strength * (delta_donor - delta)
    keep     outside the region (and on the kept objects) the latents follow the unedited run step by step

Rows of one batch, per image: unedited uncond and cond, edited uncond and cond, then one donor row per add edit. A
model without classifier-free guidance (FLUX) has no uncond rows: unedited cond, edited cond, the donors; its concept
edits see [zeros, cond] and apply their cond half, as `atlas.models.hooks` shows them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from atlas.edit.config import DONOR_TEXT
from atlas.edit.core import NAMED_REGIONS, REGION_COVERAGE, ConceptEdit, box_mask
from atlas.errors import BadInputError
from atlas.grids import mask_to_grid
from atlas.models import TextToImageModel
from atlas.models.hooks import Hooks, StepInfo, cond_only_change
from atlas.models.sampler import initial_noise

KEEP_COVERAGE = 0.01
"""A grid cell belongs to a kept object when the object (grown by a pixel) covers any of it."""
WHERE = {name: ("on the " if name in ("left", "right") else "at the ") + name for name in NAMED_REGIONS}
"""How a donor text says where (the named region nearest the edit's region)."""


@dataclass
class AddEdit:
    """One object to add: `label` into the (H, W) bool `region` of the image, reaching at most `margin` pixels past
    it, on the `steps` of the blocks `blocks`; `keep` marks the unedited image's objects (H, W), left alone."""

    label: str
    region: np.ndarray
    blocks: Sequence[str]
    steps: Sequence[int]
    strength: float
    margin: int = 0
    keep: np.ndarray | None = None
    donor: str = DONOR_TEXT
    _cells: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.region = np.asarray(self.region, bool)
        if not self.region.any():
            raise BadInputError("an add edit needs a region with at least one pixel")
        if not self.steps:
            raise BadInputError("the edit's window holds no denoising step")
        if not self.blocks:
            raise BadInputError("an add edit needs at least one block")
        grown = ndimage.binary_dilation(self.region, iterations=self.margin) if self.margin else self.region
        kept = np.zeros_like(self.region) if self.keep is None else ndimage.binary_dilation(np.asarray(self.keep, bool))
        self._grown, self._kept = grown, kept

    def text(self, prompt: str) -> str:
        return self.donor.format(label=self.label, where=where_words(self.region), prompt=prompt).strip()

    def cells(self, grid: tuple[int, int]) -> torch.Tensor:
        """The cells of a (h, w) grid the donor writes: the grown region's (half a cell or more), less any cell a
        kept object touches."""
        if grid not in self._cells:
            self._cells[grid] = torch.as_tensor(mask_to_grid(self._grown, grid, REGION_COVERAGE)
                                                & ~mask_to_grid(self._kept, grid, KEEP_COVERAGE))
        return self._cells[grid]


def where_words(region: np.ndarray) -> str:
    """The named region that overlaps `region` best (by IoU), in words: "at the top left"."""
    size = region.shape[0]

    def iou(name: str) -> float:
        box = box_mask(NAMED_REGIONS[name], size)
        return (box & region).sum() / max((box | region).sum(), 1)

    return WHERE[max(NAMED_REGIONS, key=iou)]


@dataclass
class _Rows:
    """Where one image's rows sit in the batch (no uncond rows without classifier-free guidance)."""

    uncond: int | None
    cond: int
    edit_uncond: int | None
    edit_cond: int
    donors: list[int]

    @classmethod
    def at(cls, first: int, donors: int, cfg: bool) -> _Rows:
        """The rows of an image whose first row is `first`: [uncond,] cond, [edited uncond,] edited cond, donors."""
        plain = 2 if cfg else 1
        edited = first + plain
        return cls(first if cfg else None, edited - 1, edited if cfg else None, edited + plain - 1,
                   list(range(edited + plain, edited + plain + donors)))

    def latents(self, unedited: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        """This image's rows of the batch: its unedited latents on the plain rows, its edited ones on the rest."""
        plain = self.edit_cond - self.cond
        return torch.stack([unedited] * plain + [edited] * (plain + len(self.donors)))


class _Replace:
    """The hook on every edited block: donors replace the edited cond row in their cells, concept edits add theirs."""

    def __init__(self, rows: list[_Rows], adds: Sequence[Sequence[AddEdit]],
                 concept_edits: Sequence[Sequence[ConceptEdit]]) -> None:
        self.rows, self.adds, self.concept_edits = rows, adds, concept_edits

    def __call__(self, block: str, step: StepInfo, delta: torch.Tensor) -> torch.Tensor | None:
        out = torch.zeros_like(delta)
        grid = tuple(delta.shape[-2:])
        for rows, adds, edits in zip(self.rows, self.adds, self.concept_edits):
            for add, donor in zip(adds, rows.donors):
                if block in add.blocks and step.index in add.steps:
                    pull = add.strength * (delta[donor] - delta[rows.edit_cond])
                    out[rows.edit_cond] += torch.where(add.cells(grid).to(delta.device), pull, 0.0)
            for edit in edits:
                if edit.block == block and step.index in edit.steps:
                    if rows.edit_uncond is None:
                        out[[rows.edit_cond]] += cond_only_change(edit.change, delta[[rows.edit_cond]])
                    else:
                        pair = [rows.edit_uncond, rows.edit_cond]
                        out[pair] += edit.change(delta[pair])
        return out


@torch.no_grad()
def generate_added(model: TextToImageModel, prompts: Sequence[str], seeds: Sequence[int],
                   adds: Sequence[Sequence[AddEdit]], steps: int, guidance: float | None = None,
                   concept_edits: Sequence[Sequence[ConceptEdit]] | None = None,
                   hold: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt unedited and with its add edits (and its concept edits, applied as `atlas edit` applies them),
    from one seed: (unedited, edited) uint8 (N, H, W, 3). With `hold`, outside every add edit's grown region and on
    its kept objects the edited latents are the unedited ones at every step (without, they are free everywhere, as
    concept edits that move what the prompt has need)."""
    prompts, seeds = list(prompts), list(seeds)
    concept_edits = concept_edits or [[] for _ in prompts]
    if not len(prompts) == len(seeds) == len(adds) == len(concept_edits):
        raise BadInputError("need one seed, one list of add edits and one of concept edits per prompt")
    guidance = model.spec.guidance(guidance)
    cfg = model.spec.cfg
    texts, rows = [], []
    for prompt, mine in zip(prompts, adds):
        rows.append(_Rows.at(len(texts), len(mine), cfg))
        texts += (["", prompt] if cfg else [prompt]) * 2 + [add.text(prompt) for add in mine]
    held = keep_mask(model, adds) if hold else None
    scheduler = copy.deepcopy(model.scheduler)
    scheduler.set_timesteps(steps, device=model.device)
    text = model.encode_text(texts)
    unedited = initial_noise(model, seeds)
    edited = unedited.clone()
    hooks, replace = Hooks(), _Replace(rows, adds, concept_edits)
    for block in sorted({b for mine in adds for a in mine for b in a.blocks}
                        | {e.block for mine in concept_edits for e in mine}):
        hooks.on(block, replace)
    handles = hooks.attach(model)
    try:
        for index, timestep in enumerate(scheduler.timesteps):
            hooks.step = StepInfo(index, steps, int(timestep))
            latents = torch.cat([row.latents(unedited[i], edited[i]) for i, row in enumerate(rows)])
            out = model.predict(scheduler.scale_model_input(latents, timestep), timestep, text, guidance)
            guided = torch.stack([_guide(model, out, row, guidance, edit) for row in rows for edit in (False, True)])
            both = scheduler.step(guided, timestep, torch.stack([x for pair in zip(unedited, edited) for x in pair]),
                                  return_dict=False)[0]
            unedited, edited = both[0::2], both[1::2] if held is None else torch.where(held, both[0::2], both[1::2])
    finally:
        for handle in handles:
            handle.remove()
        hooks.step = None
    images = model.to_uint8(model.decode(torch.cat([unedited, edited])))
    return images[:len(prompts)], images[len(prompts):]


def _guide(model: TextToImageModel, out: torch.Tensor, rows: _Rows, guidance: float, edited: bool) -> torch.Tensor:
    uncond, cond = (rows.edit_uncond, rows.edit_cond) if edited else (rows.uncond, rows.cond)
    if uncond is None:
        return out[cond]
    return model.guide(out[uncond], out[cond], guidance)


def keep_mask(model: TextToImageModel, adds: Sequence[Sequence[AddEdit]]) -> torch.Tensor:
    """(N, 1, h, w) bool on the latent grid: where each image's edited latents must stay the unedited ones."""
    _, h, w = model.latent_shape
    masks = []
    for mine in adds:
        free = np.zeros((h, w), bool)
        for add in mine:
            free |= add.cells((h, w)).numpy()
        masks.append(~free)
    return torch.as_tensor(np.stack(masks)[:, None], device=model.device) if masks else torch.zeros(0, dtype=bool)
