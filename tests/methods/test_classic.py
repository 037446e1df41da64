"""Kaiming, Xavier, orthogonal: the variances and structure of their papers, gains, biases."""
import math

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import assert_same, snapshot
from initlab.methods.classic import ClassicConfig


def net(act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(8, 32, 3), act(), nn.Flatten(), nn.Linear(32 * 4, 200), act(),
                         nn.Linear(200, 10))


def close(measured, expected, rel=0.05):
    assert abs(measured / expected - 1) < rel, (measured, expected)


@pytest.mark.parametrize("act,gain", [(nn.ReLU, math.sqrt(2)), (nn.Tanh, 5 / 3),
                                      (lambda: nn.LeakyReLU(0.2), math.sqrt(2 / (1 + 0.2 ** 2)))])
def test_kaiming_fan_in_gain_from_the_activation(act, gain):
    model = net(act)
    initlab.initialize(model, "kaiming", seed=0)
    close(model[0].weight.std().item(), gain / math.sqrt(8 * 9))      # conv fan_in = in * k * k
    close(model[3].weight.std().item(), gain / math.sqrt(128))
    assert all(torch.count_nonzero(m.bias) == 0 for m in (model[0], model[3], model[5]))


def test_kaiming_fan_out_uniform_and_explicit_nonlinearity():
    model = net()
    initlab.initialize(model, "kaiming", mode="fan_out", distribution="uniform",
                       nonlinearity="tanh", seed=0)
    bound = 5 / 3 * math.sqrt(3 / (32 * 9))                            # fan_out = out * k * k
    w = model[0].weight.detach()
    assert 0.95 * bound < w.abs().max() <= bound


def test_xavier_uniform_and_normal():
    model = net()
    bias = model[3].bias.detach().clone()
    initlab.initialize(model, "xavier", seed=0, bias="keep")
    bound = math.sqrt(6 / (128 + 200))                                 # gain 1 (the paper)
    assert 0.95 * bound < model[3].weight.abs().max() <= bound
    assert torch.equal(model[3].bias, bias)
    initlab.initialize(model, "xavier", distribution="normal", seed=0)
    close(model[3].weight.std().item(), math.sqrt(2 / (128 + 200)))
    assert torch.count_nonzero(model[3].bias) == 0


@pytest.mark.parametrize("nonlinearity,gain", [("linear", 1.0), ("auto", math.sqrt(2))])
def test_orthogonal(nonlinearity, gain):
    model = net()
    initlab.initialize(model, "orthogonal", nonlinearity=nonlinearity, seed=0)
    for layer in (model[0], model[3], model[5]):
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, gain ** 2 * torch.eye(gram.shape[0], dtype=torch.float64),
                                   atol=1e-5, rtol=0)


def test_seeded_and_leaves_other_modules():
    a = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    b = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    bn = snapshot(a[1])
    for rule in ("kaiming", "xavier", "orthogonal"):
        initlab.initialize(a, rule, seed=5)
        initlab.initialize(b, rule, seed=5)
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
    assert_same(a[1], bn)


@pytest.mark.parametrize("name", ["swishy", "ReLU"])  # both sides of "auto" in string order
def test_an_unknown_nonlinearity_is_refused_when_the_settings_are_built(name):
    with pytest.raises(ValueError, match="nonlinearity"):
        ClassicConfig(nonlinearity=name).validate()


def test_refusals_leave_the_model_unchanged():
    model = net()
    before = snapshot(model)
    with pytest.raises(ValueError):
        initlab.initialize(model, "kaiming", nonlinearity="swishy")
    with pytest.raises(ValueError, match="mode"):
        initlab.initialize(model, "kaiming", mode="fan_avg")
    with pytest.raises(ValueError, match="Linear/Conv"):
        initlab.initialize(nn.Sequential(nn.ReLU()), "xavier")
    assert_same(model, before)


@pytest.mark.parametrize("rule", ["kaiming", "xavier", "orthogonal"])
@pytest.mark.parametrize("scale", [0.5, 2.0, 3.0])
def test_scale_multiplies_the_drawn_weights(rule, scale):
    plain, scaled = net(), net()
    initlab.initialize(plain, rule, seed=3)
    initlab.initialize(scaled, rule, seed=3, scale=scale)  # He x 3: the same draws, three times
    for (name, p), (_, q) in zip(plain.named_parameters(), scaled.named_parameters()):
        factor = scale if name.endswith("weight") else 1.0
        torch.testing.assert_close(q, p * factor, rtol=1e-6, atol=0, msg=name)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan, "2"])
def test_scale_must_be_a_positive_finite_number(scale):
    model = net()
    before = snapshot(model)
    with pytest.raises(ValueError, match="scale must be a positive"):
        initlab.initialize(model, "kaiming", scale=scale)
    assert_same(model, before)


# ---- every weight drawn exactly as the papers' rules say, drawn here by hand --------------------

def made(*parts: str) -> str:
    """A string built at run time, as a CLI or a config file gives it (not an interned literal:
    settings must be compared by value)."""
    return "".join(parts)


def fans(layer):
    """(fan_in, fan_out) from the layer's own sizes: in/out features times the kernel's area."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    area = math.prod(layer.kernel_size)
    return layer.in_channels * area, layer.out_channels * area


def hand_draws(model, seed, rule, gain, distribution, mode="fan_in"):
    """He: std = gain / sqrt(fan); Glorot: std = gain * sqrt(2 / (fan_in + fan_out)); a uniform
    draw has the same variance (bound sqrt(3) std). One seeded generator, layers in order."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer in (model[0], model[3], model[5]):
        fan_in, fan_out = fans(layer)
        if rule == "kaiming":
            std = gain / math.sqrt(fan_in if mode == "fan_in" else fan_out)
        else:
            std = gain * math.sqrt(2 / (fan_in + fan_out))
        w = torch.empty(layer.weight.shape)
        if distribution == "normal":
            out.append(w.normal_(0, std, generator=gen))
        else:
            out.append(w.uniform_(-math.sqrt(3) * std, math.sqrt(3) * std, generator=gen))
    return out


def mixed():
    return nn.Sequential(nn.Conv2d(8, 32, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32 * 4, 200),
                         nn.ReLU(), nn.Linear(200, 10))


LEAKY = lambda: nn.LeakyReLU(0.2)  # noqa: E731
LEAKY_GAIN = math.sqrt(2 / (1 + 0.2 ** 2))


@pytest.mark.parametrize("rule,settings,model,gain,distribution,mode", [
    ("kaiming", {}, lambda: net(LEAKY), LEAKY_GAIN, "normal", "fan_in"),
    ("kaiming", dict(distribution=made("uni", "form"), mode=made("fan_", "out")),
     lambda: net(nn.Tanh), 5 / 3, "uniform", "fan_out"),
    ("kaiming", dict(nonlinearity=made("leaky", "_relu")), lambda: net(LEAKY), LEAKY_GAIN,
     "normal", "fan_in"),                                   # the model's slope, named explicitly
    ("kaiming", dict(nonlinearity=made("au", "to"), distribution=made("nor", "mal")),
     lambda: net(nn.Tanh), 5 / 3, "normal", "fan_in"),
    ("kaiming", {}, mixed, math.sqrt(2), "normal", "fan_in"),   # mixed activations: relu
    ("xavier", {}, lambda: net(nn.ReLU), 1.0, "uniform", None),   # gain 1 (the paper)
    ("xavier", dict(distribution=made("nor", "mal"), nonlinearity="auto"), lambda: net(LEAKY),
     LEAKY_GAIN, "normal", None),
    ("xavier", dict(nonlinearity="auto"), mixed, 1.0, "uniform", None),  # mixed: gain 1
])
def test_every_weight_is_the_papers_draw(rule, settings, model, gain, distribution, mode):
    model = model()
    initlab.initialize(model, rule, seed=7, bias=made("ze", "ro"), **settings)
    want = hand_draws(model, 7, rule, gain, distribution, mode)
    for layer, w in zip((model[0], model[3], model[5]), want):
        torch.testing.assert_close(layer.weight.detach(), w, rtol=1e-6, atol=0)
        assert torch.count_nonzero(layer.bias) == 0
