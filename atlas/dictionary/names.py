"""Concept names rolled up from the dictionary: what the labels a concept is linked to have in common.

A concept linked to "red circle", "red square" and "red triangle" is not a red-circle concept but a red one: its
name is "red (any shape)". A concept linked to "red circle" and "blue circle" is "circle (blue or red)"
unless those are every colour the atlas has circles in, then "circle (any colour)". Labels are compared by
their words, so the same roll-up works on an SD atlas's tagger labels ("dog", "black dog" -> "dog").

Only the labels close to the concept's best one take part (`CLOSE`: a mean IoU at least that share of the best
one's), so a label it matched twice by chance does not widen its name.

Attribute labels ('red', 'circle', 'top left', 'striped': atlas.annotate.attributes) name a concept when its best
one predicts its maps at least as well as its best object label: a concept firing on every red thing matches the
attribute 'red' better than 'red circle', and is "red (any shape)" because the attribute says so, whichever red
objects it was also linked to. On an SD atlas the words of the tagger's labels play the attributes' part.

A concept with no link of either kind gets a guess, marked as one, from what was measured when linking
(`guess_name`): "context-free?" when it fires on nearly every image, its best label below the rule with a question
mark, or how often it fires.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from atlas.annotate.attributes import OBJECT, WORD, attribute_of
from atlas.dictionary.config import ATTRIBUTE_LINKS, DICTIONARY_DIR, GUESSES

if TYPE_CHECKING:
    from atlas.store import Atlas

CLOSE = 0.5
"""A label takes part in the roll-up when its mean IoU is at least this share of the concept's best label's."""
ENTRY_HIT_RATE = 0.1
"""A concept is the dictionary's entry for a label when that is its name and it matches (IoU > 0.5) at least this
share of the label's objects: two chance matches among 90 red circles pass the linking rule, not this one."""
EVERYWHERE = 0.9
"""A concept with no link that fires on at least this share of the dictionary images is guessed context-free."""
GUESS_IOU = 0.05
"""A concept with no link is guessed to be its best label below the rule when their mean IoU reaches this."""


@dataclass(frozen=True)
class Link:
    """One (concept, label) pair of the dictionary."""

    label: str
    mean_iou: float
    hit_rate: float
    support: int
    kind: str = OBJECT
    """object, or the attribute kind of the label (colour, shape, position, style, word)."""


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


def attribute_name(link: Link, known: Iterable[str] = ()) -> str:
    """The name of an attribute label: 'red (any shape)' when the object labels (`known`) holding it vary in one
    kind ('red (any object)' on an SD atlas with 'red dog' and 'red car'), else the value and its kind ('top left
    (position)'; a tagger's word alone)."""
    words = link.label.split()
    others = {" ".join(w for w in label.split() if w not in words) for label in known
              if all(w in label.split() for w in words)} - {"", link.label}
    kinds = {attribute_of(v) or OBJECT for v in others}
    if len(others) > 1 and len(kinds) == 1:
        return f"{link.label} (any {kinds.pop()})"
    return link.label if link.kind == WORD else f"{link.label} ({link.kind})"


def name_stem(name: str) -> str:
    """What a roll-up name names, without its qualifier: "triangle" of "triangle (any colour)"."""
    return name.split(" (", 1)[0]


def naming_link(links: Sequence[Link]) -> Link | None:
    """The attribute link that names the concept: its best one, when the concept has no object label, or when it
    predicts the concept's maps at least as well as its best object label and strongly (it matches at least
    ENTRY_HIT_RATE of the attribute's images); None when the object labels name it."""
    attributes = sorted((x for x in links if x.kind != OBJECT), key=lambda x: (-x.mean_iou, -x.hit_rate, x.label))
    objects = [x.mean_iou for x in links if x.kind == OBJECT]
    if attributes and (not objects or (attributes[0].mean_iou >= max(objects)
                                       and attributes[0].hit_rate >= ENTRY_HIT_RATE)):
        return attributes[0]
    return None


def concept_name(links: Sequence[Link], known: Iterable[str] = ()) -> str | None:
    """A concept's roll-up name from its dictionary links, object and attribute (None when it has none)."""
    known = list(known)
    by_attribute = naming_link(links)
    if by_attribute:
        return attribute_name(by_attribute, known)
    return rollup_name([x.label for x in close_links([x for x in links if x.kind == OBJECT])], known)


@dataclass(frozen=True)
class Guess:
    """What was measured, when linking, of a concept with no link (a row of dictionary/guesses.parquet)."""

    images: int
    images_total: int
    label: str | None = None
    kind: str | None = None
    mean_iou: float = 0.0
    hits: int = 0
    support: int = 0


def guess_name(guess: Guess | None, t: float) -> str:
    """A name for a concept with no dictionary link, saying it is a guess and from what: context-free when it fires
    on nearly every image, its best label below the rule, or how often it fires."""
    if guess is None or not guess.images:
        return f"unnamed: never fires on the dictionary images at t = {t:g}"
    share = guess.images / guess.images_total if guess.images_total else 0.0
    if share >= EVERYWHERE:
        return (f"context-free? fires on {share:.0%} of the dictionary images at t = {t:g} (a guess from its "
                "density, no label)")
    if guess.label and guess.mean_iou >= GUESS_IOU:
        kind, what = ("", "objects") if guess.kind == OBJECT else (f"{guess.kind} ", "images")
        return (f"{guess.label}? (a guess from its best {kind}label, below the dictionary's rule: mean IoU "
                f"{guess.mean_iou:.2f}, IoU > 0.5 on {guess.hits} of {guess.support} {what})")
    return f"unnamed: fires on {share:.0%} of the dictionary images at t = {t:g} (no label comes close)"


def _sae_latents(atlas: Atlas, concept_ids: Sequence[str]) -> dict[tuple[int, int], str]:
    pairs = {}
    for cid in concept_ids:
        sae, latent = atlas.resolve(cid)
        pairs[(sae.id, latent)] = cid
    return pairs


def _dictionary_rows(atlas: Atlas, name: str, pairs: dict[tuple[int, int], str]) -> list[dict]:
    """The rows of a dictionary/ file for these (sae_id, latent) pairs (none before the atlas was linked with
    attributes)."""
    import pyarrow.parquet as pq

    path = atlas.root / DICTIONARY_DIR / name
    if not pairs or not path.exists():
        return []
    table = pq.read_table(path, filters=[("sae_id", "in", sorted({s for s, _ in pairs}))])
    return [r for r in table.to_pylist() if (r["sae_id"], r["latent"]) in pairs]


def attribute_links(atlas: Atlas, concept_ids: Sequence[str]) -> dict[str, list[Link]]:
    """The attribute links of each concept, best first."""
    pairs = _sae_latents(atlas, concept_ids)
    found: dict[str, list[Link]] = {cid: [] for cid in concept_ids}
    for r in _dictionary_rows(atlas, ATTRIBUTE_LINKS, pairs):
        found[pairs[(r["sae_id"], r["latent"])]].append(Link(r["label"], r["mean_iou"], r["hit_rate"], r["support"],
                                                             r["kind"]))
    return {cid: sorted(links, key=lambda x: (-x.mean_iou, x.label)) for cid, links in found.items()}


def attribute_linked(atlas: Atlas, variant: str = "") -> list[str]:
    """Ids of the concepts of the SAEs of `variant` ("": the primary ones) that have attribute links."""
    import pyarrow.parquet as pq

    from atlas.store.ids import concept_id

    path = atlas.root / DICTIONARY_DIR / ATTRIBUTE_LINKS
    saes = {s.id: s for s in atlas.saes() if s.variant == variant}
    if not path.exists() or not saes:
        return []
    pairs = {(r["sae_id"], r["latent"]) for r in pq.read_table(path, columns=["sae_id", "latent"]).to_pylist()}
    return sorted(concept_id(saes[s].block, saes[s].t, saes[s].branch, latent, variant) for s, latent in pairs
                  if s in saes)


def guess_names(atlas: Atlas, concept_ids: Sequence[str]) -> dict[str, str]:
    """`guess_name` of each concept, from the measures stored when the atlas was linked (an atlas linked before
    they were stored says so)."""
    if not (atlas.root / DICTIONARY_DIR / GUESSES).exists():
        return dict.fromkeys(concept_ids, "unnamed: no dictionary link (run `atlas link` again for a guess)")
    pairs = _sae_latents(atlas, concept_ids)
    t = {cid: atlas.resolve(cid)[0].t for cid in concept_ids}
    rows = {pairs[(r["sae_id"], r["latent"])]: r for r in _dictionary_rows(atlas, GUESSES, pairs)}
    guesses = {cid: Guess(r["images"], r["images_total"], r["label"], r["kind"], r["mean_iou"] or 0.0,
                          r["hits"] or 0, r["support"] or 0) for cid, r in rows.items()}
    return {cid: guess_name(guesses.get(cid), t[cid]) for cid in concept_ids}


def display_names(atlas: Atlas, concept_ids: Sequence[str]) -> dict[str, str]:
    """Each concept's dictionary name, or for one with no link a guess that says so (`guess_name`)."""
    names = atlas_concept_names(atlas, concept_ids)
    guessed = guess_names(atlas, [cid for cid, name in names.items() if name is None])
    return {cid: name or guessed[cid] for cid, name in names.items()}


def atlas_concept_names(atlas: Atlas, concept_ids: Sequence[str]) -> dict[str, str | None]:
    """The roll-up name of each concept (None for one without dictionary links), from the atlas's dictionary."""
    if not concept_ids:
        return {}
    rows = atlas.query("SELECT concept_id, label, mean_iou, hit_rate, support FROM concept_labels "
                       "WHERE list_contains(?, concept_id)", [list(concept_ids)]).to_pylist()
    links = attribute_links(atlas, concept_ids)
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
    """Its object labels, best first."""
    attributes: list[Link]
    """Its attribute labels, best first."""
    guess: str | None
    """For a concept with no link of either kind, a name that says it is a guess and from what (`guess_name`)."""
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
    attributes = attribute_links(atlas, [concept_id])[concept_id]
    name = concept_name(links + attributes, atlas.labels())
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
    if attributes:
        shown = ", ".join(f"'{x.label}' ({x.kind}, mean IoU {x.mean_iou:.2f}, hit rate {x.hit_rate:.2f}, {x.support} "
                          "images)" for x in attributes[:4])
        parts.insert(0 if not links else 1, f"Attribute labels: {shown}" + (
            f" and {len(attributes) - 4} more." if len(attributes) > 4 else "."))
    by_attribute = naming_link(links + attributes)
    if by_attribute:
        parts.insert(0, f"Named from the attribute '{by_attribute.label}' ({by_attribute.kind}), which predicts its "
                        "maps at least as well as any object label.")
    guess = None
    if not links and not attributes:
        guess = guess_names(atlas, [concept_id])[concept_id]
        parts.insert(0, f"No label passes the dictionary's rule for this concept; a guess: {guess}.")
    if name:
        parts.insert(0, f"{name[0].upper()}{name[1:]}.")
    return Description(name, " ".join(parts), links, attributes, guess, emergence, fired, total)
