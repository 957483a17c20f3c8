"""`atlas sql`, `atlas search`, `atlas upgrade` through Click: output formats, exit codes, one-line errors."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from atlas.cli.store import search, sql, upgrade
from atlas.store import revisions, synthetic


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "atlas"
    atlas, _ = synthetic.build(path, n_images=12, blocks=("mid",), times=(1.0, 0.0), threads=1)
    with atlas, atlas.writer() as writer:
        writer.catalog.set_concept_labels([
            dict(concept="mid/1.0/3", label="red circle", mean_iou=0.8, hit_rate=0.9, precision=0.7, recall=0.6,
                 support=5),
            dict(concept="mid/1.0/4", label="red circle", mean_iou=0.3, hit_rate=0.2, precision=0.7, recall=0.6,
                 support=5)])
    return path


@pytest.fixture
def run(root, monkeypatch):
    monkeypatch.setenv("ATLAS_THREADS", "1")

    def invoke(command, *args, env_dir=True):
        return CliRunner().invoke(command, list(args) + (["--atlas", str(root)] if env_dir else []))

    return invoke


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_sql_formats(run, tmp_path):
    query = "SELECT block, t, count(*) AS n FROM codes GROUP BY ALL ORDER BY t DESC"
    table = run(sql, query)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["block", "t", "n"] and lines[2].split() == ["mid", "1.0", "768"]
    as_csv = run(sql, query, "--format", "csv")
    assert as_csv.stdout.splitlines() == ["block,t,n", "mid,1.0,768", "mid,0.0,768"]
    as_json = json.loads(run(sql, query, "--format", "json").stdout)
    assert as_json == [{"block": "mid", "t": 1.0, "n": 768}, {"block": "mid", "t": 0.0, "n": 768}]
    out = tmp_path / "r.parquet"
    assert run(sql, query, "--format", "parquet", "--output", str(out)).exit_code == 0
    assert pq.read_table(out).to_pylist() == as_json
    capped = run(sql, "SELECT * FROM codes", "--max-rows", "5")
    assert len(capped.stdout.splitlines()) == 7 and "showing the first 5 rows" in capped.stderr


def test_sql_errors_are_one_line(run, root, tmp_path):
    assert "atlas sql is read-only: DELETE statements" in one_error_line(run(sql, "DELETE FROM images"))
    assert "Parser Error" in one_error_line(run(sql, "SELEC 1"))
    assert "time limit" in one_error_line(run(sql, "SELECT sum(hash(i)) FROM range(100000000000) t(i)",
                                              "--timeout", "0.5"))  # slow but small: the memory limit stays away
    missing = CliRunner().invoke(sql, ["SELECT 1", "--atlas", str(tmp_path / "none")])
    assert "no atlas at" in one_error_line(missing) and "atlas build" in missing.output
    usage = run(sql, "SELECT 1", "--format", "parquet")
    assert usage.exit_code == 2 and "--output" in usage.output


def test_atlas_dir_comes_from_the_environment(run, root, monkeypatch):
    monkeypatch.setenv("ATLAS_DIR", str(root))
    result = run(sql, "SELECT count(*) AS n FROM images", "--format", "json", env_dir=False)
    assert json.loads(result.stdout) == [{"n": 12}]


def test_search_by_label_and_by_example(run):
    found = run(search, "red circle", "--t", "1.0", "--block", "mid", "--format", "json")
    assert found.exit_code == 0, found.output
    assert [r["concept_id"] for r in json.loads(found.stdout)] == ["mid/1.0/3", "mid/1.0/4"]
    assert "mid/1.0/3" in run(search, "red circle").stdout.splitlines()[2]
    assert "did you mean 'red circle'" in one_error_line(run(search, "red circel"))
    assert "this atlas has t 1.0, 0.0" in one_error_line(run(search, "red circle", "--t", "0.5"))
    like = json.loads(run(search, "--like", "mid/1.0/3", "--k", "4", "--format", "json").stdout)
    assert len(like) == 4 and all(r["concept_id"] != "mid/1.0/3" for r in like)
    assert like == sorted(like, key=lambda r: -r["score"])
    only_zero = json.loads(run(search, "--like", "mid/1.0/3", "--t", "0.0", "--format", "json").stdout)
    assert {r["t"] for r in only_zero} == {0.0}
    assert run(search).exit_code == 2
    assert "bad concept id" in one_error_line(run(search, "--like", "mid/1.0"))


def test_search_without_labels_says_where_they_come_from(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_THREADS", "1")
    synthetic.build(tmp_path / "bare", n_images=2, blocks=("mid",), times=(1.0,), threads=1)[0].close()
    result = CliRunner().invoke(search, ["dog", "--atlas", str(tmp_path / "bare")])
    assert "atlas link" in one_error_line(result)


def test_upgrade_and_help(run, root):
    result = run(upgrade)
    assert result.exit_code == 0 and f"schema {revisions.head()}" in result.stdout
    for command in (sql, search, upgrade):
        help_text = CliRunner().invoke(command, ["--help"]).output
        assert "Example" in help_text and "--atlas" in help_text


def test_search_finds_a_named_concept_by_its_name_and_an_id_goes_to_its_concept(tmp_path, monkeypatch):
    """A name given on the web (rename_concept) is found by `atlas search NAME` in any case; an id shows the
    concept with its dictionary name."""
    monkeypatch.setenv("ATLAS_THREADS", "1")
    path = tmp_path / "atlas"
    atlas, _ = synthetic.build(path, n_images=6, blocks=("mid",), times=(1.0,), threads=1)
    with atlas, atlas.writer() as writer:
        writer.catalog.set_concept_labels([dict(concept="mid/1.0/2", label="red circle", mean_iou=0.8, hit_rate=0.9,
                                                precision=0.7, recall=0.6, support=5)])
        writer.catalog.rename_concept("mid/1.0/5", "Round Red Thing")
    found = CliRunner().invoke(search, ["round red thing", "--atlas", str(path), "--format", "json"])
    assert found.exit_code == 0, found.output
    assert [r["concept_id"] for r in json.loads(found.stdout)] == ["mid/1.0/5"]
    shown = CliRunner().invoke(search, ["mid/1.0/2", "--atlas", str(path), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == [{**json.loads(shown.stdout)[0], "concept_id": "mid/1.0/2",
                                         "dictionary_name": "red circle", "best_label": "red circle"}]
