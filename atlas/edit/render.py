"""The picture of an edit: the unedited and the edited image side by side with each concept's activation map
and region, labelled with the plan and the outcome."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from atlas.edit.core import parse_region
from atlas.files import atomic_write

if TYPE_CHECKING:
    from atlas.edit.run import EditResult


def outcome_line(outcome: dict) -> str:
    parts = [f"pixel change {outcome['pixel_change']:.3f}"]
    verdicts = outcome.get("verdicts", [])
    for i, ok in enumerate(outcome.get("success", [])):
        parts.append(f"edit {i + 1}: " + verdict_words(ok, verdicts[i] if i < len(verdicts) else None))
    if "not_judged" in outcome:
        parts.append(f"not judged: {outcome['not_judged']}")
    return "outcome: " + ", ".join(parts)


def verdict_words(ok: bool | None, verdict: dict | None) -> str:
    """success / failure, with where the pixels changed and whether the other objects stayed."""
    if ok is None:
        return "not judged (no label)"
    words = "success" if ok else "failure"
    if not verdict or verdict["change_in"] is None or verdict["change_out"] is None:
        return words
    stay = {None: "", True: "; the other objects stay", False: "; other objects moved or were lost"}
    return (f"{words} (change {verdict['change_in']:.3f} in its region, {verdict['change_out']:.3f} outside"
            f"{stay[verdict['others_stay']]})")


def save_edit_png(result: EditResult, out: str | Path) -> Path:
    from atlas.viz import heat_overlay, image_grid

    size = result.original.shape[0]
    tiles = [result.original, result.edited]
    labels = [f"unedited, seed {result.seed}", f"edited ({result.outcome['pixel_change']:.3f} pixel change)"]
    for i, (plan, heat) in enumerate(zip(result.plans, result.maps)):
        region = parse_region(plan.region, size) if plan.region else None
        tiles.append(heat_overlay(result.original, heat, region))
        ok = result.outcome.get("success", [None] * len(result.plans))[i]
        verdict = "" if ok is None else (" - success" if ok else " - failure")
        labels.append(f"{plan.query[:40]} ({plan.sae.block} t={plan.sae.t:g}) -> {plan.region or 'global'}, "
                      f"{plan.window}, beta {plan.strength:g}{verdict}")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(tiles, labels, cols=len(tiles), cell=192, label_lines=4)
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
    return path
