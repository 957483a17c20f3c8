"""Which split a prompt belongs to: train (SAE training), dictionary (linking concepts) or test (scoring).

A stable hash of the text decides, so the same prompt lands in the same split in every capture, on every
machine, whatever model drew it.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "dictionary", "test")


def split_of(prompt: str) -> str:
    """Deterministic split of a prompt: 80 % train, 10 % dictionary, 10 % test (by a stable hash)."""
    bucket = int.from_bytes(hashlib.sha1(prompt.encode()).digest()[:4], "little") % 10
    return "train" if bucket < 8 else ("dictionary" if bucket == 8 else "test")
