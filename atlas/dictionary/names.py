"""Concept names rolled up from the dictionary: what the labels a concept is linked to have in common.

A concept linked to "red circle", "red square" and "red triangle" is not a red-circle concept but a red one: its
name is "red (any shape)". A concept linked to "red circle" and "blue circle" is "circle (blue or red)"
unless those are every colour the atlas has circles in, then "circle (any colour)". Labels are compared by
their words, so the same roll-up works on an SD atlas's tagger labels ("dog", "black dog" -> "dog").

Only the labels close to the concept's best one take part (`CLOSE`: a mean IoU at least that share of the best
one's), so a label it matched twice by chance does not widen its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atlas.store import Atlas

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey",
               "gray"),
    "shape": ("circle", "square", "triangle", "rectangle", "hexagon", "star", "disc"),
    "position": ("left", "right", "top", "bottom", "centre", "center", "middle"),
    "style": ("striped", "plain", "dotted", "checked"),
}
"""Attribute words and their kind: what varies among a concept's labels is named by its kind ("any shape")."""
CLOSE = 0.5
"""A label takes part in the roll-up when its mean IoU is at least this share of the concept's best label's."""
ENTRY_HIT_RATE = 0.1
"""A concept is the dictionary's entry for a label when that is its name and it matches (IoU > 0.5) at least this
share of the label's objects: two chance matches among 90 red circles pass the linking rule, not this one."""


@dataclass(frozen=True)
class Link:
    """One (concept, label) pair of the dictionary."""

    label: str
    mean_iou: float
    hit_rate: float
    support: int


def attribute_of(word: str) -> str | None:
    """The kind of an attribute word (colour, shape, position, style), None for any other word."""
    return next((kind for kind, words in ATTRIBUTES.items() if word in words), None)


def close_links(links: Sequence[Link]) -> list[Link]:
    """The links that name the concept: the best one and those within CLOSE of its mean IoU, best first."""
    ranked = sorted(links, key=lambda x: (-x.mean_iou, -x.hit_rate, x.label))
    if not ranked:
        return []
    return [x for x in ranked if x.mean_iou >= CLOSE * ranked[0].mean_iou]


def rollup_name(labels: Sequence[str], known: Iterable[str] = ()) -> str | None:
    """The name of what `labels` (best first) share; `known` (every label of the atlas) tells whether they cover
    every value of what varies ("any shape") or only some ("circle or square")."""
    if not labels:
        return None
    labels = list(dict.fromkeys(labels))
    if len(labels) == 1:
        return labels[0]
    words = [label.split() for label in labels]
    shared = [w for w in words[0] if all(w in ws for ws in words[1:])]
    if not shared:
        return " or ".join(labels[:3]) + (f" (+{len(labels) - 3} more)" if len(labels) > 3 else "")
    if any(ws == shared for ws in words):  # one label is the shared part itself: "dog" beside "black dog"
        return " ".join(shared)
    varying = [" ".join(w for w in ws if w not in shared) for ws in words]
    kinds = {attribute_of(v) for v in varying}
    kind = kinds.pop() if len(kinds) == 1 else None
    stem = " ".join(shared)
    possible = {" ".join(w for w in label.split() if w not in shared) for label in known
                if all(w in label.split() for w in shared) and len(label.split()) == len(words[0])}
    if kind and possible and possible <= set(varying):
        return f"{stem} (any {kind})"
    return f"{stem} ({' or '.join(sorted(varying))})"


def concept_name(links: Sequence[Link], known: Iterable[str] = ()) -> str | None:
    """A concept's roll-up name from its dictionary links (None when it has none)."""
    return rollup_name([x.label for x in close_links(links)], known)


def atlas_concept_names(atlas: Atlas, concept_ids: Sequence[str]) -> dict[str, str | None]:
    """The roll-up name of each concept (None for one without dictionary links), from the atlas's dictionary."""
    if not concept_ids:
        return {}
    rows = atlas.query("SELECT concept_id, label, mean_iou, hit_rate, support FROM concept_labels "
                       "WHERE list_contains(?, concept_id)", [list(concept_ids)]).to_pylist()
    links: dict[str, list[Link]] = {cid: [] for cid in concept_ids}
    for r in rows:
        links[r["concept_id"]].append(Link(r["label"], r["mean_iou"] or 0.0, r["hit_rate"] or 0.0, r["support"] or 0))
    known = atlas.labels()
    return {cid: concept_name(found, known) for cid, found in links.items()}


@dataclass(frozen=True)
class Description:
    """What a concept means, in words and figures (a concept page's opening)."""

    name: str | None
    """The roll-up name of its dictionary labels (None: it has none)."""
    text: str
    links: list[Link]
    emergence: list[tuple[float, float]]
    """(t, best mean IoU of its best label among the concepts of its block, branch and SAE variant at that t; 0 when
    none is linked to it), from the first denoising step (t = 1.0) on."""
    images: int
    images_total: int


def describe_concept(atlas: Atlas, concept_id: str) -> Description:
    """The concept's roll-up name, its labels with their figures, how many images it fires on, and when its best
    label emerges in its block (the first t whose best concept reaches half the label's best IoU there)."""
    sae, latent = atlas.resolve(concept_id)
    info = atlas.concept(concept_id)
    rows = atlas.query("SELECT label, mean_iou, hit_rate, support FROM concept_labels WHERE sae_id = ? AND latent = ?",
                       [sae.id, latent]).to_pylist()
    links = sorted((Link(r["label"], r["mean_iou"] or 0.0, r["hit_rate"] or 0.0, r["support"] or 0) for r in rows),
                   key=lambda x: (-x.mean_iou, x.label))
    name = concept_name(links, atlas.labels())
    fired = atlas.query("SELECT count(DISTINCT image_id) AS n FROM codes WHERE sae_id = ? AND latent = ?",
                        [sae.id, latent])["n"][0].as_py()
    total = atlas.images().num_rows
    share = f" ({100 * fired / total:.0f}%)" if total else ""
    parts = [f"Fires on {fired} of {total} images{share}, at {100 * (info.frequency or 0):.1f}% of grid positions."]
    emergence: list[tuple[float, float]] = []
    if links:
        shown = ", ".join(f"'{x.label}' (mean IoU {x.mean_iou:.2f}, hit rate {x.hit_rate:.2f}, {x.support} objects)"
                          for x in close_links(links)[:4])
        others = len(links) - len(close_links(links)[:4])
        parts.insert(0, f"Linked to {shown}" + (f" and {others} weaker label(s)." if others else "."))
        best = {round(float(r["t"]), 6): float(r["best"]) for r in atlas.query(
            "SELECT t, max(mean_iou) AS best FROM concept_labels WHERE label = ? AND block = ? AND branch = ? AND "
            "variant = ? GROUP BY t", [links[0].label, sae.block, sae.branch, sae.variant]).to_pylist()}
        times = sorted({s.t for s in atlas.saes() if (s.block, s.branch, s.variant) == (sae.block, sae.branch,
                                                                                        sae.variant)}, reverse=True)
        emergence = [(t, best.get(round(t, 6), 0.0)) for t in times]
        peak = max(best for _, best in emergence)
        first = next(t for t, best in emergence if best >= 0.5 * peak)
        parts.append(f"'{links[0].label}' emerges in the {sae.block} block at t = {first:g} (best IoU per t: "
                     + ", ".join(f"{t:g}: {best:.2f}" for t, best in emergence) + ").")
    else:
        parts.insert(0, "No label passes the dictionary's rule for this concept.")
    if name:
        parts.insert(0, f"{name[0].upper()}{name[1:]}.")
    return Description(name, " ".join(parts), links, emergence, fired, total)
