"""`atlas edit`: plan (atlas.edit.plan), generate the unedited and the edited image from one seed, judge the
outcome with the caller's judge (atlas.edit.judge), draw them side by side (atlas.edit.render) and log the edit
(atlas.edit.log).

    from atlas.edit import edit
    result = edit("atlas", "a red circle", ["red circle"], ["top-left"], out="edit.png")
    result.said     # what was chosen (window, strength, concepts) and what happened
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from atlas.edit.add import AddEdit, generate_added
from atlas.edit.config import EditConfig
from atlas.edit.core import ConceptEdit, edit_hooks, parse_region
from atlas.edit.judge import Finder, Judge
from atlas.edit.log import log_edit
from atlas.edit.plan import PlannedEdit, plan_edit
from atlas.edit.render import outcome_line, save_edit_png
from atlas.errors import BadInputError, NotFoundError, UnavailableError
from atlas.models import Hooks, TextToImageModel, generate, load_model, t_to_step
from atlas.sae import Sae
from atlas.store import Atlas, SaeInfo, open_atlas


@dataclass
class EditResult:
    prompt: str
    seed: int
    original: np.ndarray
    edited: np.ndarray
    plans: list[PlannedEdit]
    maps: list[np.ndarray]
    """Per edit: the sum of its concepts' activations on the SAE's grid, in the unedited run at the SAE's t."""
    outcome: dict
    said: list[str] = field(default_factory=list)
    intervention_ids: list[int] = field(default_factory=list)
    path: Path | None = None


def edit(atlas: Atlas | str | Path, prompt: str, concepts: str | Sequence[str], regions: str | Sequence[str] = "",
         config: EditConfig | None = None, out: str | Path | None = None,
         model: TextToImageModel | None = None, load: Callable[[str], TextToImageModel] = load_model,
         judge_for: Callable[[Atlas], Judge | None] | None = None,
         finder_for: Callable[[Atlas], Finder | None] | None = None) -> EditResult:
    """Edit `prompt` with each concept query (label, concept id or SQL) in its region ("" = global).

    One region applies to every concept; otherwise give one region per concept. Bad input raises before
    anything is generated or written, and before `load` (the atlas's model by name) is called when no
    `model` is given. `judge_for` gives the atlas's judge (None: only the pixel change is reported;
    atlas.pipeline.judges.judge_for picks one by the atlas's model and annotator); `finder_for` the annotator that
    finds the unedited image's objects, which an added object leaves alone (None: nothing is kept but what lies
    outside the region).
    """
    if isinstance(atlas, Atlas):
        return _edit(atlas, prompt, concepts, regions, config or EditConfig(), out, model, load, judge_for,
                     finder_for)
    with open_atlas(atlas) as store:
        return _edit(store, prompt, concepts, regions, config or EditConfig(), out, model, load, judge_for,
                     finder_for)


def _edit(store: Atlas, prompt: str, concepts: str | Sequence[str], regions: str | Sequence[str],
          config: EditConfig, out: str | Path | None, model: TextToImageModel | None,
          load: Callable[[str], TextToImageModel], judge_for: Callable[[Atlas], Judge | None] | None,
          finder_for: Callable[[Atlas], Finder | None] | None) -> EditResult:
    queries = [concepts] if isinstance(concepts, str) else list(concepts)
    region_list = [regions] if isinstance(regions, str) else list(regions)
    if not prompt.strip():
        raise BadInputError("empty prompt: give the text of the image to edit, e.g. 'a red circle'")
    if not queries:
        raise BadInputError("give at least one --concept")
    if len(region_list) == 1:
        region_list = region_list * len(queries)
    if len(region_list) != len(queries):
        raise BadInputError(f"got {len(region_list)} regions for {len(queries)} concepts; give one region, or one "
                            "per concept (global for none)")
    region_list = ["" if r.strip().lower() in ("", "global", "none") else r.strip() for r in region_list]
    spec = store.model()
    steps = config.steps or int(spec.get("steps") or 0)
    size = int(spec.get("resolution") or 0)
    guidance = spec.get("guidance") if config.guidance is None else config.guidance
    if model is None and not (steps and size):  # an atlas that does not record them: ask the model
        model = load(spec["source"])
    steps, size = steps or model.spec.default_steps, size or model.spec.resolution
    plans = [plan_edit(store, prompt, q, r, config, steps, size) for q, r in zip(queries, region_list)]
    model = model or load(spec["source"])  # after planning: bad input fails before the slow load
    saes = {p.sae.id: Sae.from_pretrained(sae_path(store, p.sae)) for p in plans}
    edits = [ConceptEdit(saes[p.sae.id], [c.latent for c in p.concepts], p.sae.block, p.window.steps(steps),
                         p.strength, p.cells, config.branch) for p in plans]
    recorder = MapRecorder(edits, plans, steps)
    original = generate(model, [prompt], [config.seed], steps, guidance, recorder.hooks())[0]
    donors = [p for p in plans if p.method == "donor"]
    if donors:
        keep = objects_mask(finder_for(store) if finder_for else None, original, prompt)
        adds = [AddEdit(p.target, parse_region(p.region, size), list(model.spec.hook_points), p.window.steps(steps),
                        p.strength, round(config.margin * size), keep, config.donor) for p in donors]
        others = [e for e, p in zip(edits, plans) if p.method != "donor"]
        edited = generate_added(model, [prompt], [config.seed], [adds], steps, guidance, [others],
                                hold=not others)[1][0]
    else:
        edited = generate(model, [prompt], [config.seed], steps, guidance, edit_hooks(edits))[0]
    outcome = judge_outcome(store, judge_for, original, edited, plans, prompt)
    said = [plan.describe() for plan in plans] + [outcome_line(outcome)]
    result = EditResult(prompt, config.seed, original, edited, plans, recorder.maps(), outcome, said)
    if out is not None:
        result.path = save_edit_png(result, out)
    if config.log:
        with store.writer() as writer:
            result.intervention_ids = log_edit(writer, result, config, steps, guidance)
    return result


def objects_mask(find: Finder | None, image: np.ndarray, prompt: str) -> np.ndarray | None:
    """Every pixel of the objects `find` sees in the image (None without a finder)."""
    if find is None:
        return None
    mask = np.zeros(image.shape[:2], bool)
    for _, found in find(image, prompt):
        mask |= np.asarray(found, bool)
    return mask


def sae_path(store: Atlas, sae: SaeInfo) -> Path:
    if not sae.path:
        raise NotFoundError(f"the SAE {sae.block}/{sae.t!r} has no checkpoint path in {store.root}; "
                            "re-run `atlas encode`")
    path = store.file_path(sae.path)
    if not (path / "sae.safetensors").exists():
        raise NotFoundError(f"SAE checkpoint {path} is missing; re-run `atlas build` for {store.root}")
    return path


# -- resolving a query into concepts, a window and a strength -----------------------------------------------------


# -- maps, outcome, picture, log -----------------------------------------------------------------------------------

class MapRecorder:
    """Reads each edit's concept activations in the unedited run (a read-only hook: the image is unchanged)."""

    def __init__(self, edits: list[ConceptEdit], plans: list[PlannedEdit], steps: int) -> None:
        self.edits, self.steps = edits, steps
        self.at = [t_to_step(p.sae.t, steps) for p in plans]
        self._maps: list[np.ndarray | None] = [None] * len(edits)

    def hooks(self) -> Hooks:
        hooks = Hooks()
        for i, (edit, step) in enumerate(zip(self.edits, self.at)):
            hooks.on(edit.block, lambda block, info, delta, i=i: self._read(i, delta), steps=[step])
        return hooks

    def _read(self, i: int, delta: torch.Tensor) -> None:
        edit = self.edits[i]
        _, channels, h, w = delta.shape
        x = delta[delta.shape[0] // 2:].permute(0, 2, 3, 1).reshape(-1, channels).float()
        with torch.no_grad():
            code = edit.sae.encode(x)
        mine = torch.isin(code.top_indices, torch.tensor(edit.latents))
        self._maps[i] = (code.top_acts * mine).sum(1).reshape(-1, h, w)[0].numpy()

    def maps(self) -> list[np.ndarray]:
        return [np.zeros((1, 1), np.float32) if m is None else m for m in self._maps]


def judge_outcome(store: Atlas, judge_for: Callable[[Atlas], Judge | None] | None, original: np.ndarray,
                  edited: np.ndarray, plans: list[PlannedEdit], prompt: str) -> dict:
    """Pixel change always; with a judge also whether each edit did what it asked (`success`) and its verdict
    (`verdicts`: where the pixels changed, whether the other objects stayed); `not_judged` says why not when the
    judge's model is missing on this machine."""
    outcome: dict = {"pixel_change": pixel_change(original, edited)}
    try:
        judge = judge_for(store) if judge_for else None
        verdicts = [] if judge is None else [
            None if p.target is None else
            judge(original, edited, p.kind, p.target, parse_region(p.region, original.shape[0]) if p.region else None,
                  prompt) for p in plans]
    except UnavailableError as err:
        return {**outcome, "not_judged": err.message}
    if judge is not None:
        outcome["success"] = [None if v is None else v.success for v in verdicts]
        outcome["verdicts"] = [None if v is None else asdict(v) for v in verdicts]
    return outcome


def pixel_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference in [0, 1]."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


