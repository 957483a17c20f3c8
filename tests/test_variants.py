"""SAE variants end to end: `atlas build --k 2,4` gives each (block, t, branch) a primary SAE (k = 2) and the variant
k4 (k = 4), and every surface -- catalog, concept ids, SQL, report, search, web pages -- keeps the two apart."""

from __future__ import annotations

import json
import shutil
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from atlas.cli.main import main
from atlas.layout.config import METHODS
from atlas.store import open_atlas, open_writer, parse_concept_id


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_both_saes_are_catalogued_with_their_codes_and_ids(two_k_atlas):
    with open_atlas(two_k_atlas) as atlas:
        primary, k4 = atlas.saes()
        assert [(s.name, s.variant, s.k, s.path) for s in (primary, k4)] == [
            ("mid/1.0/cond", "", 2, "saes/mid/t1.0/cond"), ("mid/1.0/cond@k4", "k4", 4, "saes/mid/t1.0/cond@k4")]
        assert k4.n_codes == 2 * primary.n_codes > 0  # k codes per position, the same positions
        ids = atlas.sql("SELECT concept_id, sae_id, latent FROM concepts", max_rows=5000).rows
        assert len(ids) == primary.n_latents + k4.n_latents
        for cid, sae_id, latent in ids:
            assert str(parse_concept_id(cid)) == cid and atlas.resolve(cid) == (
                primary if sae_id == primary.id else k4, latent)
        assert {cid.rsplit("/", 1)[0] for cid, _, _ in ids} == {"mid/1.0", "mid/1.0/cond@k4"}
    result = cli("sql", "--atlas", str(two_k_atlas), "--format", "json",
                 "SELECT k, variant, count(*) AS n, min(concept_id) AS first FROM concepts GROUP BY ALL ORDER BY k")
    assert json.loads(result.output) == [{"k": 2, "variant": "", "n": primary.n_latents, "first": "mid/1.0/0"},
                                         {"k": 4, "variant": "k4", "n": k4.n_latents, "first": "mid/1.0/cond@k4/0"}]
    result = cli("sql", "--atlas", str(two_k_atlas), "--format", "csv",
                 "SELECT DISTINCT variant, concept_id LIKE '%@k4/%' AS marked FROM codes ORDER BY variant")
    assert result.output.splitlines() == ["variant,marked", ",False", "k4,True"]
    result = cli("check", "--atlas", str(two_k_atlas))
    assert result.exit_code == 0 and "checked" in result.output and "2 SAEs" in result.output, result.output


def test_the_report_shows_each_k_like_the_papers_table_1(two_k_atlas, tmp_path):
    figures = json.loads((two_k_atlas / "report" / "figures.json").read_text())
    ev = {(f["variant"], f["k"]): f["explained_variance"] for f in figures["explained_variance"]}
    assert sorted(ev) == [("", 2), ("k4", 4)]
    markdown = (two_k_atlas / "report" / "report.md").read_text()
    table = markdown.split("(paper Table 1)")[1].split("\n\n")[2].splitlines()
    assert table[0] == "| block | k | t=1.0 |"
    assert table[2:] == [f"| mid | 2 | {ev['', 2]:.3f} |", f"| mid | 4 | {ev['k4', 4]:.3f} |"]
    assert {(f["method"], f["variant"]) for f in figures["layout"]} == {(m, v) for m in METHODS for v in ("", "k4")}
    assert sorted(figures["context_free"]) == ["mid/1.0/cond", "mid/1.0/cond@k4"]
    result = cli("report", "--atlas", str(two_k_atlas), "--out", str(tmp_path / "r"))
    header, _, *rows = result.output.split("\n\n")[0].splitlines()
    assert header.split()[:5] == ["method", "block", "t", "branch", "variant"]
    assert [row.split()[4] for row in rows if len(row.split()) == 10] == ["k4"] * len(METHODS)  # the primary's: empty


@pytest.fixture(scope="module")
def linked(two_k_atlas, tmp_path_factory):
    """A copy of the atlas where the label "probe" is linked to one concept of each SAE."""
    root = tmp_path_factory.mktemp("linked") / "atlas"
    shutil.copytree(two_k_atlas, root)
    with open_writer(root) as writer:
        writer.catalog.set_concept_labels([
            dict(concept="mid/1.0/5", label="probe", mean_iou=0.3, hit_rate=0.3, precision=0.5, recall=0.5, support=3),
            dict(concept="mid/1.0/cond@k4/7", label="probe", mean_iou=0.6, hit_rate=0.6, precision=0.5, recall=0.5,
                 support=3)])
    return root


def test_search_and_sql_filter_by_variant_and_k(linked):
    def found(*options: str) -> list[str]:
        result = cli("search", "probe", "--atlas", str(linked), "--format", "json", *options)
        assert result.exit_code == 0, result.output
        return [row["concept_id"] for row in json.loads(result.output)]

    assert found() == found("--variant", "") == found("--sae-k", "2") == ["mid/1.0/5"]
    assert found("--variant", "k4") == found("--sae-k", "4") == ["mid/1.0/cond@k4/7"]
    result = cli("search", "probe", "--atlas", str(linked), "--variant", "k9")
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: unknown variant 'k9': this atlas has variant '' (the primary SAE), "
                                     "'k4'")
    result = cli("search", "--like", "mid/1.0/cond@k4/7", "--atlas", str(linked), "--format", "json")
    assert result.exit_code == 0 and all("@k4/" in row["concept_id"] for row in json.loads(result.output))
    result = cli("sql", "--atlas", str(linked), "--format", "csv",
                 "SELECT concept_id, variant, k FROM concept_labels WHERE label = 'probe' AND k = 4")
    assert result.output.splitlines() == ["concept_id,variant,k", "mid/1.0/cond@k4/7,k4,4"]


def test_web_pages_show_and_link_variant_concepts(linked, tmp_path):
    import requests
    from test_server import serve_atlas

    def get(path: str, status: int = 200, **params) -> requests.Response:
        response = requests.get(url + path, params=params or None, timeout=60)
        assert response.status_code == status, (path, response.text[:300])
        return response

    with serve_atlas(linked, log=tmp_path / "server.log") as url:
        home = get("/.json").json()
        assert [(s["name"], s["variant"], s["k"]) for s in home["saes"]] == [("mid/1.0", "", 2),
                                                                          ("mid/1.0/cond@k4", "k4", 4)]
        assert 'href="/concepts?block=mid&amp;t=1.0&amp;branch=cond&amp;variant=k4"' in get("/").text
        concept = get("/concept/mid/1.0/cond@k4/7.json").json()
        assert concept["concept"]["concept_id"] == "mid/1.0/cond@k4/7" and concept["concept"]["variant"] == "k4"
        assert [ts["concept_id"] for ts in concept["timesteps"]] == ["mid/1.0/cond@k4/7"]
        assert get(f"/concept/{quote('mid/1.0/cond@k4/7', safe='')}.json").json()["concept"] == concept["concept"]
        html = get("/concept/mid/1.0/cond@k4/7").text
        assert "SAE variant <b>k4</b>" in html and "concept=mid%2F1.0%2Fcond%40k4%2F7" in html
        assert 'href="/concept/mid/1.0/cond@k4/7"' in get("/label/probe").text
        missing = get("/concept/mid/1.0/cond@k9/7.json", 404).json()
        assert missing["error"] == "unknown variant 'k9': this atlas has variant '' (the primary SAE), 'k4'"
        assert "unknown variant" in get("/concept/mid/1.0/cond@k9/7", 404).text
        listed = get("/concepts.json", variant="k4", limit=3).json()["concepts"]
        assert len(listed) == 3 and all(c["concept_id"].startswith("mid/1.0/cond@k4/") for c in listed)
        assert all("@" not in c["concept_id"] for c in get("/concepts.json", limit=3).json()["concepts"])
        image = get("/image/0.json", block="mid", t=1.0, variant="k4").json()
        assert image["variant"] == "k4" and [s["chosen"] for s in image["saes"]] == [False, True]
        assert all(row[0].startswith("mid/1.0/cond@k4/") for row in image["table"]["rows"])
        assert get("/image/0/heatmap.png", concept="mid/1.0/cond@k4/7").headers["content-type"] == "image/png"
    assert "Traceback" not in (tmp_path / "server.log").read_text()
