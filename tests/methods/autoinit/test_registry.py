"""AutoInit's extension API: user maps and their traits, unregistering, errors that name the
layer, elementwise plain functions."""
import warnings

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import assert_same, snapshot
from initlab.core.graph import trace
from initlab.methods.autoinit import MapSpec, register_moment_map, unregister_moment_map
from initlab.methods.autoinit.registry import find_map


class Doubler(nn.Module):
    """A block AutoInit does not know; its map says it doubles the signal."""

    def forward(self, x):
        return torch.cat([x, x], -1) * 1.0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.block, self.b = nn.Linear(8, 16), Doubler(), nn.Linear(32, 4)

    def forward(self, x):
        return self.b(self.block(self.a(x)))


def test_a_registered_module_map_is_a_leaf_and_is_used_then_unregistered():
    seen = []

    def doubler_map(ctx):
        seen.append(ctx.name)
        x = ctx.first()                      # pooled: user maps see one (mean, var)
        return initlab.Moments(2 * x.mean, 4 * x.var)
    register_moment_map(Doubler, doubler_map)
    try:
        assert isinstance(find_map_for(Doubler), MapSpec)
        report = initlab.autoinit(Net(), torch.randn(8, 8), seed=0)
    finally:
        assert unregister_moment_map(Doubler).fn is doubler_map
    assert seen == ["block"]
    assert report.history[1]["input_var"] == pytest.approx(4.0)
    assert find_map_for(Doubler) is None


def find_map_for(module_type):
    gm = trace(nn.Sequential(module_type()), (module_type,))
    node = next(n for n in gm.graph.nodes if n.op == "call_module")
    return find_map(node, gm.get_submodule(str(node.target)))


def test_an_error_in_a_user_map_propagates_naming_the_layer_and_changes_nothing():
    def broken(ctx):
        raise RuntimeError("map failed")
    register_moment_map(Doubler, broken)
    model = Net()
    before = snapshot(model)
    try:
        with pytest.raises(RuntimeError, match="map failed") as info:
            initlab.autoinit(model, torch.randn(8, 8))
    finally:
        unregister_moment_map(Doubler)
    notes = " ".join(info.value.__notes__)
    assert "'block'" in notes and "Doubler" in notes and "unchanged" in notes
    assert_same(model, before)


def shifted_softsign(x):
    """A plain Python function the model calls by its global name."""
    if not isinstance(x, torch.Tensor):
        raise TypeError("traced into: fx handed it a proxy")
    return x / (1 + x.abs()) + 0.5


class UsesFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 64), nn.Linear(64, 64)

    def forward(self, x):
        return self.b(shifted_softsign(self.a(x)))


def test_register_elementwise_works_for_a_plain_function():
    model = UsesFunction()
    with pytest.raises(Exception, match="proxy"):   # without registration fx traces into it
        initlab.autoinit(model, torch.randn(8, 16), tracer="fx")
    initlab.register_elementwise(shifted_softsign)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, est = initlab.autoinit(model, torch.randn(8, 16), tracer="fx", seed=0,
                                      return_estimates=True)
    finally:
        unregister_moment_map(shifted_softsign)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        h = shifted_softsign(model.a(torch.randn(4096, 16, generator=g)))
    (name,) = [k for k in est if "softsign" in k]
    assert est[name][0] == pytest.approx(float(h.mean()), abs=0.02)
    assert est[name][1] == pytest.approx(float(h.var()), rel=0.05)


def test_an_elementwise_chain_on_one_tensor_is_one_function_of_it():
    class Swish(nn.Module):                  # SiLU written out: x and sigmoid(x) are dependent
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(32, 256)

        def forward(self, x):
            h = self.a(x)
            return h * torch.sigmoid(h)
    model = Swish()
    _, est = initlab.autoinit(model, torch.randn(8, 32), seed=0, return_estimates=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        y = model(torch.randn(4096, 32, generator=g))
    assert est["mul"][0] == pytest.approx(float(y.mean()), abs=0.01)
    assert est["mul"][1] == pytest.approx(float(y.var()), rel=0.05)


def test_register_moment_map_refuses_what_it_cannot_key():
    with pytest.raises(TypeError, match="nn.Module"):
        register_moment_map(int, lambda ctx: None)
    with pytest.raises(TypeError, match="layout"):
        register_moment_map("cumsum", None)
