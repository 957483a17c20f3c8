"""Alembic migrations of the atlas catalog, run programmatically by `atlas.store.migrate` (no alembic.ini).

Add a revision by copying the newest file in versions/, giving it the next number as `revision`
and the previous one as `down_revision`, and updating the ORM models in atlas/store/schema.py to
match (tests/test_migrations.py checks that head and the models agree).
"""
