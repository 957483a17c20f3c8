"""Alembic migrations of the catalog: a real upgrade from 0001 keeps data; newer atlases are refused."""

from __future__ import annotations

import hashlib
import json

import duckdb
import pytest

from atlas.store import Atlas, SchemaTooNewError, SchemaTooOldError, migrate, open_atlas, open_writer, snapshot
from atlas.store.catalog import CATALOG_FILE, Catalog
from atlas.store.schema import Base


def checksum(path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


def make_0001_atlas(root):
    """An atlas as the first schema version wrote it, with a few rows."""
    root.mkdir()
    catalog = Catalog(root, threads=1)
    catalog.upgrade("0001")
    with catalog.write("prompts", "images", "saes", "concepts") as tx:
        tx.query("INSERT INTO prompts VALUES (0, 'a red circle', 'train'), (1, 'a blue square', 'test')")
        tx.query("INSERT INTO images VALUES (0, 0, 3, 7.5, 20, 'images/000000.png')")
        tx.query("INSERT INTO saes (id, block, t, branch, k, n_latents, d_in, grid_h, grid_w, metrics, n_codes) "
                 "VALUES (0, 'mid', 1.0, 'cond', 4, 8, 16, 4, 4, '{\"fvu\": 0.2}', 0)")
        tx.query("INSERT INTO concepts VALUES (0, 3, 0.25, 1.5, 0.9, 'circle')")


def test_revisions_are_numbered_and_head_matches_the_models(tmp_path):
    assert migrate.revisions() == ("0001", "0002", "0003", "0004", "0005") and migrate.head() == "0005"
    catalog = Catalog(tmp_path, threads=1)
    catalog.upgrade()
    con = duckdb.connect(str(tmp_path / CATALOG_FILE), read_only=True)
    try:
        for table in Base.metadata.sorted_tables:
            columns = [r[0] for r in con.execute(f"DESCRIBE {table.name}").fetchall()]
            assert columns == [c.name for c in table.columns], table.name
    finally:
        con.close()


def test_upgrade_from_0001_keeps_the_data(tmp_path):
    root = tmp_path / "old"
    make_0001_atlas(root)
    assert snapshot.meta(snapshot.current(root))["schema"] == "0001"
    before = checksum(root)
    with pytest.raises(SchemaTooOldError, match="has schema 0001, this version needs 0005: .*atlas upgrade"):
        open_atlas(root)
    assert checksum(root) == before
    with open_writer(root, threads=1) as writer:
        atlas = writer.atlas
        assert atlas.sql("SELECT id, text, split FROM prompts ORDER BY id").rows == [
            (0, "a red circle", "train"), (1, "a blue square", "test")]
        assert atlas.sql("SELECT seed, guidance, path FROM images").rows == [(3, 7.5, "images/000000.png")]
        concept = atlas.concept("mid/1.0/3")
        assert (concept.frequency, concept.best_label, concept.name, concept.note) == (0.25, "circle", None, None)
        assert atlas.saes()[0].metrics == {"fvu": 0.2}
        writer.catalog.rename_concept("mid/1.0/3", "roundness", "added by 0002")
        writer.catalog.log_intervention("mid/1.0/3", "global", 1.5)
    with open_atlas(root) as atlas:
        assert atlas.concept("mid/1.0/3").name == "roundness"
        assert atlas.sql("SELECT kind, strength FROM interventions").rows == [("global", 1.5)]
        assert atlas.sql("SELECT (SELECT count(*) FROM trajectories) + (SELECT count(*) FROM lineage)").rows == [(0,)]
    assert snapshot.meta(snapshot.current(root))["schema"] == "0005"


def test_upgrade_to_0003_keeps_every_concept_id_and_makes_room_for_variants(tmp_path):
    """An atlas of schema 0002 (one SAE per block, t, branch) keeps its SAE ids, concept ids, names and links; its
    SAEs become the primary ones, and a variant of the same key can then join them."""
    root = tmp_path / "old"
    make_0001_atlas(root)
    catalog = Catalog(root, threads=1)
    catalog.upgrade("0002")
    with catalog.write("saes", "concepts", "labels", "concept_labels") as tx:
        tx.query("INSERT INTO saes (id, block, t, branch, k, n_latents, d_in, grid_h, grid_w, metrics, n_codes) "
                 "VALUES (1, 'mid', 1.0, 'uncond', 4, 8, 16, 4, 4, '{}', 0)")
        tx.query("INSERT INTO concepts VALUES (1, 5, 0.5, 1.0, 1.0, NULL, 'five', NULL)")
        tx.query("INSERT INTO labels VALUES (0, 'circle', NULL)")
        tx.query("INSERT INTO concept_labels VALUES (0, 3, 0, 0.6, 0.5, 0.4, 0.3, 7)")
    with open_writer(root, threads=1) as writer:
        atlas = writer.atlas
        assert [(s.id, s.branch, s.variant) for s in atlas.saes()] == [(0, "cond", ""), (1, "uncond", "")]
        assert atlas.sql("SELECT concept_id, variant, k, name FROM concepts ORDER BY sae_id").rows == [
            ("mid/1.0/3", "", 4, None), ("mid/1.0/uncond/5", "", 4, "five")]
        assert atlas.sql("SELECT concept_id, label FROM concept_labels").rows == [("mid/1.0/3", "circle")]
        assert atlas.concept("mid/1.0/uncond/5").name == "five"
        k8 = writer.catalog.add_sae("mid", 1.0, "cond", 8, 8, 16, variant="k8")
        assert k8 == 2 and writer.catalog.add_sae("mid", 1.0, "cond", 4, 8, 16) == 0
        assert atlas.concept("mid/1.0/cond@k8/3").sae_id == k8 and atlas.concept("mid/1.0/3").sae_id == 0
    assert snapshot.meta(snapshot.current(root))["schema"] == "0005"


def test_an_atlas_from_a_newer_version_is_refused_unchanged(tmp_path):
    root = tmp_path / "new"
    Atlas.create(root, threads=1).close()
    generation = snapshot.current(root)
    (generation / "meta.json").write_text(json.dumps({"schema": "0099", "generation": 1}))
    before = checksum(root)
    for opener in (lambda: open_atlas(root), lambda: open_writer(root),
                   lambda: Atlas.create(root)):
        with pytest.raises(SchemaTooNewError, match="newer Concept Atlas \\(schema 0099; this version knows up to "
                                                    "0005\\): upgrade with `pip install -U concept-atlas`"):
            opener()
    assert checksum(root) == before


def test_a_catalog_stamped_newer_is_refused_by_writers(tmp_path):
    root = tmp_path / "stamped"
    Atlas.create(root, threads=1).close()
    con = duckdb.connect(str(root / CATALOG_FILE))
    con.execute("UPDATE alembic_version SET version_num = '0099'")
    con.close()
    catalog = Catalog(root, threads=1)
    assert catalog.revision() == "0099"
    with pytest.raises(SchemaTooNewError, match="schema 0099"):
        open_writer(root)


def test_the_readers_schema_facts_agree_with_alembic_and_sqlalchemy():
    """Readers know the revisions and tables without loading Alembic or SQLAlchemy (atlas.store.revisions); they
    must be the ones the migrations and the models define."""
    from alembic.script import ScriptDirectory

    from atlas.store import migrate, revisions, schema

    script = ScriptDirectory.from_config(migrate._config())
    assert revisions.revisions() == tuple(reversed([r.revision for r in script.walk_revisions()]))
    assert list(revisions.TABLES) == list(schema.TABLES)
