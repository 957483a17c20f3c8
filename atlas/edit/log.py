"""The interventions log: one row per concept of an edit, with its inputs and the outcome of the whole edit."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from atlas.edit.config import EditConfig
from atlas.store import Writer

if TYPE_CHECKING:
    from atlas.edit.run import EditResult


def log_edit(writer: Writer, result: EditResult, config: EditConfig, steps: int, guidance: float | None) -> list[int]:
    """One interventions row per concept, with the inputs and the outcome of the whole edit."""
    base = {"prompt": result.prompt, "seed": result.seed, "steps": steps, "guidance": guidance,
            "branch": config.branch, "outcome": result.outcome, "date": date.today().isoformat(),
            "edits": [{"query": p.query, "region": p.region or None, "kind": p.kind, "method": p.method,
                       "window": str(p.window),
                       "t_range": [p.window.lo, p.window.hi], "strength": p.strength,
                       "concepts": [c.concept_id for c in p.concepts]} for p in result.plans]}
    ids = []
    for i, plan in enumerate(result.plans):
        params = {**base, "edit": i}
        for concept in plan.concepts:
            ids.append(writer.catalog.log_intervention(concept.concept_id, plan.kind, plan.strength, params,
                                                       str(result.path) if result.path else None,
                                                       "; ".join(result.said)))
    return ids
