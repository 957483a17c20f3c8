"""The one error type of Concept Atlas: every expected failure is an `AtlasError`.

An expected failure is one the user can fix -- bad input, something named that does not exist, a write
on a read-only atlas, another process in the way, a model or library this machine lacks -- and its
message is one line that says what to do next. The surfaces trust that line: the CLI prints
`Error: <message>` and exits with 1, the web atlas answers with the error's `status` and the line.
Anything that is not an AtlasError is a bug: a traceback in the terminal, a 500 and a logged traceback
on the server. Each subclass below names a meaning and its HTTP status; the errors of the rooms (the
store's, the models', the stages') derive from the one that fits.
"""

from __future__ import annotations

from typing import ClassVar


class AtlasError(Exception):
    """An expected failure: its message is one line that says what to do next."""

    status: ClassVar[int] = 400
    """The HTTP status the web atlas answers with."""

    @property
    def message(self) -> str:
        """The first line of the message (the error's name when it has none)."""
        lines = str(self).strip().splitlines()
        return lines[0] if lines else type(self).__name__


class BadInputError(AtlasError):
    """An argument, option, config value or request that cannot be right: the message says what to give."""

    status = 400


class ReadOnlyError(AtlasError):
    """A write refused because the atlas or the server was opened read-only."""

    status = 403


class NotFoundError(AtlasError):
    """Something the input names, or the step it asks for needs, is not there: an image, a label, an SAE, an
    activation directory, the annotations a later stage reads."""

    status = 404


class ConflictError(AtlasError):
    """The atlas or a directory is in a state that conflicts with the request: another process writes to it,
    its schema is not this version's, it holds a run with other settings."""

    status = 409


class UnavailableError(AtlasError):
    """This machine cannot do it now: the catalog is busy, a file of the atlas needs rebuilding, or a model,
    GPU or optional library is missing."""

    status = 503
