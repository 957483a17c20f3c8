"""How failures reach a browser or an API client: a status code and one line, never a traceback.

Every expected failure is an `AtlasError` (atlas.errors) that carries its HTTP status and a one-line message
saying what to do next; the app answers it with the JSON envelope `{"ok": false, "error": ..., "status": ...}`
on JSON, CSV and PNG routes and an error page on HTML ones. Anything else is a bug: a 500, and its
traceback in the server's log.
"""

from __future__ import annotations

from pydantic import ValidationError

from atlas.errors import AtlasError, BadInputError, ReadOnlyError, UnavailableError


class ReadOnlyServerError(ReadOnlyError):
    """A write (renaming a concept, running an edit) on a server started with --read-only."""

    def __init__(self, what: str) -> None:
        super().__init__(f"cannot {what}: this atlas is served read-only (restart `atlas serve` without --read-only)")


class CrossSiteError(AtlasError):
    """A write without the same-origin proof or the session's CSRF token (atlas.server.guard)."""

    status = 403


class WrongHostError(AtlasError):
    """A request whose Host header names another server (DNS rebinding, atlas.server.guard.Hosts)."""

    status = 421


class WorkerDied(UnavailableError):
    """An SQL worker that stopped answering: killed by the server, or crashed (atlas.server.sql_worker)."""


def bad_input(err: ValidationError) -> BadInputError:
    """A model a view builds from its own parameters, refused by pydantic: `bad <field>: <problem>` for the first."""
    first = err.errors()[0] if err.errors() else {}
    return BadInputError(f"bad {'.'.join(str(p) for p in first.get('loc', ())) or 'input'}: "
                         f"{first.get('msg', 'invalid value')}")
