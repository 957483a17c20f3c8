"""`Atlas.sql` is read-only, time-limited and row-capped; broken files are named; errors change nothing."""

from __future__ import annotations

import hashlib
import shutil
import time

import pytest

from atlas.store import (
    CorruptFileError,
    QueryTimeoutError,
    ReadOnlySqlError,
    SqlError,
    open_atlas,
    open_writer,
    synthetic,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("sql") / "atlas"
    synthetic.build(path, n_images=20, blocks=("mid",), times=(1.0,), threads=1)[0].close()
    return path


@pytest.fixture
def atlas(root):
    with open_atlas(root, threads=1) as opened:
        yield opened


def checksum(path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("query, why", [
    ("INSERT INTO images VALUES (1)", "INSERT statements are refused"),
    ("CREATE TABLE x AS SELECT 1", "CREATE statements are refused"),
    ("COPY (SELECT 1) TO 'out.csv'", "COPY statements are refused"),
    ("COPY images TO '{root}/stolen.csv'", "COPY statements are refused"),
    ("ATTACH '{root}/other.duckdb'", "ATTACH statements are refused"),
    ("SELECT 1; DROP VIEW codes", "one statement at a time, got 2"),
    ("SELECT * FROM read_csv('/etc/passwd')", "may only read the atlas' own views and files"),
    ("SELECT * FROM read_text('{root}/../../../../etc/hostname')", "may only read the atlas' own views"),
    ("SELECT * FROM query('COPY images TO ''{root}/x.csv''')", "Expected a single SELECT"),
    ("SET enable_external_access = true", "SET statements are refused"),
    ("INSTALL sqlite", "INSTALL statements are refused"),
])
def test_writes_and_foreign_files_are_refused(atlas, root, query, why):
    before = checksum(root)
    with pytest.raises((ReadOnlySqlError, SqlError)) as info:
        atlas.sql(query.format(root=root))
    message = str(info.value)
    assert why in message and "\n" not in message
    assert checksum(root) == before


def test_select_forms_that_are_allowed(atlas):
    assert atlas.sql("FROM saes SELECT block, t").rows == [("mid", 1.0)]
    assert atlas.sql("WITH x AS (SELECT 41 AS a) SELECT a + 1 FROM x").rows == [(42,)]
    assert "codes" in [row[0] for row in atlas.sql("SHOW TABLES").rows]
    assert atlas.sql("EXPLAIN SELECT count(*) FROM codes").table.num_rows >= 1


def test_timeout_interrupts_a_slow_query(atlas):
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError, match="1 s time limit"):
        atlas.sql("SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = 3",
                  timeout=1.0)
    assert time.monotonic() - start < 2.5
    assert atlas.sql("SELECT 1").rows == [(1,)]


def test_row_cap_keeps_order_and_says_so(atlas):
    result = atlas.sql("SELECT range AS i FROM range(5000) ORDER BY i DESC", max_rows=1000)
    assert result.truncated and len(result.rows) == 1000
    assert result.rows[0] == (4999,) and result.rows[-1] == (4000,)
    small = atlas.sql("SELECT range FROM range(3)")
    assert not small.truncated and small.columns == ["range"]


def test_malformed_sql_gives_duckdbs_first_line(atlas):
    with pytest.raises(SqlError, match=r'^Parser Error: syntax error at or near "codes"$'):
        atlas.sql("SELECT * FORM codes")
    with pytest.raises(SqlError, match=r"Table with name nope does not exist") as info:
        atlas.sql("SELECT * FROM nope")
    assert "\n" not in str(info.value)
    with pytest.raises(SqlError, match="empty query"):
        atlas.sql("   ")


def test_corrupt_or_missing_parquet_is_named_and_nothing_changes(root, tmp_path):
    copy = tmp_path / "atlas"
    shutil.copytree(root, copy)
    with open_atlas(copy, threads=1) as atlas:
        files = atlas.sql("SELECT path FROM files WHERE kind = 'codes_by_latent'").rows
        victim = copy / files[0][0]
        victim.write_bytes(victim.read_bytes()[:100])
        before = checksum(copy)
        with pytest.raises(CorruptFileError, match=rf"atlas file {files[0][0]} is missing or corrupt"):
            atlas.sql("SELECT count(*) FROM codes")
        with pytest.raises(CorruptFileError, match=files[0][0]):
            atlas.top_images("mid/1.0/0")
        with open_atlas(copy, threads=1) as fresh:  # a bad codes file does not take the other views down
            assert fresh.sql("SELECT count(*) FROM images").rows == [(20,)]
            with pytest.raises(CorruptFileError, match=files[0][0]):
                fresh.sql("SELECT count(*) FROM codes")
            with pytest.raises(CorruptFileError, match=files[0][0]):  # the API's own SQL does not read it as empty
                fresh.query("SELECT count(*) FROM codes WHERE sae_id = ?", [0])
        victim.unlink()
        with pytest.raises(CorruptFileError, match=files[0][0]):
            atlas.sql("SELECT max(value) FROM codes")
        assert atlas.sql("SELECT count(*) FROM images").rows == [(20,)]
    current = (copy / "tables" / (copy / "tables" / "CURRENT").read_text()) / "saes.parquet"
    current.write_bytes(b"not parquet")
    before = checksum(copy)
    with pytest.raises(CorruptFileError, match=rf"{current.relative_to(copy)} is missing .* `atlas upgrade`"):
        open_atlas(copy)
    assert checksum(copy) == before
    open_writer(copy).close()  # opening a writer rewrites the snapshot from the catalog
    with open_atlas(copy) as repaired:
        assert repaired.sql("SELECT block FROM saes").rows == [("mid",)]
