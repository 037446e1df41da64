"""AutoInit's non-normal shapes (`autoinit_shape.py`) and the ResNet shortcut's maps (strided
indexing, channel padding), each against Monte Carlo or a measured field."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from helpers.autoinit import measured_rho
from initlab.methods import autoinit_ops as ops
from initlab.methods import autoinit_shape as shapes
from initlab.methods.autoinit_maps import moments


def _skew(v: torch.Tensor) -> float:
    v = v - v.mean()
    return float(v.pow(3).mean() / v.pow(2).mean() ** 1.5)


def test_normal_particles_are_standard_normal_bins():
    q = shapes.normal()[0]
    assert float(q.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(q.pow(2).mean()) == pytest.approx(1.0, abs=1e-12)
    # the median bins straddle 0 and the outermost bin's mean is beyond the 1/128 quantile
    k = q.numel()
    assert float(q[k // 2 - 1]) < 0 < float(q[k // 2])
    assert float(q[-1]) > float(torch.special.ndtri(torch.tensor(1 - 1 / k, dtype=torch.float64)))


def test_a_constant_channel_gets_the_normal_shape_and_keeps_the_others():
    rows = torch.stack([torch.zeros(128), torch.arange(128.0) ** 2]).double()
    q = shapes.standardize(rows)
    assert torch.equal(q[0], shapes.normal()[0])
    assert float(q[1].mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(q[1].pow(2).mean()) == pytest.approx(1.0, abs=1e-12)
    assert shapes.standardize(torch.ones(3, 128, dtype=torch.float64)) is None


def test_shape_of_rectified_plus_normal_matches_monte_carlo():
    torch.manual_seed(0)
    a = torch.relu(torch.randn(2_000_000, dtype=torch.float64))
    b = 0.8 * torch.randn_like(a)
    rect = shapes.applied(torch.relu, None, torch.zeros(1, dtype=torch.float64),
                          torch.ones(1, dtype=torch.float64))
    q = shapes.combine(a.std().reshape(1), rect, torch.tensor([0.8], dtype=torch.float64), None)
    z = a + b
    z = (z - z.mean()) / z.std()
    assert _skew(q[0]) == pytest.approx(_skew(z), abs=0.02)
    for p in (0.02, 0.1, 0.5, 0.9):  # the particles' quantiles against the sample's
        i = int(p * q.shape[1])
        assert float(q[0, i]) == pytest.approx(float(z.quantile(p)), abs=0.04)


class ResidualRelu(nn.Module):
    """s = relu(x0), then s = relu(s + x_k) (and once relu(x_k - s)): a residual stream
    without weights, every x_k an independent standard normal column."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 1)  # AutoInit needs a layer; the test reads the relu nodes

    def forward(self, x):
        s = torch.relu(x[:, 0])
        for k in range(1, 4):
            s = torch.relu(s + x[:, k])
        s = torch.relu(x[:, 4] - s)
        s = torch.relu(2.0 * s + x[:, 5])
        return self.head(x) + s.unsqueeze(-1)


def test_relu_of_a_residual_stream_matches_monte_carlo():
    torch.manual_seed(0)
    model = ResidualRelu()
    _, est = initlab.autoinit(model, torch.randn(64, 6), return_estimates=True, seed=0)
    x = torch.randn(1_000_000, 6, dtype=torch.float64)
    s, measured = torch.relu(x[:, 0]), []
    for k in range(1, 4):
        s = torch.relu(s + x[:, k])
        measured.append(s)
    s = torch.relu(x[:, 4] - s)
    measured.append(s)
    measured.append(torch.relu(2.0 * s + x[:, 5]))
    names = [n for n in est if n.startswith("relu")][1:]
    assert len(names) == len(measured)
    for name, m in zip(names, measured):
        mean, var = est[name]
        assert mean == pytest.approx(float(m.mean()), rel=0.01), name
        assert var == pytest.approx(float(m.var()), rel=0.015), name


def test_the_normal_model_alone_misses_the_residual_stream(monkeypatch):
    """The check above can fail: without shapes the third block's variance is 9 % low."""
    monkeypatch.setattr(shapes, "applied", lambda *a: None)
    _, est = initlab.autoinit(ResidualRelu(), torch.randn(64, 6), return_estimates=True, seed=0)
    x = torch.randn(1_000_000, 4, dtype=torch.float64)
    s = torch.relu(x[:, 0])
    for k in range(1, 4):
        s = torch.relu(s + x[:, k])
    assert est["relu_3"][1] < 0.95 * float(s.var())


def test_strided_indexing_thins_out_the_spatial_correlation():
    torch.manual_seed(0)
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64)
    field = F.conv2d(torch.randn(3000, 1, 26, 26, dtype=torch.float64), kernel.reshape(1, 1, 3, 3))
    rho = torch.stack([measured_rho(field)])
    x = moments(torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1), axis=1)
    y = ops._indexed(type(x)(x.mean, x.var, x.shared, 1, rho), (slice(None),) * 2 +
                     (slice(None, None, 2),) * 2)
    assert torch.allclose(y.rho[0], measured_rho(field[..., ::2, ::2]), atol=0.02)
    assert y.axis == 1 and y.rho[0, 2, 3] < 0.7 * rho[0, 2, 3]
    # an index that drops the channel dim pools the channels
    assert ops._indexed(x, (slice(None), 0)).axis is None


class Shortcut(nn.Module):
    """A ResNet's option-A shortcut: stride-2 indexing and zero channels, plus a conv branch."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        short = F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        y = torch.relu(short + self.branch(h))
        return self.head(y.mean((2, 3)))


def test_channel_padding_keeps_the_channels_apart():
    torch.manual_seed(0)
    model = Shortcut()
    x = torch.randn(512, 3, 16, 16)
    _, est = initlab.autoinit(model, x, return_estimates=True, seed=0, distribution="orthogonal",
                              centered=True)
    with torch.no_grad():
        h = torch.relu(model.stem(x))
        short = F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        y = torch.relu(short + model.branch(h))
    for name, value in (("pad", short), ("relu_1", y)):
        assert est[name][0] == pytest.approx(float(value.mean()), rel=0.03), name
        assert est[name][1] == pytest.approx(float(value.var()), rel=0.05), name
    # the padded channels are constant: their spread of means is in the pooled variance
    assert float(short[:, :4].var()) == 0.0
