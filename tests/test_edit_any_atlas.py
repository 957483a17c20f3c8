"""`atlas edit` and `atlas eval-edits` on an atlas that is not the shapes world's: a tiny random SD-v1.4-shaped
model, annotated by a tiny annotator registered for the test. The judge is AtlasJudge on that annotator (and a
tiny random CLIP for style edits); random weights make the numbers meaningless, so the tests check structure."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from atlas.annotate.base import ObjectAnnotation, box_of, check_batch
from atlas.cli.main import main
from atlas.edit import EditConfig
from atlas.edit.config import EvalEditsConfig
from atlas.edit.core import WINDOWS
from atlas.edit.judge import AtlasJudge
from atlas.models import load_model
from atlas.pipeline import presets
from atlas.pipeline.edits import edit, eval_edits
from atlas.pipeline.judges import atlas_annotator, judge_for
from atlas.store import open_atlas

pytestmark = pytest.mark.slow
PROMPTS = ["a dog", "a cat", "a car", "a tree", "the tree", "a red tree"]  # 'the tree', 'a red tree': test split


class BrightAnnotator:
    """The prompt's last word is the object; its mask, the brightest three quarters of the image."""

    name = "bright"

    def annotate(self, images, prompts):
        check_batch(images, prompts)
        found = []
        for image, prompt in zip(images, prompts):
            grey = image.astype(np.float32).mean(-1)
            mask = grey > np.percentile(grey, 25)
            found.append([ObjectAnnotation(prompt.split()[-1], 1.0, box_of(mask), mask)])
        return found


@pytest.fixture(scope="module")
def sd_atlas(tiny_sd_dir, tmp_path_factory):
    """An atlas of the tiny `sd14` (ATLAS_SD14_PATH points at it) annotated by `bright`, built by `atlas build`."""
    from atlas.pipeline.build import build_atlas
    from atlas.pipeline.config import BuildConfig

    root = tmp_path_factory.mktemp("sd-atlas")
    (root / "prompts.txt").write_text("\n".join(PROMPTS * 3))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATLAS_SD14_PATH", str(tiny_sd_dir))
        patch.setitem(presets._ANNOTATORS, "bright", lambda **options: BrightAnnotator())
        build_atlas(BuildConfig(atlas=str(root / "atlas"), preset="sd14", prompts=str(root / "prompts.txt"),
                                n_images=len(PROMPTS) * 3, steps=4, annotator="bright", latents="32", k=8,
                                sae_tokens=2000, device="cpu"), progress=False, say=lambda line: None)
        yield root / "atlas"


@pytest.fixture(scope="module")
def model(sd_atlas):
    return load_model("sd14", device="cpu")


@pytest.fixture
def atlas_copy(sd_atlas, tmp_path):
    path = tmp_path / "atlas"
    shutil.copytree(sd_atlas, path)
    return path


def linked(atlas_dir, spatial: bool) -> tuple[str, str, float]:
    """(label, block, t) with the most concepts; spatial edits need a grid of at least 2 x 2 (mid is 1 x 1 here)."""
    where = "AND s.grid_h >= 2" if spatial else ""
    with open_atlas(atlas_dir) as atlas:
        rows = atlas.query(f"SELECT c.label, c.block, c.t FROM concept_labels c JOIN saes s ON s.id = c.sae_id "
                           f"WHERE true {where} GROUP BY ALL ORDER BY count(*) DESC, c.block, c.t DESC, c.label "
                           "LIMIT 1").to_pylist()
    assert rows, "the tiny atlas links no concept on a grid fine enough for spatial edits"
    return rows[0]["label"], rows[0]["block"], rows[0]["t"]


def window_of(t: float) -> str:
    return next(name for name, w in WINDOWS.items() if w.lo <= t <= w.hi)


def test_the_atlas_judge_is_built_on_its_own_annotator(sd_atlas):
    with open_atlas(sd_atlas) as atlas:
        assert atlas_annotator(atlas) == "bright"
        judge = judge_for(atlas)
        assert judge_for(atlas) is judge  # kept, with its annotator, for the next edit
    assert isinstance(judge, AtlasJudge)
    assert "bright" in judge.name and "CLIP ViT-B-32" in judge.name


def test_eval_edits_spatial_runs_and_writes_its_table(atlas_copy, model, tmp_path):
    label, block, t = linked(atlas_copy, spatial=True)
    window = window_of(t)
    lines = []
    config = EvalEditsConfig(kind="spatial", n=2, windows=window, strengths="4", block=block, batch_size=8)
    with open_atlas(atlas_copy) as atlas:
        result = eval_edits(atlas, config, tmp_path / "eval", model=model, progress=False, say=lines.append)
    assert result.n_cases == 8 and [p.window for p in result.points] == [window]
    point = result.points[0]
    assert point.resolved >= 4  # the linked label's 4 quadrants at least
    assert 0.0 <= point.success <= point.target <= 1.0 and point.change_in is not None
    assert result.baseline is not None and "bright" in result.judge
    assert any(line.startswith("LPIPS not measured: ") for line in lines) or point.lpips is not None
    stem = "eval-spatial" + ("" if block == EvalEditsConfig.block else f"-{block}")  # a block's own tables
    assert result.stem == stem
    table = (tmp_path / "eval" / f"{stem}.md").read_text()
    assert f"| {window} | 4 |" in table and "change in / out of region" in table and "others stay" in table
    saved = json.loads((tmp_path / "eval" / f"{stem}.json").read_text())
    edited = [r for r in saved["edits"] if r["edited"]]
    assert len(saved["edits"]) == 8 and len(edited) == point.resolved
    assert all(set(r["verdict"]) >= {"success", "reached", "before", "change_in", "change_out", "others_stay"}
               for r in edited)
    assert any(r["label"] == label and r["verdict"]["values"].keys() <= {"centre_x", "centre_y"} for r in edited)
    assert (tmp_path / "eval" / f"{stem}-{window}.png").stat().st_size > 500
    curves = json.loads((atlas_copy / "edits" / "curves.json").read_text())
    assert curves["spatial"][block]["windows"][window]["strength"] == [4.0]


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")  # lpips builds AlexNet the old way
def test_eval_edits_style_with_a_tiny_clip_and_lpips(atlas_copy, model, tmp_path, tiny_clip):
    lpips = pytest.importorskip("lpips")
    from atlas.edit.scores import LpipsScorer

    bright = BrightAnnotator()
    judge = AtlasJudge(lambda image, prompt: [(o.label, o.mask) for o in bright.annotate([image], [prompt])[0]],
                       "bright and a tiny CLIP", clip=lambda: tiny_clip)
    label, block, t = linked(atlas_copy, spatial=False)
    config = EvalEditsConfig(kind="style", n=3, windows=window_of(t), strengths="4", block=block, style=label)
    with open_atlas(atlas_copy) as atlas:
        result = eval_edits(atlas, config, tmp_path / "eval", model=model, progress=False, say=lambda line: None,
                            judge=judge, lpips=lambda: LpipsScorer(lpips.LPIPS(pnet_rand=True, verbose=False)))
    point = result.points[0]
    assert result.baseline is None and result.style == label and point.resolved == 3
    assert point.lpips is not None and point.lpips >= 0
    table = result.table()
    assert f"style edits adding {label!r}" in table and "unedited baseline -" in table
    saved = json.loads((tmp_path / "eval" / f"{result.stem}.json").read_text())
    assert [r["prompt"] for r in saved["edits"]] == PROMPTS[:3]  # the atlas's own prompts
    assert all(set(r["verdict"]["values"]) == {"clip_before", "clip_after"} and r["lpips"] is not None
               for r in saved["edits"])


def test_cli_eval_edits_and_a_missing_clip_is_one_line(atlas_copy, tiny_sd_dir, monkeypatch):
    monkeypatch.setenv("ATLAS_SD14_PATH", str(tiny_sd_dir))
    monkeypatch.setitem(presets._ANNOTATORS, "bright", lambda **options: BrightAnnotator())
    _, block, t = linked(atlas_copy, spatial=True)
    runner = CliRunner()
    ok = runner.invoke(main, ["eval-edits", "--n", "1", "--windows", window_of(t), "--strengths", "4", "--block", block,
                              "--batch-size", "4", "--atlas", str(atlas_copy)])
    assert ok.exit_code == 0, ok.output
    stem = "eval-spatial" + ("" if block == EvalEditsConfig.block else f"-{block}")
    assert f"| {window_of(t)} | 4 |" in ok.output and (atlas_copy / "edits" / f"{stem}.md").exists()
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(atlas_copy / "no-hub-cache"))
    bad = runner.invoke(main, ["eval-edits", "--kind", "style", "--n", "1", "--windows", "middle", "--block", "mid",
                               "--atlas", str(atlas_copy)])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1, bad.output
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in bad.output
    assert not list((atlas_copy / "edits").glob("eval-style*"))


def test_edit_on_any_atlas_reports_its_verdict(atlas_copy, model):
    label, block, t = linked(atlas_copy, spatial=True)
    result = edit(atlas_copy, f"a {label}", label, "top-left",
                  EditConfig(when=window_of(t), strength=4.0, block=block, log=False), model=model)
    assert isinstance(result.outcome["success"][0], bool)
    verdict = result.outcome["verdicts"][0]
    assert verdict["change_in"] is not None and verdict["change_out"] is not None
    assert "in its region" in result.said[-1]
    json.dumps(result.outcome)  # logged and served as JSON
