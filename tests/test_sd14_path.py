"""The paper's path through the CLI, as bench/sd14_random_e2e.py runs it at SD v1.4's real sizes, on the tiny
random SD v1.4 architecture: `atlas build --preset sd14` with both CFG branches and a random Grounding DINO + SAM,
then `atlas report` (cond and uncond apart) and `atlas eval-edits` (the atlas's own annotator judges). Random
weights make every number meaningless: the test checks that each stage ran and what it wrote."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from atlas.annotate.random import write_random_grounding_dino, write_random_sam
from atlas.cli.main import main
from atlas.models.random import write_random_sd
from atlas.store import open_atlas

pytestmark = pytest.mark.slow
PROMPTS = ["a dog on a red car", "a cat and a car", "a red dog", "the car on the cat", "a dog and a cat",
           "a red cat"]


def atlas_cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def sd14_atlas(tmp_path_factory):
    work = tmp_path_factory.mktemp("sd14-path")
    model = write_random_sd(work / "model", "tiny")
    words = sorted({w for p in PROMPTS for w in p.split()})
    gdino, sam = write_random_grounding_dino(work / "gdino", words), write_random_sam(work / "sam")
    (work / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    atlas = work / "atlas"
    out = atlas_cli("build", "--preset", "sd14", "--model", str(model), "--prompts", str(work / "prompts.txt"),
                    "--n-images", str(len(PROMPTS)), "--steps", "3", "--atlas", str(atlas), "--grounding-dino",
                    str(gdino), "--sam", str(sam), "--box-threshold", "0", "--text-threshold", "0", "--device",
                    "cpu", "--sae-tokens", "256", "--threads", "1")
    # random maps overlap random masks only by chance: link with the loosest rule so edits have concepts to use
    atlas_cli("link", "--atlas", str(atlas), "--iou", "0", "--min-hits", "1")
    return atlas, out


def test_build_captures_and_trains_every_key_of_the_recipe(sd14_atlas):
    atlas, out = sd14_atlas
    with open_atlas(atlas) as a:
        saes = {(s.block, s.t, s.branch) for s in a.saes()}
        objects = a.sql("SELECT count(*) AS n, count(DISTINCT label) AS labels FROM objects").to_dicts()[0]
        linked = a.sql("SELECT count(*) AS n FROM concept_labels").to_dicts()[0]["n"]
    assert saes == {(b, t, br) for b in ("down", "mid", "up") for t in (1.0, 0.5, 0.0) for br in ("cond", "uncond")}
    assert objects["n"] > 0 and objects["labels"] > 0, out
    assert linked > 0
    recorded = json.loads((atlas / "annotations" / "grounded-sam" / "annotator.json").read_text())
    assert recorded["grounding_dino"].endswith("gdino") and recorded["box_threshold"] == 0
    manifest = json.loads((atlas / "activations" / "manifest.json").read_text())
    assert manifest["guidance"] == 7.5 and manifest["source"].endswith("model")


def test_report_shows_cond_and_uncond_apart(sd14_atlas):
    """Table 1 of each branch, with a row per block and k (the recipe's k = 10 and 20) like the paper's."""
    atlas, _ = sd14_atlas
    atlas_cli("report", "--atlas", str(atlas))
    figures = json.loads((atlas / "report" / "figures.json").read_text())
    rows = {(r["block"], r["t"], r["branch"], r["k"]) for r in figures["explained_variance"]}
    assert rows == {(b, t, br, k) for b in ("down", "mid", "up") for t in (1.0, 0.5, 0.0) for br in ("cond", "uncond")
                    for k in (10, 20)}
    markdown = (atlas / "report" / "report.md").read_text()
    for branch in ("cond", "uncond"):
        table = markdown.split(f"\n{branch} branch (rows: block and k")[1].split("\n\n")[1].splitlines()
        assert table[0] == "| block | k | t=1.0 | t=0.5 | t=0.0 |" and len(table) == 2 + 3 * 2, table


def test_eval_edits_runs_and_judges_with_the_atlas_annotator(sd14_atlas, tmp_path):
    """The judge is the annotator that built the atlas, with the checkpoints and thresholds it was built with
    (the default Grounding DINO is not on this machine: a judge built from defaults would refuse)."""
    atlas, _ = sd14_atlas
    out = atlas_cli("eval-edits", "--atlas", str(atlas), "--kind", "spatial", "--n", "1", "--windows", "early",
                    "--strengths", "1", "--max-concepts", "1", "--out", str(tmp_path))
    table = (tmp_path / "eval-spatial.md").read_text()
    verdicts = json.loads((tmp_path / "eval-spatial.json").read_text())
    assert "early" in table and "grounded-sam" in out + table, out
    assert verdicts
