"""Concept ids: `<block>/<t>/<latent>` (branch `cond`) or `<block>/<t>/<branch>/<latent>`.

The same string names a concept in the CLI, the Python API, URLs and SQL (the `concept_id` column),
so it is made in exactly one way: t is printed as Python's shortest round-trip float (1.0, 0.5, 0.0),
which is also what DuckDB prints for a DOUBLE, and the view SQL below builds the same string.
"""

from __future__ import annotations

from dataclasses import dataclass

from atlas.store.errors import BadConceptIdError

DEFAULT_BRANCH = "cond"

CONCEPT_ID_SQL = ("{s}.block || '/' || CAST({s}.t AS VARCHAR) || CASE WHEN {s}.branch = 'cond' THEN '' "
                  "ELSE '/' || {s}.branch END || '/' || CAST({c}.latent AS VARCHAR)")
"""SQL expression of a concept id, given the alias of a `saes` row ({s}) and of a row with a latent ({c})."""


@dataclass(frozen=True)
class ConceptRef:
    """A parsed concept id; `str()` gives the canonical form."""

    block: str
    t: float
    branch: str
    latent: int

    def __str__(self) -> str:
        return concept_id(self.block, self.t, self.branch, self.latent)


def concept_prefix(block: str, t: float, branch: str) -> str:
    """The part of a concept id that names its SAE: `mid/1.0` or `mid/1.0/uncond`."""
    return f"{block}/{float(t)!r}" + ("" if branch == DEFAULT_BRANCH else f"/{branch}")


def concept_id(block: str, t: float, branch: str, latent: int) -> str:
    return f"{concept_prefix(block, t, branch)}/{int(latent)}"


def parse_concept_id(text: str) -> ConceptRef:
    """Parse `mid/1.0/412` or `mid/1.0/uncond/412`; raises BadConceptIdError with the expected form."""
    parts = str(text).strip().split("/")
    if len(parts) not in (3, 4):
        raise BadConceptIdError(text, f"expected 3 or 4 parts separated by '/', got {len(parts)}")
    block, t_text, *branch, latent_text = parts
    try:
        t = float(t_text)
    except ValueError:
        raise BadConceptIdError(text, f"t {t_text!r} is not a number") from None
    if not latent_text.isdigit():
        raise BadConceptIdError(text, f"latent {latent_text!r} is not a non-negative integer")
    if not block or (branch and not branch[0]):
        raise BadConceptIdError(text, "empty block or branch")
    return ConceptRef(block, t, branch[0] if branch else DEFAULT_BRANCH, int(latent_text))
