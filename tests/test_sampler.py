"""The sampler: t <-> step mapping, seeded reproducibility, and hooks that do not change the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.errors import BadInputError
from atlas.models import Hooks, generate, load_model, step_to_t, t_to_step


@pytest.fixture(scope="module")
def model(tiny_shapes_dir):
    return load_model(str(tiny_shapes_dir), device="cpu")


def test_t_maps_to_steps_as_the_paper_says():
    assert [t_to_step(t, 50) for t in (1.0, 0.5, 0.0)] == [0, 25, 49]
    assert [t_to_step(t, 20) for t in (1.0, 0.5, 0.0)] == [0, 10, 19]
    assert step_to_t(0, 50) == 1.0 and step_to_t(49, 50) == 0.0
    for n in (2, 7, 50):
        assert all(t_to_step(step_to_t(i, n), n) == i for i in range(n))
    with pytest.raises(BadInputError, match=r"t must lie in \[0, 1\]"):
        t_to_step(1.5, 50)


def test_same_seed_same_image_other_seed_other_image(model):
    a = generate(model, ["a red circle", "a blue square"], [3, 4], steps=4)
    b = generate(model, ["a red circle", "a blue square"], [3, 4], steps=4)
    c = generate(model, ["a red circle", "a blue square"], [5, 4], steps=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], c[0])
    assert np.array_equal(a[1], c[1])


def test_hooks_that_only_read_leave_the_image_bit_identical(model):
    plain = generate(model, ["a red circle on the left"], [0], steps=4)
    seen = []
    hooks = Hooks()
    for block in ("down", "mid", "up"):
        hooks.on(block, lambda b, step, delta: seen.append((b, step.index)) and None)
    hooked = generate(model, ["a red circle on the left"], [0], steps=4, hooks=hooks)
    assert np.array_equal(plain, hooked)
    assert len(seen) == 12


def test_zero_change_is_bit_identical_and_a_real_change_is_not(model):
    plain = generate(model, ["a green triangle"], [1], steps=4)
    zero = Hooks().on("mid", lambda b, step, delta: torch.zeros_like(delta), steps=[0])
    assert np.array_equal(plain, generate(model, ["a green triangle"], [1], steps=4, hooks=zero))
    push = Hooks().on("mid", lambda b, step, delta: 50 * torch.ones_like(delta), steps=[0, 1])
    assert not np.array_equal(plain, generate(model, ["a green triangle"], [1], steps=4, hooks=push))


def test_hooks_only_fire_on_their_steps(model):
    seen = []
    hooks = Hooks().on("up", lambda b, step, delta: seen.append(round(step.t, 3)) and None, steps=[0, 3])
    generate(model, ["a red circle"], [0], steps=4, hooks=hooks)
    assert seen == [1.0, 0.0]
