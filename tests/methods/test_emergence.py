"""Emergence scaling: layer j (signed distance from the middle) multiplied by alpha^j."""
import copy

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import assert_same, mlp, snapshot
from initlab.methods.emergence import signed_distances


def test_signed_distances():
    assert signed_distances(4) == [-2, -1, 1, 2]
    assert signed_distances(5) == [-2, -1, 0, 1, 2]
    assert signed_distances(1) == [0]
    assert signed_distances(2) == [-1, 1]


@pytest.mark.parametrize("widths,powers", [
    ((6, 8, 8, 8, 3), [-2, -1, 1, 2]),
    ((6, 8, 8, 8, 8, 3), [-2, -1, 0, 1, 2]),
])
def test_keep_multiplies_each_layer_by_alpha_to_the_j(widths, powers):
    model = mlp(widths)
    before = copy.deepcopy(model)
    initlab.initialize(model, "emergence", alpha=1.5, base="keep")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    old = [m for m in before if isinstance(m, nn.Linear)]
    for lin, ref, j in zip(linears, old, powers):
        torch.testing.assert_close(lin.weight, ref.weight * 1.5 ** j, rtol=1e-6, atol=0)
        assert torch.equal(lin.bias, ref.bias)


def test_on_top_of_a_seeded_base():
    a, b = mlp((6, 64, 64, 64, 3), act=nn.ReLU), mlp((6, 64, 64, 64, 3), act=nn.ReLU)
    initlab.initialize(a, "emergence", alpha=2.0, seed=0)
    initlab.initialize(b, "emergence", alpha=1.0, seed=0)       # plain Kaiming
    for la, lb, j in zip(a[::2], b[::2], [-2, -1, 1, 2]):
        torch.testing.assert_close(la.weight, lb.weight * 2.0 ** j)
        assert torch.count_nonzero(la.bias) == 0
    w = b[2].weight.detach()                                    # Kaiming normal, ReLU gain
    assert abs(w.std().item() / (2 / 64) ** 0.5 - 1) < 0.05
    c = mlp((6, 64, 64, 64, 3))
    initlab.initialize(c, "emergence", alpha=1.0, base="xavier", seed=0)
    bound = (6 / (64 + 64)) ** 0.5
    assert 0.95 * bound < c[2].weight.abs().max() <= bound


def test_refuses_bad_alpha_unchanged():
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="alpha"):
        initlab.initialize(model, "emergence", alpha=0.0)
    with pytest.raises(ValueError, match="base"):
        initlab.initialize(model, "emergence", base="he")
    assert_same(model, before)


def test_a_non_finite_result_writes_nothing():
    model = mlp((6, 8, 8, 8, 3))
    before = snapshot(model)
    with pytest.raises(FloatingPointError, match="non-finite"):
        initlab.initialize(model, "emergence", alpha=1e30, base="keep")   # alpha^2 overflows
    assert_same(model, before)
