"""Options of `atlas edit` and `atlas eval-edits`; the attribute docstrings are the CLI's --help text.

Both check themselves when made, so a bad value (a negative strength, an unknown branch) fails before an
atlas is opened or a model is loaded, whether it came from the CLI, the web page or Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from atlas.errors import BadInputError

EDITED_BRANCHES = ("cond", "both")  # which CFG halves an edit changes (capture records "uncond" and "cond")
EVAL_KINDS = ("spatial", "style", "add")  # the experiments of `atlas eval-edits` (Tables 4 and 5, adding objects)
METHODS = ("auto", "coefficients", "donor")  # how a spatial edit applies its concepts
DONOR_TEXT = "a {label} {where} and {prompt}"
"""The donor text of an add edit: the object to add, where, and the prompt (so the donor keeps the prompt's
objects too)."""
CLIP_MODEL = "ViT-B-32"  # the open_clip model that judges style edits on atlases other than the shapes world's
CLIP_WEIGHTS = "laion2b_s34b_b79k"  # its pretrained tag (a file in the local Hugging Face cache)


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise BadInputError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


def _strength(value: float, name: str = "strength") -> float:
    if not (math.isfinite(value) and value >= 0):
        raise BadInputError(f"bad {name} {value!r}: give a number >= 0 (0 leaves the image unchanged)")
    return float(value)


def parse_concepts_t(text: str) -> float | None:
    """The t of a --concepts-t value, or None when empty (each window's own SAE)."""
    if not str(text).strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadInputError(f"bad --concepts-t {text!r}: give the t of one SAE, e.g. 1.0, or nothing for each "
                            "window's own") from None
    if not 0.0 <= value <= 1.0:
        raise BadInputError(f"bad --concepts-t {text!r}: t lies in [0, 1] (1.0 is the first step)")
    return value


def _branch(value: str) -> None:
    if value not in EDITED_BRANCHES:
        raise BadInputError(f"unknown branch {value!r}; use one of {', '.join(EDITED_BRANCHES)}")


def _method(value: str) -> None:
    if value not in METHODS:
        raise BadInputError(f"unknown method {value!r}; use one of {', '.join(METHODS)}")


def _donor(text: str) -> None:
    try:
        text.format(label="", where="", prompt="")
    except (KeyError, IndexError, ValueError):
        raise BadInputError(f"bad --donor {text!r}: it may name {{label}}, {{where}} and {{prompt}} only") from None


def _margin(value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 0.5):
        raise BadInputError(f"bad --margin {value!r}: give a fraction of the image side in [0, 0.5]")


@dataclass
class EditConfig:
    """How an edit is applied (what and where come with each concept)."""

    when: str = "auto"
    """Denoising window: early (t 0.6-1, SAE of t=1.0), middle (0.2-0.6, t=0.5), final (0-0.2, t=0.0), all, a
    range t0-t1, one t, or auto (the window and strength that succeeded most in the `atlas eval-edits` curves of
    the atlas, else those its model ships; without curves the paper's: early for spatial, middle for global edits,
    all steps for added objects)."""
    strength: float | None = None
    """beta: spatial edits set the concept to beta * ||z|| inside the region (0 outside), global edits add
    beta * ||z|| / sum ||z|| everywhere; an added object's update moves beta of the way to the donor's (1 =
    replaced, 2 = twice as far). Default: the best measured for the window, else a built-in default."""
    method: str = "auto"
    """How a spatial edit applies its concepts: coefficients (the paper's rule, which moves an object the prompt
    has), donor (adds an object the prompt lacks: detect, then replace from a donor read of the same latents; see
    atlas.edit.add) or auto (donor when the prompt does not name the concept's label, else coefficients)."""
    donor: str = DONOR_TEXT
    """Donor text of an added object: {label} the concept's label, {where} the region in words ("at the top
    left"), {prompt} the prompt."""
    margin: float = 0.125
    """How far past its region (a fraction of the image side) an added object may reach."""
    branch: str = "cond"
    """CFG half to edit: cond, or both (the concept's SAE is applied to the uncond half too)."""
    block: str = ""
    """Block whose concepts a label resolves to (empty = the block whose measured curves succeed most, else mid
    as in the paper); concept ids carry their own block."""
    max_concepts: int = 5
    """A label resolves to its best N concepts (by mean IoU) at the window's SAE."""
    concepts_t: str = ""
    """t of the SAE whose concepts a label resolves to, whatever the window (empty = the window's own SAE, the
    paper's rule, or with --when auto the one of the best measured curve). In the shapes model the t = 1.0
    stripe concepts restyle best in the middle window."""
    seed: int = 0
    """Seed of both images (the unedited and the edited one start from the same noise)."""
    steps: int = 0
    """DDIM steps (0 = the steps the atlas's images and SAEs were made with)."""
    guidance: float | None = None
    """Classifier-free guidance scale (unset: the one the atlas was built with)."""
    log: bool = True
    """Record the edit (inputs and outcome) in the atlas's interventions table."""

    def __post_init__(self) -> None:
        if self.strength is not None:
            _strength(self.strength)
        _branch(self.branch)
        _method(self.method)
        _donor(self.donor)
        _margin(self.margin)
        parse_concepts_t(self.concepts_t)
        for name, low in (("max_concepts", 1), ("seed", 0), ("steps", 0)):
            _at_least(name, getattr(self, name), low)


@dataclass
class EvalEditsConfig:
    """The paper's intervention protocol on an atlas (Tables 4 and 5), and adding objects the prompts lack."""

    kind: str = "spatial"
    """spatial: move an object to each quadrant (success = its centre lands there); style: add a style globally
    (success = the image takes the style while the other objects stay put); add: add an object the prompt lacks to
    each quadrant (success = a new object of its label has its centre there, every object of the prompt stays and
    nothing else appears). A shapes atlas is judged by the shapes world's annotator; any other by the atlas's own
    annotator (spatial, add) and CLIP similarity (style)."""
    n: int = 8
    """Prompts (one object each; spatial and add edits run each in 4 quadrants). Scales the run linearly."""
    style: str = ""
    """Label the style edits add (empty: striped background on a shapes atlas, else the label with the most
    concepts at --block); style prompts are the shapes world's one-object captions, else the atlas's prompts."""
    add: str = ""
    """Label the add edits add (empty: for each prompt a label that shares no word with it)."""
    prompt: str = ""
    """Prompt of every add edit (empty: the one-object prompts)."""
    method: str = ""
    """How add edits put the object in: donor (atlas.edit.add, the default) or coefficients (the paper's rule, as
    spatial and style edits do)."""
    windows: str = ""
    """Windows to measure, comma separated (empty: early,middle,final; all for the donor method)."""
    strengths: str = ""
    """Strength sweep, comma separated (empty = the built-in default of each window times 0.25, 1 and 4; times
    0.5, 1 and 2 for the donor method). Each window's best strength is chosen on the --select-seed prompts and its
    success reported on the --seed ones."""
    block: str = "up"
    """Block to edit (the paper edits mid; in the shapes model mid edits stay at chance, see bench/RESULTS.md)."""
    max_concepts: int = 5
    """Concepts per label (its best by mean IoU at the window's SAE)."""
    concepts_t: str = ""
    """t of the SAE whose concepts edit every window (empty = each window's own SAE, the paper's rule: early
    t = 1.0, middle 0.5, final 0.0). Its curves are kept apart from the paper-rule ones."""
    branch: str = "cond"
    """CFG half to edit: cond or both."""
    seed: int = 1000
    """Seed of the first prompt whose success is reported (prompt i uses seed + i; on a shapes atlas the seed also
    draws the prompts' objects)."""
    select_seed: int = 5000
    """Seed of the first prompt of the sweep that chooses each window's strength (the same as --seed: chosen and
    reported on the same prompts, as the paper's tables are)."""
    margin: float = 0.125
    """How far past its quadrant (a fraction of the image side) an added object may reach (donor method)."""
    batch_size: int = 32
    """Edited images denoised together."""
    clip_model: str = CLIP_MODEL
    """open_clip model that judges style edits (atlases other than the shapes world's)."""
    clip_weights: str = CLIP_WEIGHTS
    """Its weights: a pretrained tag whose file is in the local Hugging Face cache, or a checkpoint file."""

    def __post_init__(self) -> None:
        if self.kind not in EVAL_KINDS:
            raise BadInputError(f"unknown kind {self.kind!r}; use one of {', '.join(EVAL_KINDS)}")
        if self.method not in ("", "coefficients", "donor") or (self.method == "donor" and self.kind != "add"):
            raise BadInputError(f"bad --method {self.method!r}: add edits take donor or coefficients; spatial and "
                                "style edits use coefficients")
        _branch(self.branch)
        _margin(self.margin)
        parse_concepts_t(self.concepts_t)
        for name, low in (("n", 1), ("max_concepts", 1), ("seed", 0), ("select_seed", 0), ("batch_size", 1)):
            _at_least(name, getattr(self, name), low)
        self.sweep()

    @property
    def edit_method(self) -> str:
        """coefficients or donor: the method the edits use."""
        return self.method or ("donor" if self.kind == "add" else "coefficients")

    def window_names(self) -> list[str]:
        default = "all" if self.edit_method == "donor" else "early,middle,final"
        return [w.strip() for w in (self.windows or default).split(",") if w.strip()]

    def sweep(self) -> list[float] | None:
        """The strengths of --strengths, or None for the built-in sweep."""
        try:
            values = [float(s) for s in self.strengths.split(",") if s.strip()]
        except ValueError:
            raise BadInputError(f"bad --strengths {self.strengths!r}: give numbers separated by commas, e.g. 2,8,32") \
                from None
        return [_strength(v, "strength in --strengths") for v in values] or None
