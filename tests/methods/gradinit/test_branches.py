"""Post-normalized residual branches found by following one forward pass (`branches.py`), on
hand-built nets whose branches are known, and the warm start's rule for them: shrink to unit
RMS, never grow."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from initlab.methods.gradinit.branches import residual_branch_layers

from .test_warm_start import rms_per_layer


class Residual(nn.Module):
    """stem -> [LN](x + f2(relu(f1(x)))) (in place when `inplace`) -> head."""

    def __init__(self, inplace=False, norm=True, scale=1.0):
        super().__init__()
        self.stem, self.f1, self.f2, self.head = (nn.Linear(6, 8), nn.Linear(8, 8),
                                                  nn.Linear(8, 8), nn.Linear(8, 3))
        self.norm = nn.LayerNorm(8) if norm else nn.Identity()
        self.inplace = inplace
        with torch.no_grad():
            for m in (self.f1, self.f2):
                m.weight.mul_(scale)

    def forward(self, x):
        h = self.stem(x)
        branch = self.f2(torch.relu(self.f1(h)))
        if self.inplace:
            h += branch
        else:
            h = h + branch
        return self.head(self.norm(h))


class Gated(nn.Module):
    """GroupNorm(x + sigmoid(g(x)) * f(x)): a gated branch; cat([x, c(x)]): no branch."""

    def __init__(self):
        super().__init__()
        self.stem, self.f, self.g, self.c = (nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8),
                                             nn.Linear(8, 8))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.stem(x)
        h = F.group_norm(h + torch.sigmoid(self.g(h)) * self.f(h), 2)
        return self.head(torch.cat([h, self.c(h)], dim=1))


class Towers(nn.Module):
    """LN(a(x) + b(z)) on two inputs, plus a learned bias and a constant: no residual branch."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)
        self.bias = nn.Parameter(torch.ones(8))
        self.register_buffer("table", torch.ones(8))

    def forward(self, batch):
        h = self.a(batch["x"]) + self.b(batch["z"]) + self.bias + self.table
        return self.head(F.layer_norm(h, (8,)))


class Parallel(nn.Module):
    """LN(a(h) + b(h)): no identity path, yet both sides share h's origin."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        h = self.stem(x)
        return F.layer_norm(self.a(h) + self.b(h), (3,))


def found(model, batch):
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    names = {id(m): n for n, m in model.named_modules()}
    index = residual_branch_layers(layers, lambda: model(batch), batch)
    return sorted(names[id(layers[i])] for i in index)


@pytest.mark.parametrize("inplace", [False, True])
def test_the_layers_of_a_normalized_x_plus_f_x_are_found(inplace):
    assert found(Residual(inplace), torch.randn(4, 6)) == ["f1", "f2"]


def test_an_unnormalized_sum_leaves_its_branch_to_the_warm_start():
    assert found(Residual(norm=False), torch.randn(4, 6)) == []


def test_the_report_names_them():
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    report = initlab.gradinit(Residual(), [(x, y)] * 4, steps=2)
    assert report.outcome["warm_start"]["residual_branch_layers"] == ["f1", "f2"]


def test_plain_nets_biases_tables_and_separate_towers_have_none():
    mlp = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    assert found(mlp, torch.randn(4, 6)) == []
    assert found(Towers(), {"x": torch.randn(4, 6), "z": torch.randn(4, 6)}) == []


def test_a_gated_branch_is_found_and_a_concatenation_is_not():
    assert found(Gated(), torch.randn(4, 6)) == ["f", "g"]


def test_two_sides_from_one_origin_are_both_branches():
    assert found(Parallel(), torch.randn(4, 6)) == ["a", "b"]


@pytest.mark.parametrize("scale, grows", [(0.1, False), (20.0, True)])
def test_warm_start_shrinks_a_branch_to_unit_rms_but_never_grows_it(scale, grows):
    """Measured by hand on the returned model: stem and head at unit RMS; the branch's layers at
    unit RMS when they started above it, untouched (their init) when they started below."""
    torch.manual_seed(0)
    model = Residual(scale=scale)
    x, y = torch.randn(64, 6) * 2, torch.randint(0, 3, (64,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    start_rms = rms_per_layer(model, x)
    report = initlab.initialize(model, "gradinit-warmstart", data=[(x, y)])
    rms = rms_per_layer(model, x)
    assert rms["stem"] == pytest.approx(1, rel=1e-5) and rms["head"] == pytest.approx(1, rel=1e-5)
    if grows:  # started above unit RMS: brought down to it
        assert start_rms["f1"] > 1 and rms["f1"] == pytest.approx(1, rel=1e-5)
        assert report.scales["f1.weight"] < 1
    else:      # below unit RMS: left as the constructor made it
        assert start_rms["f1"] < 1 and rms["f1"] < 1
        for name in ("f1.weight", "f1.bias", "f2.weight", "f2.bias"):
            assert report.scales[name] == 1.0
            assert torch.equal(dict(model.named_parameters())[name], before[name])
