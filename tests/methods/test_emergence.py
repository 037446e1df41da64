"""Emergence scaling: layer j (signed distance from the middle) multiplied by alpha^j."""
import copy
import math

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


def made(*parts: str) -> str:
    """A string built at run time, as a CLI or a config file gives it (not an interned literal:
    the method must compare names by value)."""
    return "".join(parts)


def hand_kaiming(model, seed, gain, alpha, powers):
    """The weights the paper's recipe gives, drawn by hand in the model's layer order:
    N(0, gain^2 / fan_in) from one seeded generator, times alpha^j."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for lin, j in zip([m for m in model if isinstance(m, nn.Linear)], powers):
        std = gain / math.sqrt(lin.in_features)
        out.append(torch.empty(lin.weight.shape).normal_(0, std, generator=gen) * alpha ** j)
    return out


@pytest.mark.parametrize("acts,nonlinearity,gain", [
    ((nn.Tanh,) * 3, "auto", 5 / 3),
    ((lambda: nn.LeakyReLU(0.2),) * 3, "auto", math.sqrt(2 / (1 + 0.2 ** 2))),
    ((nn.Tanh, nn.ReLU, nn.Tanh), "auto", math.sqrt(2)),       # mixed: relu
    ((nn.Tanh,) * 3, made("au", "to"), 5 / 3),
    ((nn.ReLU,) * 3, made("ta", "nh"), 5 / 3),                  # the name wins over the model
    ((nn.Tanh,) * 3, made("leaky", "_relu"), math.sqrt(2 / (1 + 0.01 ** 2))),  # default slope
])
def test_kaiming_base_is_the_papers_draw_with_the_activations_gain(acts, nonlinearity, gain):
    layers = []
    for a, b, act in zip((6, 8, 8), (8, 8, 8), acts):
        layers += [nn.Linear(a, b), act()]
    model = nn.Sequential(*layers, nn.Linear(8, 3))
    initlab.initialize(model, "emergence", alpha=1.5, nonlinearity=nonlinearity,
                       base=made("kai", "ming"), seed=4)
    want = hand_kaiming(model, 4, gain, 1.5, [-2, -1, 1, 2])
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for lin, w in zip(linears, want):
        torch.testing.assert_close(lin.weight.detach(), w, rtol=1e-6, atol=0)
        assert torch.count_nonzero(lin.bias) == 0


def test_xavier_base_named_at_run_time_draws_xavier_uniform():
    model = mlp((6, 8, 8, 3))
    initlab.initialize(model, "emergence", alpha=2.0, base=made("xav", "ier"), seed=2)
    gen = torch.Generator().manual_seed(2)
    for lin, j in zip([model[0], model[2], model[4]], [-1, 0, 1]):
        bound = math.sqrt(6 / (lin.in_features + lin.out_features))
        want = torch.empty(lin.weight.shape).uniform_(-bound, bound, generator=gen) * 2.0 ** j
        torch.testing.assert_close(lin.weight.detach(), want, rtol=1e-6, atol=0)
        assert torch.count_nonzero(lin.bias) == 0


def test_default_alpha_is_1_1_and_the_log_names_each_factor(caplog):
    model = mlp((6, 8, 8, 8, 3))
    before = copy.deepcopy(model)
    with caplog.at_level("DEBUG", logger="initlab.methods.emergence"):
        initlab.initialize(model, "emergence", base="keep")
    for i, j in zip((0, 2, 4, 6), (-2, -1, 1, 2)):
        torch.testing.assert_close(model[i].weight, before[i].weight * 1.1 ** j, rtol=1e-6, atol=0)
    lines = [r.getMessage() for r in caplog.records if "j=" in r.getMessage()]
    assert lines == [f"emergence: {i} j={j} factor {1.1 ** j:.4g}"
                     for i, j in zip((0, 2, 4, 6), (-2, -1, 1, 2))]


def test_an_unknown_nonlinearity_is_refused_unchanged():
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="nonlinearity"):
        initlab.initialize(model, "emergence", nonlinearity="ReLU")   # torch's names: "relu"
    assert_same(model, before)
