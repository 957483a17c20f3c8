"""The noun phrases of a prompt, by a small dependency-free heuristic (the default tagger of grounded-sam).

The prompt said what the image should hold, so its noun phrases are good tags for Grounding DINO, which
finds each one or nothing. The heuristic, in order:
1. lower-case; split into words and punctuation;
2. cut into fragments at punctuation, conjunctions ("and", "with"), prepositions ("on", "next to"),
   auxiliaries and relative words ("is", "that") and "-ing" verbs ("riding"; nouns such as "building"
   and "painting" are kept);
3. drop determiners and numbers ("a", "the", "two") from each fragment; adjectives stay ("red car");
4. drop fragments made only of position or picture words ("the left", "a photo"), and repeats.
It has no part-of-speech model: a past participle stays in its phrase ("car parked").
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*|[^\sa-z0-9]")

_SPLIT = frozenset(
    "and or but nor plus with without & "
    "on in at of to into onto from by for under over above below beneath behind beside besides near next "
    "inside outside through across against along around between among beyond toward towards upon within "
    "like during via amid amidst atop "
    "is are was were be been being has have had that which who whom whose while where when as".split()
)
_DETERMINERS = frozenset(
    "a an the this these those some any many several few his her its their my your our each every all both "
    "no another one two three four five six seven eight nine ten eleven twelve dozen".split()
)
# Words that alone name no object: positions and the kind of picture.
_NOT_OBJECTS = frozenset(
    "left right top bottom middle center centre front back side corner edge foreground background distance "
    "photo photograph picture image illustration drawing render rendering style view close-up closeup shot "
    "scene".split()
)
_ING_NOUNS = frozenset(
    "building painting ceiling clothing ring king wing string thing swing spring morning evening earring "
    "pudding dumpling railing bedding wedding stocking icing sling sibling ping".split()
)


def _splits(word: str) -> bool:
    if word in _SPLIT or not word[0].isalnum():
        return True
    return word.endswith("ing") and len(word) > 4 and word not in _ING_NOUNS


def prompt_nouns(prompt: str) -> list[str]:
    """Noun phrases of `prompt`, in order, without repeats: "a dog and a red car" -> ["dog", "red car"]."""
    fragments: list[list[str]] = [[]]
    for word in _WORD.findall(prompt.lower()):
        if _splits(word):
            fragments.append([])
        elif word not in _DETERMINERS and not word.isdigit():
            fragments[-1].append(word)
    phrases: list[str] = []
    for words in fragments:
        phrase = " ".join(words)
        if words and not all(w in _NOT_OBJECTS for w in words) and phrase not in phrases:
            phrases.append(phrase)
    return phrases
