"""Loading pretrained parts from this machine only, with a one-line error when they are missing.

Annotation runs on machines without the model hub, so nothing here may fetch: transformers loads with
`local_files_only=True`, and third-party constructors (RAM, open_clip) run with the hub switched offline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from atlas.annotate.base import AnnotatorNotAvailable
from atlas.models.loader import cached_snapshot

T = TypeVar("T")
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@contextmanager
def hub_offline() -> Iterator[None]:
    """Make every Hugging Face Hub request fail at once for the duration (for code that would fetch)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def is_hub_id(name_or_path: str) -> bool:
    """An existing path is a path; otherwise 'org/name' (or 'name') is a Hugging Face cache id."""
    return not os.path.exists(name_or_path) and bool(_REPO_ID.match(name_or_path))


def missing_message(what: str, name_or_path: str, flag: str) -> str:
    """The one-line answer to 'where are the weights?', for an id or a path."""
    if is_hub_id(name_or_path):
        return (f"{what} {name_or_path} are not on this machine: download them with "
                f"`hf download {name_or_path}` on a machine with network, or pass {flag} PATH")
    return (f"{what} {name_or_path} are not on this machine: no model saved by save_pretrained there; "
            f"pass {flag} PATH to such a directory, or a Hugging Face cache id")


def load_pretrained(load: Callable[..., T], name_or_path: str, what: str, flag: str,
                    cache_dir: str | None = None) -> T:
    """`load(name_or_path)` (a `from_pretrained`) from local files; missing files raise AnnotatorNotAvailable."""
    try:
        with hub_offline():
            return load(name_or_path, local_files_only=True, cache_dir=cache_dir)
    except OSError:
        raise AnnotatorNotAvailable(missing_message(what, name_or_path, flag)) from None


def check_pretrained(name_or_path: str, what: str, flag: str, files: tuple[str, ...] = ("config.json",),
                     cache_dir: str | None = None) -> None:
    """Raise what `load_pretrained` would for a checkpoint that is not on this machine, looking at files only: the
    directory (or the cached snapshot of a hub id) must hold a file matching each glob pattern of `files`, and
    weights."""
    path = cached_snapshot(name_or_path, cache_dir) if is_hub_id(name_or_path) else Path(name_or_path)
    complete = (path is not None and all(any(path.glob(pattern)) for pattern in files)
                and (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))))
    if not complete:
        raise AnnotatorNotAvailable(missing_message(what, name_or_path, flag))
