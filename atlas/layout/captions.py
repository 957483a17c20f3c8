"""What a caption says about where an object is: the position it names for a label, if any.

A caption is cut into clauses at commas and at " and "; the clause that mentions the label (as whole words)
names its position when it holds one of POSITIONS ("a red circle at the top left, a blue square on the right":
'red circle' -> "top left", 'blue square' -> "right"). Synonyms map to one name (upper -> top, lower -> bottom,
center/middle -> centre). A label in no clause, in clauses naming different positions, or in a clause that
names none has no named position. The caption-aware layout baseline reads this, so that the model's codes are
compared with what the caption alone gives away.
"""

from __future__ import annotations

import re

SYNONYMS = {"upper": "top", "lower": "bottom", "center": "centre", "middle": "centre"}
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "upper left", "upper right", "lower left",
             "lower right", "top", "bottom", "left", "right", "upper", "lower", "centre", "center", "middle")
"""Position phrases, longest first, so that "top left" is found before "top"."""
_CLAUSES = re.compile(r",|\band\b")
_POSITION = re.compile(r"\b(" + "|".join(p.replace(" ", r"\s+") for p in POSITIONS) + r")\b")


def canonical(phrase: str) -> str:
    """One name per position: 'upper  left' -> 'top left', 'middle' -> 'centre'."""
    return " ".join(SYNONYMS.get(word, word) for word in phrase.lower().split())


def named_position(caption: str, label: str) -> str | None:
    """The position `caption` names for the object `label`, canonical, or None when it names none (or several)."""
    word = re.compile(r"\b" + r"\s+".join(map(re.escape, label.lower().split())) + r"\b")
    found = set()
    for clause in _CLAUSES.split(caption.lower()):
        if word.search(clause):
            where = _POSITION.search(clause)
            found.add(canonical(where.group(1)) if where else None)
    return found.pop() if len(found) == 1 else None
