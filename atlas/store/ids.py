"""Concept ids: `<block>/<t>/<latent>` (branch `cond`) or `<block>/<t>/<branch>/<latent>`, and with a variant
`<block>/<t>/<branch>@<variant>/<latent>`.

An SAE is keyed by (block, t, branch, variant). The variant is a short name telling apart several SAEs of one
(block, t, branch) -- other k's, later other SAE types; "" is the atlas's primary SAE of that key, the one every id
without `@` names, so ids of atlases made before variants existed stay valid. With a variant the branch is always
written (`mid/1.0/cond@k20/412`); the short form `mid/1.0@k20/412` is read too. `@` and `/` never occur in a block,
branch or variant, so every id parses one way.

The same string names a concept in the CLI, the Python API, URLs and SQL (the `concept_id` column),
so it is made in exactly one way: t is printed as Python's shortest round-trip float (1.0, 0.5, 0.0),
which is also what DuckDB prints for a DOUBLE, and the view SQL below builds the same string.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from atlas.store.errors import BadConceptIdError, InvalidInputError

DEFAULT_BRANCH = "cond"
DEFAULT_VARIANT = ""
"""The primary SAE of a (block, t, branch): the one an id without `@<variant>` names."""
VARIANT_MARK = "@"
VARIANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")
"""What a variant other than the primary may be called."""

CONCEPT_ID_PATTERN = r"^[^/@]+/[^/@]+(/[^/@]+)?(@[A-Za-z0-9_.-]{1,40})?/[0-9]+$"
"""The shape of every id parse_concept_id reads (it then checks that t is a number), for schemas (OpenAPI)."""
CONCEPT_ID_SQL = ("{s}.block || '/' || CAST({s}.t AS VARCHAR) || CASE WHEN {s}.branch = 'cond' AND {s}.variant = '' "
                  "THEN '' ELSE '/' || {s}.branch END || CASE WHEN {s}.variant = '' THEN '' ELSE '@' || {s}.variant "
                  "END || '/' || CAST({c}.latent AS VARCHAR)")
"""SQL expression of a concept id, given the alias of a `saes` row ({s}) and of a row with a latent ({c})."""


def k_variants(ks: Sequence[int], types: Sequence[str] = ("topk",)) -> list[str]:
    """The variant names of SAEs trained at several k (and SAE types) on one (block, t, branch), types outer, k
    inner: the first (type, k)'s SAE is the primary ("") and every other is named by what differs from it, "k<k>"
    and the type joined by "-" (`--k 10,20` gives the primary at k = 10 and "k20"; `--k 10,20 --sae-type
    topk,jumprelu` adds "jumprelu" and "jumprelu-k20"). The one place this rule lives: training names its SAE
    directories and the catalog its SAEs by it."""
    return ["-".join(([kind] if kind != types[0] else []) + ([f"k{int(k)}"] if k != ks[0] else []))
            for kind in types for k in ks]


def check_variant(variant: str) -> str:
    """`variant` when it is "" or a valid name; InvalidInputError otherwise."""
    if variant != DEFAULT_VARIANT and not VARIANT_NAME.fullmatch(str(variant)):
        raise InvalidInputError(f"SAE variant {variant!r} must be empty (the primary SAE) or up to 40 letters, digits, "
                                "'_', '.', '-', e.g. k20")
    return variant


@dataclass(frozen=True)
class ConceptRef:
    """A parsed concept id; `str()` gives the canonical form."""

    block: str
    t: float
    branch: str
    latent: int
    variant: str = DEFAULT_VARIANT

    def __str__(self) -> str:
        return concept_id(self.block, self.t, self.branch, self.latent, self.variant)


def branch_part(branch: str, variant: str = DEFAULT_VARIANT) -> str:
    """A branch with its variant: `cond`, `uncond`, `cond@k20`; it names SAE directories and block indexes too."""
    return branch + (f"{VARIANT_MARK}{variant}" if variant else "")


def split_branch_part(text: str) -> tuple[str, str]:
    """(branch, variant) of `cond`, `cond@k20`, ..."""
    branch, _, variant = text.partition(VARIANT_MARK)
    return branch, variant


def sae_name(block: str, t: float, branch: str, variant: str = DEFAULT_VARIANT) -> str:
    """How messages, reports and pipeline stages name an SAE, its branch always written: `mid/1.0/cond`,
    `mid/1.0/cond@k20`."""
    return f"{block}/{float(t)!r}/{branch_part(branch, variant)}"


def block_key(block: str, branch: str, variant: str = DEFAULT_VARIANT) -> str:
    """The key of the FAISS index across the timesteps of one block's SAEs: `mid/cond`, `mid/cond@k20`."""
    return f"{block}/{branch_part(branch, variant)}"


def concept_prefix(block: str, t: float, branch: str, variant: str = DEFAULT_VARIANT) -> str:
    """The part of a concept id that names its SAE: `mid/1.0`, `mid/1.0/uncond` or `mid/1.0/cond@k20`."""
    short = branch == DEFAULT_BRANCH and not variant
    return f"{block}/{float(t)!r}" + ("" if short else f"/{branch_part(branch, variant)}")


def concept_id(block: str, t: float, branch: str, latent: int, variant: str = DEFAULT_VARIANT) -> str:
    return f"{concept_prefix(block, t, branch, variant)}/{int(latent)}"


def parse_concept_id(text: str) -> ConceptRef:
    """Parse `mid/1.0/412`, `mid/1.0/uncond/412` or `mid/1.0/cond@k20/412`; raises BadConceptIdError with the
    expected form."""
    parts = str(text).strip().split("/")
    if len(parts) not in (3, 4):
        raise BadConceptIdError(text, f"expected 3 or 4 parts separated by '/', got {len(parts)}")
    *key, latent_text = parts
    key[-1], mark, variant = key[-1].partition(VARIANT_MARK)  # the variant ends the part before the latent
    block, t_text, *branch = key
    try:
        t = float(t_text) if t_text.isascii() else float("x")  # float() reads full-width digits too
    except ValueError:
        raise BadConceptIdError(text, f"t {t_text!r} is not a number") from None
    if not re.fullmatch(r"[0-9]+", latent_text):  # str.isdigit() passes full-width and superscript digits
        raise BadConceptIdError(text, f"latent {latent_text!r} is not a non-negative integer")
    if not block or (branch and not branch[0]):
        raise BadConceptIdError(text, "empty block or branch")
    if VARIANT_MARK in block or (mark and not VARIANT_NAME.fullmatch(variant)):
        raise BadConceptIdError(text, f"{VARIANT_MARK!r} comes once, before the latent's part, followed by a variant "
                                      "name such as k20")
    return ConceptRef(block, t, branch[0] if branch else DEFAULT_BRANCH, int(latent_text), variant)
