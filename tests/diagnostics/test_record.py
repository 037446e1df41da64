"""Forward statistics against a hand-written loop over the same batches."""
import math

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import batches
from initlab.diagnostics import diagnose


def moments(outputs: list[torch.Tensor]) -> tuple[float, float, float]:
    """RMS, mean and batch-mean deviation RMS over every element of every batch."""
    cat = torch.cat([o.double().flatten() for o in outputs])
    dev = torch.cat([(o.double() - o.double().mean(0, keepdim=True)).flatten() for o in outputs])
    return (float(cat.square().mean().sqrt()), float(cat.mean()), float(dev.square().mean().sqrt()))


def test_forward_rms_mean_and_spread_match_a_hand_written_loop():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 16),
                          nn.ReLU(), nn.Linear(16, 3))
    data = batches(4, size=32)
    d = diagnose(model, data, lr=0.1, batches=4)
    model.eval()  # diagnose runs without dropout
    outs: dict[int, list[torch.Tensor]] = {}
    inputs = []
    with torch.no_grad():
        for x, _ in data[:3]:  # the measured batches; the fourth is held out
            inputs.append(x)
            for i, layer in enumerate(model):
                x = layer(x)
                outs.setdefault(i, []).append(x)
    expected = [(str(i), moments(o)) for i, o in outs.items() if i != 2]  # dropout: pass-through
    assert [s.name for s in d.layers] == [name for name, _ in expected]
    for stat, (_, (rms, mean, spread)) in zip(d.layers, expected):
        assert stat.rms == pytest.approx(rms, rel=1e-6)
        assert stat.mean == pytest.approx(mean, rel=1e-6, abs=1e-9)
        assert stat.spread == pytest.approx(spread, rel=1e-6)
    spread = {s.name: s.spread for s in d.layers}
    # gains: the first weighted layer over its input; the next ones over the previous output
    assert d.layers[0].gain == pytest.approx(spread["0"] / moments(inputs)[2], rel=1e-6)
    assert d.layers[2].gain == pytest.approx(spread["3"] / spread["0"], rel=1e-6)
    assert d.layers[4].gain == pytest.approx(spread["5"] / spread["3"], rel=1e-6)
    assert [s.weighted for s in d.layers] == [True, False, True, False, True]


class Reused(nn.Module):
    """One activation module called twice per forward."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.act = nn.Linear(6, 8), nn.Linear(8, 3), nn.Tanh()

    def forward(self, x):
        return self.act(self.b(self.act(self.a(x))))


def test_a_module_called_twice_gives_two_entries_in_call_order():
    model = Reused()
    data = batches(2)
    d = diagnose(model, data, lr=0.1)
    assert [s.name for s in d.layers] == ["a", "act", "b", "act#2"]
    with torch.no_grad():
        first = torch.tanh(model.a(data[0][0]))
        second = torch.tanh(model.b(first))
    assert d.layers[1].rms == pytest.approx(moments([first])[0], rel=1e-6)
    assert d.layers[3].rms == pytest.approx(moments([second])[0], rel=1e-6)


def test_an_embedding_starts_a_new_chain():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(32, 3))
    data = [(torch.randint(0, 10, (16, 4)), torch.randint(0, 3, (16,))) for _ in range(2)]
    d = diagnose(model, data, lr=0.1)
    assert d.layers[0].gain is None and math.isfinite(d.layers[1].gain)


class SumBlock(nn.Module):
    """A residual sum as Admin and DeepNet see it: norm(multiplier * x + f(x))."""

    def __init__(self, width: int = 8, multiplier: float = 3.0):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.sum = initlab.ResidualSum(branch=self.f)
        self.sum.multiplier.fill_(multiplier)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return self.norm(self.sum(x, self.f(x)))


def test_a_residual_sum_is_measured_against_its_weighted_skip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), SumBlock(), nn.Linear(8, 3))
    data = batches(3)
    d = diagnose(model, data, lr=0.1)
    (stat,) = d.branches
    assert (stat.name, stat.source) == ("1.sum", "sum")
    with torch.no_grad():
        h = [model[0](x) for x, _ in data[:2]]
        f = [model[1].f(x) for x in h]
    assert stat.branch_rms == pytest.approx(moments(f)[0], rel=1e-6)
    assert stat.skip_rms == pytest.approx(3.0 * moments(h)[0], rel=1e-6)
    assert {s.name for s in d.layers if s.in_branch} == {"1.f.0", "1.f.1", "1.f.2"}
