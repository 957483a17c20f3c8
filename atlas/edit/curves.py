"""The edit curves file (<atlas>/edits/curves.json), its one owner: success per window and strength, measured by
`atlas eval-edits` (which writes them through `write_curve`) and read by `atlas edit --when auto`. A model may ship
curves measured on a reference atlas of it (<model dir>/edit_curves.json, same format): an atlas without its own
curves of a kind uses those, so `atlas edit` works on a fresh atlas.

    {kind: {curve_key(block, concepts_t): {"block", "concepts_t", "n", "date", "baseline", "command",
                                           "windows": {window: {"strength", "success", "pixel_change", "resolved"}}}}}
"""

from __future__ import annotations

import json
from pathlib import Path

from atlas.errors import UnavailableError
from atlas.files import atomic_write, file_lock

CURVES_FILE = "edits/curves.json"
MODEL_CURVES_FILE = "edit_curves.json"
"""The curves a model ships beside its weights (the shapes model's: data/shapes/edit_curves.json)."""


def load_curves(root: Path) -> dict:
    """Success curves measured by `atlas eval-edits` on this atlas ({} when none were measured)."""
    path = Path(root) / CURVES_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def model_curves(source: str) -> dict:
    """The curves the model `source` (a name or directory, as the atlas records it) ships; {} when it ships none
    or is not on this machine."""
    from atlas.models.loader import resolve_model_dir

    try:
        path = resolve_model_dir(source)[0] / MODEL_CURVES_FILE
    except UnavailableError:
        return {}
    return json.loads(path.read_text()) if path.is_file() else {}


def kind_curves(root: Path, source: str, kind: str) -> tuple[dict, str]:
    """The curves of one kind of edit (curve_key -> curve) and where they come from: the atlas's own when it has
    any of that kind, else those its model ships."""
    own = load_curves(root).get(kind, {})
    if own:
        return own, "this atlas"
    shipped = model_curves(source).get(kind, {})
    return shipped, ("the curves shipped with the model" if shipped else "")


def sweep_rank(success: float, resolved: float, pixel_change: float) -> tuple[float, float, float]:
    """How swept points are ranked, best last: the highest success, then the most labels resolved to concepts (a
    window without concepts changes nothing, which must not win a tie), then the smallest pixel change."""
    return success, resolved, -pixel_change


def best_point(curve: dict, window: str | None = None) -> tuple[str, float, float] | None:
    """(window, strength, success) of the best point (`sweep_rank`) of `curve`, or of its `window`."""
    points = [(w, s, ok, found, change) for w, row in curve["windows"].items() if window in (None, w)
              for s, ok, found, change in zip(row["strength"], row["success"], row["resolved"], row["pixel_change"])]
    if not points:
        return None
    w, s, ok, _, _ = max(points, key=lambda p: sweep_rank(*p[2:]))
    return w, s, ok


def curve_key(block: str, concepts_t: float | None) -> str:
    """Where a curve lives in curves.json: the block, plus the concepts' t when they came from one fixed SAE."""
    return block if concepts_t is None else f"{block}, concepts t={concepts_t:g}"


def block_of(curves: dict, key: str | None) -> str | None:
    """The block a curve measured (curves written before concepts' t was recorded are keyed by block alone)."""
    return None if key is None else curves[key].get("block", key)


def best_curve(curves: dict) -> str | None:
    """The key of the curve that reaches the highest success (None without curves)."""
    scored = [(best[2], key) for key, curve in curves.items() if (best := best_point(curve))]
    return max(scored)[1] if scored else None


def write_curve(root: Path, kind: str, block: str, concepts_t: float | None, curve: dict) -> None:
    """Put one curve (the dict above, without the key) into the atlas's curves file, under a lock so that two
    runs at once both keep theirs."""
    path = Path(root) / CURVES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        curves = load_curves(root)
        curves.setdefault(kind, {})[curve_key(block, concepts_t)] = curve
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(curves, indent=2)))
