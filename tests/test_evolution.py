"""Concept evolution: trajectories over t and lineage across t, from hand-made codes to a built atlas, its SQL views,
`atlas evolve`, `atlas search --follow lineage`, `atlas check` and the web concept page."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pytest
import requests
from click.testing import CliRunner
from test_server import assert_clean_log, serve_atlas

from atlas.cli.main import main
from atlas.evolution.measure import Coactivation, Trajectories, decoder_cosine, life, lineage_links
from atlas.store import InvalidInputError, open_atlas, open_writer

NAN = math.nan


# -- the arithmetic, on hand-made codes ------------------------------------------------------------------------

def two_steps() -> Trajectories:
    """Two images of two positions each, k = 2, four latents, at t = 1.0 then 0.0 (a zero value does not fire)."""
    found = Trajectories(4, [1.0, 0.0])
    images = np.array([0, 0, 1, 1])
    found.add(0, images, np.array([[0, 1], [0, 2], [1, 3], [0, 1]]), np.array([[2., 1.], [4., 0.], [3., 1.], [2., 2.]]))
    found.add(1, images, np.array([[2, 3], [2, 0], [2, 1], [2, 3]]), np.array([[5., 1.], [1., 1.], [3., 1.], [1., 0.]]))
    return found


def test_trajectory_stats_of_hand_made_codes():
    stats = two_steps().stats()
    np.testing.assert_allclose(stats["mass"], [[4, 3, 0, 0.5], [0.5, 0.5, 5, 0.5]])
    np.testing.assert_allclose(stats["active_fraction"], [[1, 1, 0, 0.5], [0.5, 0.5, 1, 0.5]])
    np.testing.assert_allclose(stats["mean_activation"], [[8 / 3, 2, 0, 1], [1, 1, 2.5, 1]])


@pytest.mark.parametrize("reverse", [False, True])
def test_life_first_peak_fade_in_denoising_order(reverse):
    """Latents 0 and 1 start active and fade; 2 appears at t = 0.0 and stays; 3 never reaches the threshold (its
    tied mass peaks at the earlier step). The steps may come in any order."""
    stats = two_steps().stats()
    steps, mass, share = [1.0, 0.0], stats["mass"], stats["active_fraction"]
    if reverse:
        steps, mass, share = steps[::-1], mass[::-1], share[::-1]
    first, peak, fade = life(steps, mass, share, threshold=0.6)
    np.testing.assert_array_equal(first, [1.0, 1.0, 0.0, NAN])
    np.testing.assert_array_equal(peak, [1.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(fade, [0.0, 0.0, NAN, NAN])


def test_coactivation_is_the_cosine_of_activation_maps_summed_over_calls():
    together = Coactivation(2, 2)
    together.add((np.array([[0], [0]]), np.array([[1.], [2.]])), (np.array([[1], [1]]), np.array([[2.], [1.]])))
    together.add((np.array([[1]]), np.array([[3.]])), (np.array([[0]]), np.array([[4.]])))
    np.testing.assert_allclose(together.cosine(), [[0, 0.8], [1, 0]])
    assert Coactivation(3, 1).cosine().tolist() == [[0], [0], [0]]  # never fired: 0, not NaN


def test_decoder_cosine_normalises_rows():
    np.testing.assert_allclose(decoder_cosine(np.array([[1, 0], [0, 2]]), np.array([[3, 4], [0, -1]])),
                               [[0.6, 0], [0.8, -1]])


COS = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, -0.3], [0.7, 0.1, 0.6]])
COACT = np.array([[0.9, 0.2, 0.0], [0.1, 0.5, 0.9], [0.4, 0.05, 0.6]])


@pytest.mark.parametrize("links, expected", [
    (1, [(0, 0, 0.9), (1, 1, math.sqrt(0.4)), (2, 2, 0.6)]),
    (2, [(0, 0, 0.9), (0, 1, math.sqrt(0.1)), (1, 1, math.sqrt(0.4)), (1, 0, math.sqrt(0.02)), (2, 2, 0.6),
         (2, 0, math.sqrt(0.28))]),
])
def test_lineage_links_keep_the_best_each_way_above_both_minimums(links, expected):
    """A negative cosine (1 -> 2) or a coactivation under the minimum (0 -> 2, 2 -> 1) is never linked."""
    found = lineage_links(COS, COACT, links, min_cosine=0.0, min_coactivation=0.1)
    got = list(zip(found["parent"].tolist(), found["child"].tolist(), found["score"].tolist()))
    assert [(p, c) for p, c, _ in got] == [(p, c) for p, c, _ in expected]
    np.testing.assert_allclose([s for _, _, s in got], [s for _, _, s in expected])
    np.testing.assert_allclose(found["cosine"], [COS[p, c] for p, c, _ in expected])
    np.testing.assert_allclose(found["coactivation"], [COACT[p, c] for p, c, _ in expected])


# -- a built atlas ----------------------------------------------------------------------------------------------

def test_own_step_trajectory_agrees_with_the_stored_codes(evolution_atlas):
    """At its own t, an SAE's trajectory is what its codes say: mass per image and share of images."""
    with open_atlas(evolution_atlas) as atlas:
        images = atlas.query("SELECT count(*) AS n FROM images")["n"][0].as_py()
        rows = atlas.query(
            "SELECT t.concept_id, t.mass, t.active_fraction, c.mass AS codes_mass, c.images FROM trajectories t JOIN "
            "(SELECT sae_id, latent, sum(value) / $n AS mass, count(DISTINCT image_id) / $n AS images FROM codes "
            "WHERE value > 0 GROUP BY ALL) c USING (sae_id, latent) WHERE t.at_t = t.t", {"n": images}).to_pylist()
        n_rows = atlas.query("SELECT count(*) AS n FROM trajectories WHERE at_t = t AND mass > 0")["n"][0].as_py()
    assert len(rows) == n_rows > 100
    np.testing.assert_allclose([r["mass"] for r in rows], [r["codes_mass"] for r in rows], rtol=0.02, atol=0.01)
    np.testing.assert_allclose([r["active_fraction"] for r in rows], [r["images"] for r in rows])


def test_life_columns_follow_the_rows(evolution_atlas):
    """peak_t is the step of the largest mass; first_t is active, fade_t is not (default threshold 0.05)."""
    with open_atlas(evolution_atlas) as atlas:
        assert atlas.sql("SELECT count(DISTINCT at_t), count(DISTINCT t) FROM trajectories").rows == [(3, 3)]
        rows = atlas.query("SELECT concept_id, at_t, mass, active_fraction, first_t, peak_t, fade_t "
                           "FROM trajectories ORDER BY concept_id, at_t DESC").to_pylist()
    by_concept: dict[str, list[dict]] = {}
    for row in rows:
        by_concept.setdefault(row["concept_id"], []).append(row)
    faded = 0
    for steps in by_concept.values():
        assert len(steps) == 3
        top = max(s["mass"] for s in steps)
        assert steps[0]["peak_t"] == next(s["at_t"] for s in steps if s["mass"] == top)
        by_t = {s["at_t"]: s for s in steps}
        if steps[0]["first_t"] is not None:
            assert by_t[steps[0]["first_t"]]["active_fraction"] >= 0.05
            assert all(s["active_fraction"] < 0.05 for s in steps if s["at_t"] > steps[0]["first_t"])
        if steps[0]["fade_t"] is not None:
            faded += 1
            assert by_t[steps[0]["fade_t"]]["active_fraction"] < 0.05 and steps[0]["fade_t"] < steps[0]["peak_t"]
    assert faded > 0


def test_lineage_scores_agree_with_codes_and_checkpoints(evolution_atlas):
    """A link's coactivation is the cosine of the two concepts' maps in the codes (same images and positions), its
    cosine that of their decoder rows; links run from each t to the next only."""
    from atlas.sae import Sae

    with open_atlas(evolution_atlas) as atlas:
        assert atlas.sql("SELECT DISTINCT parent_t, child_t FROM lineage ORDER BY 1 DESC").rows == [(1.0, 0.5),
                                                                                                    (0.5, 0.0)]
        links = atlas.query("SELECT * FROM lineage ORDER BY score DESC LIMIT 3").to_pylist()
        saes = {s.id: s for s in atlas.saes()}
        for link in links:
            maps = atlas.query(
                "SELECT sum(p.value * c.value) / sqrt((SELECT sum(value * value) FROM codes WHERE sae_id = $ps AND "
                "latent = $pl) * (SELECT sum(value * value) FROM codes WHERE sae_id = $cs AND latent = $cl)) AS cos "
                "FROM codes p JOIN codes c USING (image_id, row, col) WHERE p.sae_id = $ps AND p.latent = $pl AND "
                "c.sae_id = $cs AND c.latent = $cl",
                {"ps": link["parent_sae_id"], "pl": link["parent_latent"], "cs": link["child_sae_id"],
                 "cl": link["child_latent"]})["cos"][0].as_py()
            assert maps == pytest.approx(link["coactivation"], rel=0.02)
            rows = [Sae.from_pretrained(atlas.file_path(saes[link[f"{end}_sae_id"]].path)).W_dec[
                link[f"{end}_latent"]].detach().double().numpy() for end in ("parent", "child")]
            assert float(decoder_cosine(rows[0][None], rows[1][None])[0, 0]) == pytest.approx(link["cosine"])
            assert link["score"] == pytest.approx(math.sqrt(max(link["cosine"], 0) * link["coactivation"]))


def test_follow_lineage_from_the_cli(evolution_atlas):
    with open_atlas(evolution_atlas) as atlas:
        best = atlas.query("SELECT parent_concept_id, child_concept_id FROM lineage WHERE parent_t = 1.0 "
                           "ORDER BY score DESC LIMIT 1").to_pylist()[0]
    result = CliRunner().invoke(main, ["search", "--atlas", str(evolution_atlas), "--like",
                                       best["parent_concept_id"], "--follow", "lineage", "--t", "0.5",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    assert result.output.count('"concept_id"') >= 1 and best["child_concept_id"] in result.output
    assert '"t": 0.5' in result.output and '"t": 0.0' not in result.output
    refused = CliRunner().invoke(main, ["search", "--atlas", str(evolution_atlas), "red circle", "--follow",
                                        "lineage"])
    assert refused.exit_code == 2 and "--follow applies to --like" in refused.output


def test_evolve_again_replaces_the_tables_and_check_covers_them(evolution_atlas, tmp_path):
    root = tmp_path / "atlas"
    shutil.copytree(evolution_atlas, root)
    with open_atlas(root) as atlas:
        before = atlas.sql("SELECT count(*) FROM lineage").rows
    result = CliRunner().invoke(main, ["evolve", "--atlas", str(root), "--links", "1", "--max-images", "1"])
    assert result.exit_code == 0, result.output
    with open_atlas(root) as atlas:
        after = atlas.sql("SELECT count(*) FROM lineage").rows[0][0]
        unranked = atlas.sql(  # with --links 1 every link is its parent's best or its child's best
            "SELECT count(*) FROM (SELECT rank() OVER (PARTITION BY parent_concept_id ORDER BY score DESC) AS p, "
            "rank() OVER (PARTITION BY child_concept_id ORDER BY score DESC) AS c FROM lineage) WHERE p > 1 AND c > 1"
        ).rows
        info = atlas.sql("SELECT info FROM stages WHERE name = 'evolve'").rows[0][0]
    assert 0 < after < before[0][0] and f"{after:,} lineage links" in result.output
    assert json.loads(info)["links"] == 1
    checked = CliRunner().invoke(main, ["check", "--atlas", str(root), "--quick"])
    assert checked.exit_code == 0 and "trajectory rows" in checked.output and "lineage links" in checked.output
    assert unranked == [(0,)]


def test_bad_evolution_rows_are_refused_and_nothing_changes(evolution_atlas, tmp_path):
    root = tmp_path / "atlas"
    shutil.copytree(evolution_atlas, root)
    with open_writer(root) as writer:
        sae = writer.atlas.saes()[0]
        before = writer.atlas.sql("SELECT count(*) FROM trajectories").rows
        row = {"sae_id": [sae.id], "latent": [sae.n_latents], "at_t": [1.0], "mass": [1.0],
               "active_fraction": [0.5], "mean_activation": [2.0], "first_t": [1.0], "peak_t": [1.0],
               "fade_t": [None]}
        with pytest.raises(InvalidInputError, match="latent .* outside SAE"):
            writer.catalog.set_evolution(pa.table(row), None)
        with pytest.raises(InvalidInputError, match="unknown SAE ids \\[99\\]"):
            writer.catalog.set_evolution(pa.table({**row, "sae_id": [99], "latent": [0]}), None)
        with pytest.raises(InvalidInputError, match="mass holds a missing or non-finite"):
            writer.catalog.set_evolution(pa.table({**row, "latent": [0], "mass": [math.inf]}), None)
        assert writer.atlas.sql("SELECT count(*) FROM trajectories").rows == before
    result = CliRunner().invoke(main, ["search", "--atlas", str(root), "--like", f"{sae.prefix}/0", "--follow",
                                       "lineage"])
    assert result.exit_code == 0


def test_search_follow_lineage_says_when_evolve_never_ran(two_k_atlas, tmp_path):
    result = CliRunner().invoke(main, ["search", "--atlas", str(two_k_atlas), "--like", "mid/1.0/0", "--follow",
                                       "lineage"])
    assert result.exit_code == 1 and "atlas evolve" in result.output and "Traceback" not in result.output


def test_the_concept_page_draws_the_curve_and_links_the_lineage(evolution_atlas, tmp_path):
    root = tmp_path / "atlas"
    shutil.copytree(evolution_atlas, root)
    with open_atlas(root) as atlas:
        link = atlas.query("SELECT parent_concept_id, child_concept_id FROM lineage ORDER BY score DESC "
                           "LIMIT 1").to_pylist()[0]
        middle = atlas.query("SELECT parent_concept_id AS c FROM lineage WHERE parent_t = 0.5 ORDER BY score DESC "
                             "LIMIT 1")["c"][0].as_py()
        stored = atlas.query("SELECT at_t, mass, active_fraction FROM trajectories WHERE concept_id = ? "
                             "ORDER BY at_t DESC", [middle]).to_pylist()
    with serve_atlas(root, log=tmp_path / "server.log") as url:
        data = requests.get(f"{url}/concept/{middle}.json", timeout=60).json()
        page = requests.get(f"{url}/concept/{middle}", timeout=60).text
        parent_page = requests.get(f"{url}/concept/{link['parent_concept_id']}", timeout=60).text
    assert_clean_log(root)
    assert [(p["t"], p["mass"], p["active_fraction"]) for p in data["trajectory"]] == [
        (r["at_t"], r["mass"], r["active_fraction"]) for r in stored]
    assert data["evolved"] and data["ancestors"] and data["descendants"]
    assert all(r["t"] == 1.0 for r in data["ancestors"]) and all(r["t"] == 0.0 for r in data["descendants"])
    assert '<svg id="trajectory"' in page and page.count("<circle") == 3 and 'class="share" points="' in page
    for relative in data["ancestors"] + data["descendants"]:
        assert f'href="/concept/{relative["concept_id"]}"' in page
    assert f'href="/concept/{link["child_concept_id"]}"' in parent_page


def test_evolve_without_the_capture_is_a_one_line_error(evolution_atlas, tmp_path):
    root = tmp_path / "atlas"
    shutil.copytree(evolution_atlas, root, ignore=shutil.ignore_patterns("activations"))
    with open_atlas(root) as atlas:
        before = atlas.sql("SELECT count(*) FROM trajectories").rows
    result = CliRunner().invoke(main, ["evolve", "--atlas", str(root)])
    assert result.exit_code == 1 and "is not an activation directory" in result.output
    assert len(result.output.strip().splitlines()) == 1
    with open_atlas(root) as atlas:
        assert atlas.sql("SELECT count(*) FROM trajectories").rows == before
