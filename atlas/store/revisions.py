"""What a reader needs to know of the catalog's schema, without loading SQLAlchemy or Alembic: the table names
and the known revisions (read from the migration scripts' `revision` lines). Writers migrate with
atlas.store.migrate; tests/test_migrations.py checks both agree with it."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

TABLES = ("models", "prompts", "images", "saes", "concepts", "labels", "objects", "concept_labels", "interventions",
          "files", "stages", "trajectories", "lineage")
"""Every catalog table (atlas.store.schema's models, in their order); each is published as a Parquet snapshot."""
IMAGE, MASK, SAE_CHECKPOINT = "image", "mask", "sae_checkpoint"
CONTENT_KINDS = (IMAGE, MASK, SAE_CHECKPOINT)
"""The kinds of `files` rows that only carry a checksum of a file the atlas keeps elsewhere too (an image, a mask, a
checkpoint file of an SAE): `atlas check` verifies them; readers need none of them to read codes or indexes."""
_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(?:\"(\w+)\"|'(\w+)'|None)", re.M)


@cache
def revisions() -> tuple[str, ...]:
    """Known revisions, oldest first."""
    import atlas.migrations

    parents: dict[str | None, str] = {}
    for script in (Path(atlas.migrations.__file__).parent / "versions").glob("*.py"):
        found = {m.group(1): m.group(2) or m.group(3) for m in _REVISION.finditer(script.read_text())}
        if "revision" in found:
            parents[found.get("down_revision")] = found["revision"]
    chain, revision = [], parents.get(None)
    while revision is not None:
        chain.append(revision)
        revision = parents.get(revision)
    return tuple(chain)


def head() -> str:
    return revisions()[-1]
