"""`default` keeps the constructor's init; `torch-default` re-draws PyTorch's layer init."""
import math

import pytest
import torch
from torch import nn

import initlab


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3)
        self.bn = nn.BatchNorm2d(64)
        self.fc = nn.Linear(256, 10)
        self.gain = nn.Parameter(torch.full((), 2.0))  # the module's own parameter: kept
        with torch.no_grad():                          # a constructor init of its own
            for p in (self.conv.weight, self.conv.bias, self.fc.weight, self.fc.bias):
                p.fill_(0.5)
            self.bn.weight.fill_(3.0)
            self.bn.running_mean.fill_(1.0)


def test_default_keeps_the_constructor_init():
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    initlab.initialize(net, "default")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_torch_default_redraws_pytorchs_layer_init():
    net = Net()
    initlab.initialize(net, "torch-default")
    # Kaiming-uniform with a = sqrt(5): bound = 1 / sqrt(fan_in); biases the same bound
    for layer, fan_in in ((net.conv, 27), (net.fc, 256)):
        bound = 1 / math.sqrt(fan_in)
        for p in (layer.weight, layer.bias):
            assert p.abs().max().item() <= bound
            assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)
    assert torch.all(net.bn.weight == 1) and torch.all(net.bn.running_mean == 0)
    assert net.gain.item() == 2.0


def test_torch_default_seed_repeats_and_leaves_the_global_generator():
    a, b = Net(), Net()
    state = torch.get_rng_state()
    initlab.initialize(a, "torch-default", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    initlab.initialize(b, "torch-default", seed=3)
    assert torch.equal(a.conv.weight, b.conv.weight)


def test_torch_default_failure_leaves_the_model_unchanged(monkeypatch):
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def broken():
        raise RuntimeError("broken layer")
    monkeypatch.setattr(net.conv, "reset_parameters", broken)  # runs after fc and bn were reset
    with pytest.raises(RuntimeError, match="broken layer"):
        initlab.initialize(net, "torch-default")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="reset_parameters"):
        initlab.initialize(nn.ReLU(), "torch-default")
