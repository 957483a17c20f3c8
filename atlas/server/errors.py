"""How failures reach a browser or an API client: a status code and one line, never a traceback.

Every expected error of the library is a `ValueError` whose message already says what to do next
(atlas.store.errors); this module only picks the HTTP status for it. JSON, CSV and PNG routes answer
with the envelope `{"ok": false, "error": ..., "status": ...}`, HTML pages with an error page.
"""

from __future__ import annotations

from pydantic import ValidationError

from atlas.store import (
    AtlasNotFoundError,
    CatalogBusyError,
    NoIndexError,
    NoLabelsError,
    QueryTimeoutError,
    ReadOnlyAtlasError,
    UnknownLabelError,
    UnknownSaeError,
)


class NotFoundError(ValueError):
    """Something named in the URL (an image, an object, a concept) is not in the atlas."""


class ReadOnlyServerError(ValueError):
    """A write (renaming a concept, running an edit) on a server started with --read-only."""

    def __init__(self, what: str) -> None:
        super().__init__(f"cannot {what}: this atlas is served read-only (restart `atlas serve` without --read-only)")


STATUS: list[tuple[type[Exception], int]] = [
    (NotFoundError, 404), (UnknownLabelError, 404), (UnknownSaeError, 404), (NoIndexError, 404),
    (NoLabelsError, 404), (AtlasNotFoundError, 404), (ReadOnlyServerError, 403), (ReadOnlyAtlasError, 403),
    (QueryTimeoutError, 400), (CatalogBusyError, 503),
]


def status_of(err: Exception) -> int:
    """The HTTP status of an expected error (400 for any other ValueError); 500 for a bug."""
    for kind, status in STATUS:
        if isinstance(err, kind):
            return status
    return 400 if isinstance(err, (ValueError, KeyError, FileNotFoundError)) else 500


def one_line(err: BaseException) -> str:
    """The first line of an error's message (KeyError's repr quotes stripped), or its type's name; a pydantic
    validation error by its first problem."""
    if isinstance(err, ValidationError) and err.errors():
        first = err.errors()[0]
        return f"bad {'.'.join(str(p) for p in first['loc']) or 'input'}: {first['msg']}"
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    lines = str(message).strip().splitlines()
    return lines[0] if lines else type(err).__name__
