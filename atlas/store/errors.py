"""Errors of the atlas store: each message is one line that says what to do next.

Each is an `AtlasError` (atlas.errors) of the kind that gives its HTTP status, so the CLI and the web
atlas report them without knowing the store; none of them is raised after anything was changed on disk.
"""

from __future__ import annotations

import difflib

from atlas.errors import AtlasError as AtlasError
from atlas.errors import BadInputError, ConflictError, NotFoundError, UnavailableError


class AtlasNotFoundError(NotFoundError):
    def __init__(self, path: object) -> None:
        super().__init__(f"no atlas at {path}: build one with `atlas build --atlas {path}`, "
                         "or point --atlas / ATLAS_DIR at an existing atlas directory")


class SchemaTooNewError(ConflictError):
    def __init__(self, path: object, revision: str, head: str) -> None:
        super().__init__(f"the atlas at {path} was made by a newer Concept Atlas (schema {revision}; this version "
                         f"knows up to {head}): upgrade with `pip install -U concept-atlas`")


class SchemaTooOldError(ConflictError):
    def __init__(self, path: object, revision: str, head: str) -> None:
        super().__init__(f"the atlas at {path} has schema {revision}, this version needs {head}: upgrade it once "
                         f"with `atlas upgrade --atlas {path}` (or `atlas.open_writer(path)` from Python, which "
                         "upgrades first)")


class UnknownLabelError(NotFoundError):
    def __init__(self, label: str, known: list[str]) -> None:
        close = difflib.get_close_matches(label, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else \
            f"{len(known)} labels exist; list them with `atlas sql \"SELECT name FROM labels\"`"
        super().__init__(f"unknown label {label!r}: {hint}")


class NoLabelsError(NotFoundError):
    def __init__(self) -> None:
        super().__init__("this atlas has no concept labels yet: they come from `atlas link` "
                         "(after `atlas annotate`); search by example with `atlas search --like CONCEPT_ID`")


class UnknownSaeError(NotFoundError):
    """An unknown block, t, branch, variant or k; the message lists the ones present in the atlas."""

    def __init__(self, what: str, value: object, valid: list) -> None:
        shown = [(repr(v) + (" (the primary SAE)" if not v else "")) if what == "variant" else str(v) for v in valid]
        listed = ", ".join(shown) if valid else "none yet (no SAEs in this atlas: run `atlas train`)"
        super().__init__(f"unknown {what} {value!r}: this atlas has {what} {listed}")


class BadConceptIdError(BadInputError):
    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"bad concept id {text!r}: {why}; write <block>/<t>/<latent>, e.g. mid/1.0/412 "
                         "(or <block>/<t>/<branch>/<latent>, <block>/<t>/<branch>@<variant>/<latent>)")


class SqlError(BadInputError):
    """Malformed SQL or an error DuckDB raised while running it (its first line)."""


class ReadOnlySqlError(BadInputError):
    def __init__(self, why: str) -> None:
        super().__init__(f"atlas sql is read-only: {why}")


class QueryTimeoutError(BadInputError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"query stopped after the {seconds:g} s time limit: filter on block, t and latent or "
                         "image_id, or raise --timeout")


class CorruptFileError(UnavailableError):
    """A missing or unreadable file of the atlas; `path` is relative to the atlas directory."""

    FIXES = {"tables": "`atlas upgrade` rewrites the catalog snapshot", "codes": "re-run `atlas encode`",
             "index": "rebuild it with Atlas.add_index(sae_id, decoder) (`atlas encode` indexes every SAE it adds)"}

    def __init__(self, path: object, detail: str) -> None:
        self.path = str(path)
        fix = self.FIXES.get(self.path.split("/")[0], "re-run the stage that wrote it")
        super().__init__(f"atlas file {path} is missing or corrupt ({detail}); {fix}")


class AtlasInUseError(ConflictError):
    def __init__(self, path: object) -> None:
        super().__init__(f"another process is writing to the atlas at {path}; run this again when no build, "
                         "encode, annotate, link or edit is running")


class CatalogBusyError(UnavailableError):
    def __init__(self, path: object, seconds: float) -> None:
        super().__init__(f"the catalog {path} stayed locked by another writing process for {seconds:g} s; "
                         "wait for it to finish and try again")


class NoIndexError(NotFoundError):
    def __init__(self, what: str) -> None:
        super().__init__(f"no FAISS index for {what} yet: `atlas encode` indexes the decoder of every SAE it adds "
                         "(from Python: Atlas.add_index(sae_id, decoder))")


class InvalidInputError(BadInputError):
    """Arguments a writer refuses before touching the disk (wrong lengths, ids out of range, ...)."""
