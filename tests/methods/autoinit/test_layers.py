"""AutoInit's weighted layers: the paper's variance from E[x^2], outputs predicted element by
element (zero padding included), tied weights, weight distributions."""
import math

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import assert_same, snapshot
from initlab.methods.autoinit.geometry import ConvCall
from initlab.methods.autoinit.layers import conv_outputs
from initlab.methods.autoinit.statistics import Moments


@pytest.mark.parametrize("layer,shape", [
    (nn.Linear(400, 300), (400,)),
    (nn.Conv2d(16, 64, 3, padding=0), (16, 9, 9)),          # no padding: every tap reads x
])
def test_drawn_variance_is_sigma2_over_fan_in_times_second_moment(layer, shape):
    # The paper: Var(W) = sigma^2 / (fan_in * E[x^2]), E[x^2] = var + mean^2 (not var alone).
    # Computed by hand here for an input of mean 0.8 and variance 0.5, no rescaling.
    mean, var, sigma2 = 0.8, 0.5, 2.0
    initlab.autoinit(layer, torch.randn(8, *shape), input_moments=(mean, var),
                     signal_variance=sigma2, rescale=False, seed=0)
    fan_in = layer.weight[0].numel()
    expected = sigma2 / (fan_in * (var + mean ** 2))
    drawn = float(layer.weight.detach().double().pow(2).mean())  # zero-mean draws
    assert drawn == pytest.approx(expected, rel=0.03)           # ~120k / 9k draws
    assert drawn / (sigma2 / (fan_in * var)) < 0.5              # Var alone: 2.3x as large
    assert torch.all(layer.bias == 0)


@pytest.mark.parametrize("layer,shape", [
    (nn.Linear(300, 200), (300,)),
    (nn.Conv2d(12, 48, 3, padding=1, groups=3), (12, 10, 10)),
    (nn.Conv2d(32, 32, 5, padding=2, groups=32), (32, 10, 10)),   # depthwise
    (nn.Conv1d(8, 32, 3), (8, 40)),
])
def test_weighted_layer_output_has_the_signal_variance(layer, shape):
    g = torch.Generator().manual_seed(123)         # not AutoInit's seed: independent of the draws
    x = 1.5 * torch.randn(1024, *shape, generator=g) + 0.5       # mean 0.5, variance 2.25
    report = initlab.autoinit(layer, x[:16], input_moments=(0.5, 2.25), signal_variance=4.0,
                              seed=0)
    with torch.no_grad():
        y = layer(x)
    h = report.history[0]
    assert h["fan_in"] == layer.weight[0].numel()
    assert h["output_var"] == pytest.approx(4.0)                # rescaled to exactly sigma^2
    assert float(y.var()) == pytest.approx(4.0, rel=0.05)       # and so it measures


def test_convolution_statistics_position_by_position_match_monte_carlo():
    # a 3x3 conv with zero padding on a 6x6 map of mean 1: corner, edge and interior units
    # read 4, 6 and 9 real inputs; every position's mean and variance as measured
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 5, 3, padding=1, bias=False).double()
    x = Moments(1.0, 0.5)
    y = conv_outputs(x, (4, 6, 6), ConvCall.of(conv), conv.weight.detach(), None)
    samples = 1.0 + math.sqrt(0.5) * torch.randn(50_000, 4, 6, 6, generator=g,
                                                 dtype=torch.float64)
    with torch.no_grad():
        out = conv(samples)
    mean, var = y.expand((5, 6, 6)).mean, y.expand((5, 6, 6)).var
    assert torch.allclose(mean, out.mean(0), atol=0.02)
    assert torch.allclose(var, out.var(0), rtol=0.03)
    assert float(var[:, 0, 0].mean()) < 0.6 * float(var[:, 3, 3].mean())   # borders differ


class Tied(nn.Module):
    """An embedding and an output layer sharing one weight (as GPT-2's wte and lm_head)."""

    def __init__(self, vocab=50, d=32):
        super().__init__()
        self.emb, self.norm = nn.Embedding(vocab, d), nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(self.norm(self.emb(ids)))


def test_a_tied_weight_is_drawn_once_for_its_output_layer():
    model = Tied()
    report = initlab.autoinit(model, torch.randint(0, 50, (8, 10)), seed=3)
    assert model.out.weight is model.emb.weight
    drawn = [h["layer"] for h in report.history]
    assert drawn == ["emb"]                                      # one tensor, one draw
    # drawn for the logits (a LayerNorm's output, E[x^2] = 1, fan_in 32): std 1/sqrt(32)
    assert float(model.emb.weight.detach().std()) == pytest.approx(1 / math.sqrt(32), rel=0.05)
    ids = torch.randint(0, 50, (256, 10))
    with torch.no_grad():
        logits = model(ids)
    # the input token's own logit reads its row twice (|w|^2, correlated): all the others
    others = torch.ones_like(logits, dtype=torch.bool).scatter_(-1, ids.unsqueeze(-1), False)
    assert float(logits[others].var()) == pytest.approx(1.0, rel=0.1)


# -- weight distributions (draws.py) ----------------------------------------------------------------
def _blocks(w, groups):
    return w.detach().double().reshape(groups, w.shape[0] // groups, -1)


@pytest.mark.parametrize("layer,shape,groups", [
    (nn.Linear(300, 200), (300,), 1),                       # rows < fan_in: orthonormal rows
    (nn.Linear(60, 150), (60,), 1),                         # rows > fan_in: orthonormal columns
    (nn.Conv2d(12, 48, 3, padding=1, groups=3), (12, 8, 8), 3),
])
def test_orthogonal_draws_are_orthogonal(layer, shape, groups):
    initlab.autoinit(layer, torch.randn(8, *shape), distribution="orthogonal", seed=0)
    for b in _blocks(layer.weight, groups):                  # (rows, fan_in) per group
        rows, fan = b.shape
        gram = b @ b.T if rows <= fan else b.T @ b
        c = float(gram.diagonal().mean())
        assert torch.allclose(gram, c * torch.eye(min(rows, fan), dtype=torch.float64),
                              atol=1e-4 * c)


def test_delta_orthogonal_conv_reads_the_center_tap_only():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    initlab.autoinit(conv, torch.randn(8, 16, 6, 6), distribution="delta-orthogonal", seed=0)
    w = conv.weight.detach().double()
    center = w[:, :, 1, 1]
    assert torch.count_nonzero(w) == torch.count_nonzero(center) == 16 * 16
    c = float(center[0] @ center[0])
    assert torch.allclose(center @ center.T, c * torch.eye(16, dtype=torch.float64), atol=1e-4 * c)


@pytest.mark.parametrize("distribution", ["normal", "orthogonal", "delta-orthogonal"])
def test_centered_rows_sum_to_zero_and_hit_the_variance(distribution):
    conv = nn.Conv2d(8, 24, 3)
    g = torch.Generator().manual_seed(123)
    x = 1.5 * torch.randn(512, 8, 9, 9, generator=g) + 2.0  # a large common mean
    initlab.autoinit(conv, x[:8], input_moments=(2.0, 2.25), distribution=distribution,
                     centered=True, seed=0)
    sums = conv.weight.detach().double().flatten(1).sum(1)
    assert float(sums.abs().max()) < 1e-5 * float(conv.weight.detach().abs().max())
    with torch.no_grad():
        y = conv(x).double()
    assert float(y.mean((0, 2, 3)).abs().max()) < 0.1       # no unit inherits the input mean
    assert float(y.var()) == pytest.approx(1.0, rel=0.05)


def test_bad_distribution_settings_say_what_to_do_and_change_nothing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 2))
    before = snapshot(model)
    with pytest.raises(ValueError, match="odd kernel") as info:
        initlab.autoinit(model, torch.randn(4, 3, 8, 8), distribution="delta-orthogonal")
    assert "'orthogonal'" in str(info.value)
    assert_same(model, before)
    with pytest.raises(ValueError, match="delta-orthogonal"):
        initlab.autoinit(model, torch.randn(4, 3, 8, 8), distribution="cauchy")
