"""Tracing for the analytic methods: torch.fx first, torch.export folded back onto the model's
own modules (leaf calls as call_module nodes with their signature, parameters as get_attr)."""
import operator

import pytest
import torch
from torch import fx, nn

from initlab.core.graph import TraceError, run_graph, trace


class Mix(nn.Module):
    """A leaf with two tensor inputs and a keyword."""

    def forward(self, a, b, scale=1.0):
        return (a + 2 * b) * scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.mix, self.out = nn.Linear(4, 6), nn.Linear(4, 6), Mix(), nn.Linear(6, 2)

    def forward(self, x):
        if x.shape[-1] != 4:                 # fx cannot trace this; export can
            raise ValueError("4 features")
        return self.out(torch.relu(self.mix(self.a(x), self.b(x), scale=0.5)))


def test_export_folds_leaf_calls_back_onto_the_models_modules():
    model = Net()
    x = torch.randn(3, 4)
    with pytest.raises(TraceError, match="example input"):
        trace(model, (nn.Linear, Mix))
    gm = trace(model, (nn.Linear, Mix), example_input=x)
    calls = {str(n.target): n for n in gm.graph.nodes if n.op == "call_module"}
    assert set(calls) == {"a", "b", "mix", "out"}
    assert gm.get_submodule("mix") is model.mix and gm.get_submodule("out") is model.out
    mix = calls["mix"]                      # the call's own signature: (a, b), scale=0.5
    assert [a.target for a in mix.args] == ["a", "b"] and mix.kwargs == {"scale": 0.5}
    with torch.no_grad():
        (y,) = gm(x)                         # export's outputs come flattened
        assert torch.allclose(y, model(x))
    run = run_graph(gm, x)
    assert run.shapes["mix"] == (3, 6) and run.shapes["out"] == (3, 2)


def test_fx_keeps_registered_plain_functions_whole():
    def twice(t):
        return 2 * t
    model = nn.Sequential(nn.Linear(2, 2))
    gm = trace(model, autowrap=(twice,))
    assert all(n.target is not operator.mul for n in gm.graph.nodes)
    assert isinstance(gm, fx.GraphModule) and gm.get_submodule("0") is model[0]


def test_bad_leaf_specs_and_tracers_are_refused():
    with pytest.raises(TypeError, match="leaf_modules"):
        trace(nn.Linear(2, 2), (3,))
    with pytest.raises(ValueError, match="tracer"):
        trace(nn.Linear(2, 2), tracer="jit")
