"""The edit math: windows of denoising steps, target regions, and concept edits applied to delta.

An edit changes the residual update delta of one block through concept vectors (rows of the SAE's
decoder), never by replacing delta with the SAE's reconstruction, so the SAE's error term stays in
the image (PAPER.md, interventions):

    spatial  z'[i,j,c] = beta * ||z[i,j]|| inside the region, 0 outside
    global   z'[i,j,c] = z[i,j,c] + beta * ||z[i,j]|| / sum_ij ||z[i,j]||
    delta'[i,j] = delta[i,j] + sum_c (z'[i,j,c] - z[i,j,c]) f_c

Each edit is a `Hooks` handler returning that additive change, so edits compose by summing, and a
change of exactly zero leaves the image bit-identical.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas.edit.config import EDITED_BRANCHES
from atlas.errors import BadInputError, NotFoundError
from atlas.grids import mask_to_grid
from atlas.models.hooks import Hooks, StepInfo, step_to_t, t_to_step
from atlas.sae import Sae

REGION_COVERAGE = 0.5  # a grid cell is inside the region when the region covers at least half of it
NAMED_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0), "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0), "top left": (0.0, 0.0, 0.5, 0.5), "top right": (0.5, 0.0, 1.0, 0.5),
    "bottom left": (0.0, 0.5, 0.5, 1.0), "bottom right": (0.5, 0.5, 1.0, 1.0),
}
"""Regions an edit can name: halves and quadrants of the image, as boxes (x0, y0, x1, y1) in fractions of it."""


@dataclass(frozen=True)
class Window:
    """Denoising steps with lo <= t <= hi (hi exclusive unless `closed`); t = 1.0 is the first step."""

    name: str
    lo: float
    hi: float
    closed: bool = True

    def steps(self, n_steps: int) -> list[int]:
        if self.lo == self.hi:
            return [t_to_step(self.lo, n_steps)]
        eps = 1e-9
        return [i for i in range(n_steps) if self.lo - eps <= (t := step_to_t(i, n_steps))
                and (t <= self.hi + eps if self.closed else t < self.hi - eps)]

    def sae_t(self, available: Sequence[float]) -> float:
        """The SAE that serves this window: the one whose t is nearest the window's centre (PAPER.md:
        early [0.6, 1] -> t = 1.0, middle [0.2, 0.6] -> 0.5, final [0, 0.2] -> 0.0)."""
        centre = (self.lo + self.hi) / 2
        return min(available, key=lambda t: (abs(t - centre), -t))

    def __str__(self) -> str:
        return self.name


# The paper's windows; they partition [0, 1] so every step belongs to exactly one.
WINDOWS = {"early": Window("early", 0.6, 1.0), "middle": Window("middle", 0.2, 0.6, closed=False),
           "final": Window("final", 0.0, 0.2, closed=False)}
ALL = Window("all", 0.0, 1.0)
"""Every step: where an added object's donor writes (the last steps repaint what the text does not name)."""
PAPER_STRENGTH = {"spatial": {"early": 4000.0, "middle": 400.0, "final": 1000.0},
                  "global": {"early": 8.0, "middle": 10.0, "final": 10.0}}
"""The paper's beta on SD v1.4 (for reference; the shapes model is calibrated by `atlas eval-edits`)."""


def parse_window(text: str) -> Window:
    """early | middle | final | all | t0-t1 (both ends included) | t (the one step of that t)."""
    text = str(text).strip().lower()
    if text in WINDOWS:
        return WINDOWS[text]
    if text == ALL.name:
        return ALL
    match = re.fullmatch(r"(\d*\.?\d+)(?:\s*-\s*(\d*\.?\d+))?", text)
    if not match:
        raise BadInputError(f"bad window {text!r}: use early, middle, final, all, auto, a range t0-t1 like 0.6-1.0 "
                            "or one t like 0.5 (t = 1.0 is the first step)")
    lo = float(match.group(1))
    hi = float(match.group(2)) if match.group(2) else lo
    if not 0.0 <= lo <= hi <= 1.0:
        raise BadInputError(f"bad window {text!r}: need 0 <= t0 <= t1 <= 1 (t = 1.0 is the first step)")
    return Window(text, lo, hi)


def parse_region(text: str, size: int,
                 named: dict[str, tuple[float, float, float, float]] = NAMED_REGIONS) -> np.ndarray:
    """Target region as a (size, size) bool mask at image resolution.

    A name of `named` (by default top-left | top-right | bottom-left | bottom-right | left | right | top |
    bottom), a box x0,y0,x1,y1 (fractions of the image, or pixels when any value exceeds 1), or a mask image
    (white = inside).
    """
    text = str(text).strip()
    name = text.lower().replace("-", " ").replace("_", " ")
    if name in named:
        return box_mask(named[name], size)
    if re.fullmatch(r"[\d.\s]+(,[\d.\s]+){3}", text):
        box = [float(v) for v in text.split(",")]
        if max(box) > 1:
            box = [v / size for v in box]
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise BadInputError(f"bad region box {text!r}: need x0 < x1 and y0 < y1 inside the {size}x{size} image")
        return box_mask((x0, y0, x1, y1), size)
    path = Path(text)
    if is_mask_file(text):
        if not path.is_file():
            raise NotFoundError(f"region mask {text} does not exist")
        try:
            gray = np.asarray(Image.open(path).convert("L").resize((size, size), Image.BILINEAR))
        except (OSError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
            raise BadInputError(f"region mask {text} is not a readable image ({type(err).__name__}); give a "
                                "black-and-white .png") from None
        return gray >= 128
    names = ", ".join(p.replace(" ", "-") for p in named)
    raise BadInputError(f"bad region {text!r}: use one of {names}, a box x0,y0,x1,y1 or a mask .png")


def is_mask_file(region: str) -> bool:
    """Whether parse_region reads `region` as a mask image (a named region or a box never is)."""
    text = str(region).strip()
    return bool(text) and text.lower().replace("-", " ").replace("_", " ") not in NAMED_REGIONS and (
        Path(text).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp") or Path(text).exists())


def box_mask(box: tuple[float, float, float, float], size: int) -> np.ndarray:
    x0, y0, x1, y1 = (v * size for v in box)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def region_to_grid(mask: np.ndarray, grid: tuple[int, int], what: str) -> np.ndarray:
    """Pool an image-resolution region to a block's grid; refuse a region that covers no whole cell."""
    cells = mask_to_grid(np.asarray(mask, bool), grid, REGION_COVERAGE)
    if not cells.any():
        raise BadInputError(f"the region covers no cell of {what}'s {grid[0]}x{grid[1]} grid by half or more; "
                            "make it larger")
    return cells


@dataclass
class ConceptEdit:
    """Concepts of one SAE written into one block's delta on some steps.

    `region` is a (grid_h, grid_w) bool mask for a spatial edit, None for a global one; `branch`
    `cond` edits the conditional half of the CFG batch, `both` both halves.
    """

    sae: Sae
    latents: list[int]
    block: str
    steps: list[int]
    strength: float
    region: np.ndarray | None = None
    branch: str = "cond"

    def __post_init__(self) -> None:
        if self.branch not in EDITED_BRANCHES:
            raise BadInputError(f"unknown branch {self.branch!r}; use one of {', '.join(EDITED_BRANCHES)}")
        if not self.latents:
            raise BadInputError("an edit needs at least one concept")
        if not self.steps:
            raise BadInputError("the edit's window holds no denoising step")
        self._vectors = self.sae.W_dec.detach()[self.latents].float()

    @property
    def kind(self) -> str:
        return "global" if self.region is None else "spatial"

    def change(self, delta: torch.Tensor) -> torch.Tensor:
        """The additive change to delta (2B, C, H, W) in CFG order [uncond, cond]."""
        n, channels, h, w = delta.shape
        rows = slice(n // 2, n) if self.branch == "cond" else slice(0, n)
        x = delta[rows].permute(0, 2, 3, 1).reshape(-1, channels).float()
        with torch.no_grad():
            code = self.sae.encode(x)
        acts, idx = code.top_acts.float(), code.top_indices
        norm = acts.norm(dim=1)  # ||z[i,j]||
        latents = torch.tensor(self.latents, device=idx.device)
        current = (acts.unsqueeze(2) * (idx.unsqueeze(2) == latents)).sum(1)  # (positions, concepts)
        if self.region is None:
            per_image = norm.reshape(-1, h * w)
            weight = per_image / per_image.sum(1, keepdim=True).clamp_min(torch.finfo(per_image.dtype).tiny)
            coef = (self.strength * weight.reshape(-1, 1)).expand_as(current)
        else:
            if self.region.shape != (h, w):
                raise BadInputError(f"region grid {self.region.shape} does not match {self.block}'s {h}x{w} grid")
            inside = torch.as_tensor(self.region.reshape(-1), device=x.device).repeat(x.shape[0] // (h * w))
            coef = torch.where(inside.unsqueeze(1), self.strength * norm.unsqueeze(1), 0.0) - current
        out = torch.zeros_like(delta)
        out[rows] = (coef @ self._vectors.to(x.device)).reshape(-1, h, w, channels).permute(0, 3, 1, 2).to(delta.dtype)
        return out

    def __call__(self, block: str, step: StepInfo, delta: torch.Tensor) -> torch.Tensor:
        return self.change(delta)


def edit_hooks(edits: Sequence[ConceptEdit], hooks: Hooks | None = None) -> Hooks:
    """Register every edit on its block and steps; changes at the same block and step add up."""
    hooks = hooks or Hooks()
    for edit in edits:
        hooks.on(edit.block, edit, steps=edit.steps)
    return hooks
