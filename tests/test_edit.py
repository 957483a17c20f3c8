"""The edit math on the real shapes model with a real (briefly trained) SAE: windows, regions, zero edits,
changes through the concept vectors only, the SAE error kept, and edits composing by sum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.edit.core import WINDOWS, ConceptEdit, edit_hooks, parse_region, parse_window, region_to_grid
from atlas.errors import BadInputError, NotFoundError
from atlas.models import Hooks, generate, load_model
from atlas.sae import SaeConfig, SaeTrainConfig, train_sae

PROMPTS = ["a red circle", "a blue square on a striped background"]


@pytest.fixture(scope="module")
def model():
    return load_model("shapes")


@pytest.fixture(scope="module")
def mid_sae(model):
    """An SAE trained for a few hundred steps on the mid block's cond deltas of the first denoising steps."""
    captured = []

    def grab(block, step, delta):
        captured.append(delta[delta.shape[0] // 2:].permute(0, 2, 3, 1).reshape(-1, delta.shape[1]).clone())

    generate(model, ["a red circle", "a green triangle on the left", "a yellow square", "a blue circle"] * 2,
             list(range(8)), hooks=Hooks().on("mid", grab, steps=range(8)))
    acts = torch.cat(captured)
    cfg = SaeConfig(d_in=acts.shape[1], n_latents=256, k=8, dead_tokens=2_000)
    return train_sae(acts, cfg, SaeTrainConfig(lr=1e-3, batch_size=256, n_tokens=60_000, device="cpu"),
                     progress=False).sae


def capture_delta(model, prompt: str, block: str = "mid", step: int = 0) -> torch.Tensor:
    seen = {}
    generate(model, [prompt], [0], hooks=Hooks().on(block, lambda b, s, d: seen.setdefault("d", d.clone()),
                                                   steps=[step]))
    return seen["d"]


def firing_latents(sae, delta: torch.Tensor, n: int = 2) -> list[int]:
    """Latents that fire on the cond half of this delta (so a spatial edit has something to move)."""
    x = delta[delta.shape[0] // 2:].permute(0, 2, 3, 1).reshape(-1, delta.shape[1])
    counts = torch.bincount(sae.encode(x).top_indices.flatten(), minlength=sae.n_latents)
    return counts.argsort(descending=True)[:n].tolist()


# -- windows and regions ---------------------------------------------------------------------------------------

def test_named_windows_partition_the_steps_and_pick_the_papers_saes():
    for n_steps in (20, 50, 11):
        steps = [WINDOWS[w].steps(n_steps) for w in ("early", "middle", "final")]
        assert sorted(sum(steps, [])) == list(range(n_steps))
        assert steps[0][0] == 0 and steps[2][-1] == n_steps - 1
    assert WINDOWS["early"].steps(20) == list(range(8))  # t >= 0.6: steps 0..7 of 20
    assert [WINDOWS[w].sae_t([1.0, 0.5, 0.0]) for w in ("early", "middle", "final")] == [1.0, 0.5, 0.0]


def test_custom_windows_and_bad_ones():
    assert parse_window("0.5-1.0").steps(20) == list(range(10))
    assert parse_window("1.0").steps(20) == [0] and parse_window("0.5").steps(50) == [25]
    for bad in ("late", "0.7-0.2", "1.5", "-0.1-0.5", ""):
        with pytest.raises(BadInputError, match="window"):
            parse_window(bad)


def test_regions_names_boxes_pixels_and_masks(tmp_path):
    top_left = parse_region("top-left", 32)
    assert top_left[:16, :16].all() and top_left.sum() == 256
    assert (parse_region("0,0,0.5,0.5", 32) == top_left).all()
    assert (parse_region("0,0,16,16", 32) == top_left).all()  # pixels when a value exceeds 1
    assert region_to_grid(top_left, (4, 4), "mid").tolist() == [[True, True, False, False],
                                                                [True, True, False, False]] + [[False] * 4] * 2
    from PIL import Image

    Image.fromarray((parse_region("right", 64) * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    assert (parse_region(str(tmp_path / "mask.png"), 32) == parse_region("right", 32)).all()
    for bad in ("middle-left", "0.5,0.5,0.2,0.9", "1,2,3"):
        with pytest.raises(BadInputError, match="region"):
            parse_region(bad, 32)
    with pytest.raises(NotFoundError, match="region mask .* does not exist"):
        parse_region(str(tmp_path / "missing.png"), 32)
    with pytest.raises(BadInputError, match="covers no cell"):
        region_to_grid(parse_region("0,0,3,3", 32), (4, 4), "mid")


# -- the math on real deltas -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_zero_strength_global_edit_gives_a_bit_identical_image(model, mid_sae):
    plain = generate(model, PROMPTS, [0, 1])
    edit = ConceptEdit(mid_sae, list(range(10)), "mid", list(range(20)), 0.0)
    assert np.array_equal(generate(model, PROMPTS, [0, 1], hooks=edit_hooks([edit])), plain)


def test_spatial_edit_moves_only_the_concept_coefficients_and_keeps_the_sae_error(model, mid_sae):
    delta = capture_delta(model, PROMPTS[0])
    latents = firing_latents(mid_sae, delta)
    region = region_to_grid(parse_region("top-left", 32), (4, 4), "mid")
    edit = ConceptEdit(mid_sae, latents, "mid", [0], 3.0, region)
    change = edit.change(delta)
    assert change[:1].abs().max() == 0  # cond branch only: the uncond half is untouched
    cond, moved = delta[1:], (delta + change)[1:]

    def codes(d):
        x = d.permute(0, 2, 3, 1).reshape(-1, d.shape[1])
        out = mid_sae.encode(x)
        dense = torch.zeros(x.shape[0], mid_sae.n_latents).scatter(1, out.top_indices, out.top_acts)
        return x, dense

    x, z = codes(cond)
    x_new = moved.permute(0, 2, 3, 1).reshape(-1, moved.shape[1])
    # the edited delta is delta + sum_c (z'_c - z_c) f_c with z'_c = beta ||z|| inside, 0 outside
    target = z.clone()
    inside = torch.as_tensor(region.reshape(-1))
    for c in latents:
        target[:, c] = torch.where(inside, 3.0 * z.norm(dim=1), torch.zeros(()))
    torch.testing.assert_close(x_new - x, (target - z) @ mid_sae.W_dec.detach(), atol=1e-4, rtol=1e-4)
    # so the SAE's error term delta - decode(z) is exactly what it was
    error_before = x - (z @ mid_sae.W_dec.detach() + mid_sae.b_dec.detach())
    error_after = x_new - (target @ mid_sae.W_dec.detach() + mid_sae.b_dec.detach())
    torch.testing.assert_close(error_after, error_before, atol=1e-4, rtol=1e-4)
    # the change lies in the span of the concept vectors
    basis = mid_sae.W_dec.detach()[latents]
    residual = (x_new - x) - (x_new - x) @ torch.linalg.pinv(basis) @ basis
    assert residual.abs().max() < 1e-3


@pytest.mark.slow
def test_global_edit_adds_beta_split_by_code_norm(model, mid_sae):
    delta = capture_delta(model, PROMPTS[1], step=10)
    change = ConceptEdit(mid_sae, [3], "mid", [10], 8.0, branch="both").change(delta)
    x = delta.permute(0, 2, 3, 1).reshape(2, -1, delta.shape[1])
    norms = mid_sae.encode(x.reshape(-1, x.shape[2])).top_acts.norm(dim=1).reshape(2, -1)
    coef = change.permute(0, 2, 3, 1).reshape(2, -1, delta.shape[1]) @ mid_sae.W_dec.detach()[3]
    torch.testing.assert_close(coef, 8.0 * norms / norms.sum(1, keepdim=True), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(coef.sum(1), torch.full((2,), 8.0), atol=1e-3, rtol=1e-4)  # both CFG halves


@pytest.mark.slow
def test_edits_compose_by_summing_their_changes_and_act_only_in_their_window(model, mid_sae):
    region = region_to_grid(parse_region("bottom-right", 32), (4, 4), "mid")
    a = ConceptEdit(mid_sae, [1, 2], "mid", WINDOWS["early"].steps(20), 40.0, region)
    b = ConceptEdit(mid_sae, [5], "mid", WINDOWS["middle"].steps(20), 60.0)
    both = generate(model, PROMPTS, [0, 1], hooks=edit_hooks([a, b]))
    calls = []

    def by_hand(block, step, delta):
        calls.append(step.index)
        total = torch.zeros_like(delta)
        for e in (a, b):
            if step.index in e.steps:
                total = total + e.change(delta)
        return total

    assert np.array_equal(generate(model, PROMPTS, [0, 1], hooks=Hooks().on("mid", by_hand)), both)
    assert calls == list(range(20))
    assert not np.array_equal(both, generate(model, PROMPTS, [0, 1]))

    class Spy(ConceptEdit):
        def __call__(self, block, step, delta):
            seen.append(step.index)
            return super().__call__(block, step, delta)

    seen: list[int] = []
    generate(model, PROMPTS[:1], [0], hooks=edit_hooks([Spy(mid_sae, [1], "mid", WINDOWS["final"].steps(20), 1.0)]))
    assert seen == [16, 17, 18, 19]


def test_bad_edits_are_refused(mid_sae):
    with pytest.raises(BadInputError, match="branch"):
        ConceptEdit(mid_sae, [1], "mid", [0], 1.0, branch="uncond-only")
    with pytest.raises(BadInputError, match="concept"):
        ConceptEdit(mid_sae, [], "mid", [0], 1.0)
    with pytest.raises(BadInputError, match="window"):
        ConceptEdit(mid_sae, [1], "mid", [], 1.0)


def test_named_regions_are_the_shapes_worlds_positions():
    """The edit stage names its own regions; they are the halves and quadrants the shapes captions name."""
    from atlas.edit.core import NAMED_REGIONS
    from atlas.shapes.world import POSITIONS

    assert NAMED_REGIONS == POSITIONS
