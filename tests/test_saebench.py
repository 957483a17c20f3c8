"""The diffusion SAEBench: golden values of its metric functions, the splice hook, and `atlas bench-saes` end to end
on a tiny atlas with SAEs of two types (its report section, the sweep, one-line errors)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas.cli.main import main
from atlas.models.hooks import StepInfo
from atlas.pipeline.saebench import Splice, layout_kept, recovered, window_steps
from atlas.sae import Sae, SaeConfig, bench_metrics, decoder_cosines, frequency_counts
from atlas.shapes.annotator import Annotation, FoundObject


def identity_sae(d: int = 3, k: int = 1) -> Sae:
    sae = Sae(SaeConfig(d_in=d, n_latents=d, k=k))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
    return sae


X = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
# reconstruction: the first three tokens exactly, the last as 0 (its top-1 activation is ReLU(-1) = 0).


def test_bench_metrics_golden():
    sae = identity_sae()
    metrics = bench_metrics(sae, X, batch_size=3)
    assert metrics["mse"] == pytest.approx(3 / 12)  # error 3 over 4 tokens x 3 dims
    assert metrics["cosine"] == pytest.approx(3 / 4)  # 1, 1, 1 and 0 for the zero reconstruction
    assert metrics["relative_reconstruction_bias"] == pytest.approx(1.0)  # 14 / 14
    assert metrics["alive_fraction"] == pytest.approx(2 / 3) and metrics["dead_fraction"] == pytest.approx(1 / 3)
    assert (metrics["freq_over_1pct"], metrics["freq_over_10pct"]) == (2, 2)  # frequencies 0.5, 0.25, 0
    assert metrics["max_decoder_cosine"] == metrics["mean_max_decoder_cosine"] == 0.0
    with torch.no_grad():
        sae.W_dec.mul_(0.5)  # every reconstruction halved: the SAE shrinks by 2
    halved = bench_metrics(sae, X)
    assert halved["relative_reconstruction_bias"] == pytest.approx(3.5 / 7)
    assert halved["cosine"] == pytest.approx(3 / 4)


def test_frequency_counts_and_decoder_cosines_golden():
    assert frequency_counts(torch.tensor([0.005, 0.01, 0.02, 0.5])) == {"freq_over_1pct": 2, "freq_over_10pct": 1}
    w = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 2.0]])
    assert decoder_cosines(w) == pytest.approx((0.6, (0.6 + 0.6 + 0.0) / 3))
    assert decoder_cosines(w, block=1) == pytest.approx((0.6, 0.4))  # blocks of rows give the same


def test_the_table_leaves_out_columns_no_row_measured():
    from atlas.report.saebench import columns

    rows = [{"name": "a", "l0": 2.0, "lpips": math.nan}, {"name": "b", "l0": 3.0, "lpips": math.nan, "k": 4}]
    assert columns(rows) == ["name", "k", "l0"]
    assert columns([{"lpips": 0.1}, {"lpips": math.nan}]) == ["lpips"]


def found(label: str, mask: np.ndarray) -> FoundObject:
    colour, shape = label.split()
    return FoundObject(shape, colour, mask, 0.0, 0.0, 1.0)


def test_layout_kept_is_the_mean_iou_of_the_clean_objects_with_their_spliced_selves():
    a = np.zeros((4, 4), bool)
    a[0, :4] = True  # 4 pixels
    moved = np.zeros((4, 4), bool)
    moved[0, 2:4] = moved[1, 2:4] = True  # 2 of them kept, union 6
    clean = [Annotation((found("red circle", a), found("blue square", ~a)), "flat")]
    spliced = [Annotation((found("red circle", moved), found("green square", ~a)), "flat")]  # the blue one gone
    assert layout_kept(clean, spliced) == pytest.approx((2 / 6 + 0.0) / 2)
    assert layout_kept(clean, clean) == 1.0
    assert math.isnan(layout_kept([Annotation((), "flat")], [Annotation((), "flat")]))


def test_recovered_and_the_windows_an_sae_serves():
    assert recovered(0.25, 1.0) == 0.75 and recovered(0.0, 0.5) == 1.0 and math.isnan(recovered(0.1, 0.0))
    assert window_steps(1.0, [1.0, 0.5, 0.0], 11) == [0, 1, 2, 3, 4]  # t 1.0 .. 0.6
    assert window_steps(0.5, [1.0, 0.5, 0.0], 11) == [5, 6, 7, 8]  # t 0.5 .. 0.2
    assert window_steps(0.0, [1.0, 0.5, 0.0], 11) == [9, 10]
    assert window_steps(1.0, [1.0], 11) == list(range(11))  # the only SAE serves every step


def test_splice_replaces_only_its_branch_update_by_the_reconstruction_or_zero():
    sae = identity_sae(k=3)  # reconstruction = ReLU(x)
    delta = torch.tensor([[1.0, -2.0, 3.0], [-1.0, 0.5, 2.0]]).reshape(2, 3, 1, 1)  # CFG order [uncond, cond]
    step = StepInfo(0, 1, 999)
    change = Splice(sae, "cond")("mid", step, delta)
    assert change[0].flatten().tolist() == [0.0, 0.0, 0.0]
    assert change[1].flatten().tolist() == [1.0, 0.0, 0.0]  # ReLU(x) - x
    assert Splice(sae, "uncond")("mid", step, delta)[0].flatten().tolist() == [0.0, 2.0, 0.0]
    ablate = Splice(None, "cond")("mid", step, delta)
    assert (delta + ablate)[1].flatten().tolist() == [0.0, 0.0, 0.0] and torch.equal(ablate[0], torch.zeros(3, 1, 1))


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def two_type_atlas(tmp_path_factory):
    """A tiny shapes atlas with a TopK primary SAE and a JumpReLU variant of the mid block at t = 1.0."""
    path = tmp_path_factory.mktemp("two-type-atlas") / "atlas"
    result = cli("build", "--atlas", str(path), "--n-images", "32", "--blocks", "mid", "--t", "1.0", "--branches",
                 "cond", "--k", "2", "--sae-type", "topk,jumprelu", "--sae-tokens", "5000")
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.slow
def test_bench_saes_stores_prints_and_reports_every_sae_and_the_sweep(two_type_atlas):
    from atlas.store import open_atlas

    with open_atlas(two_type_atlas) as atlas:
        assert [(s.variant, s.k, s.metrics["sae_type"]) for s in atlas.saes()] == [("", 2, "topk"),
                                                                                 ("jumprelu", 2, "jumprelu")]
        most = atlas.sql("SELECT variant, max(n) AS most FROM (SELECT variant, image_id, row, col, count(*) AS n "
                         "FROM codes GROUP BY ALL) GROUP BY variant ORDER BY variant").rows
        assert most[0] == ("", 2) and 0 < most[1][1] <= 8  # jumprelu: its active set, at most 4 k per position
    result = cli("bench-saes", "--atlas", str(two_type_atlas), "--spliced-images", "2", "--sweep-k", "2,4",
                 "--sweep-types", "topk,batchtopk")
    assert result.exit_code == 0, result.output
    stored = json.loads((two_type_atlas / "report" / "saebench.json").read_text())
    assert [r["name"] for r in stored["saes"]] == ["mid/1.0/cond", "mid/1.0/cond@jumprelu"]
    assert [(r["sae_type"], r["k"]) for r in stored["sweep"]] == [("topk", 2), ("topk", 4), ("batchtopk", 2),
                                                                  ("batchtopk", 4)]
    for row in stored["saes"] + stored["sweep"]:
        assert 0 < row["l0"] and 0 <= row["alive_fraction"] <= 1 and row["spliced_steps"] > 0
        assert 0 <= row["pixel_change"] and 0 <= row["layout_kept"] <= 1
    assert stored["saes"][0]["l0"] == pytest.approx(2.0, abs=0.01)
    assert "mid/1.0/cond@jumprelu" in result.output and "relative_reconstruction_bias" in result.output
    assert cli("report", "--atlas", str(two_type_atlas)).exit_code == 0
    markdown = (two_type_atlas / "report" / "report.md").read_text()
    section = markdown.split("## SAEBench (diffusion)")[1]
    assert "| mid/1.0/cond@jumprelu | jumprelu | 2 |" in section and "L0 sweep" in section


@pytest.mark.slow
def test_bench_saes_refuses_an_unknown_sweep_key_in_one_line(two_type_atlas):
    result = cli("bench-saes", "--atlas", str(two_type_atlas), "--spliced-images", "0", "--sweep-k", "2",
                 "--sweep-key", "up/0.0/cond")
    assert result.exit_code != 0 and result.output.count("\n") == 1
    assert "no SAE 'up/0.0/cond'" in result.output and "mid/1.0/cond@jumprelu" in result.output
