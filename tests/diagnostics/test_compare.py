"""Before/after: a method tried on a copy, and diagnoses side by side."""
import pytest
import torch
from torch import nn

import initlab
from helpers.methods import assert_same, batches, snapshot
from initlab.diagnostics import compare, compare_method, diagnose


def deep_default_mlp(depth: int = 8) -> nn.Sequential:
    """PyTorch's default init on a deep ReLU MLP: the signal shrinks ~2.4x per layer."""
    torch.manual_seed(0)
    layers = [nn.Linear(6, 32), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(32, 3))


def test_kaiming_on_a_copy_removes_the_vanishing_finding_and_leaves_the_model():
    model, data = deep_default_mlp(), batches(4, size=64)
    before, rng = snapshot(model), torch.get_rng_state()
    c = compare_method(model, data, "kaiming", lr=0.1)
    assert_same(model, before)
    assert torch.equal(torch.get_rng_state(), rng)
    first, after = c.diagnoses
    assert (first.label, after.label) == ("before", "kaiming")
    assert any(f.kind == "vanish" and f.where and f.where[0] == "0" for f in first.findings)
    assert not any(f.kind == "vanish" and f.where and f.where[0] == "0" for f in after.findings)
    assert after.layers[-1].spread > 100 * first.layers[-1].spread
    text = c.summary()
    assert "before" in text and "kaiming" in text and "gain per weighted layer" in text


def test_a_method_that_learns_from_data_gets_it_with_its_settings():
    model, data = deep_default_mlp(4), batches(4, size=32)
    before = snapshot(model)
    c = compare_method(model, data, "kaiming+gradinit", lr=0.1,
                       method_settings={"gradinit": {"steps": 3, "lr": 0.1}})
    assert_same(model, before)
    weights = [t.weight_rms for t in c.diagnoses[1].tensors]
    kaiming = compare_method(model, data, "kaiming", lr=0.1).diagnoses[1]
    assert weights != [t.weight_rms for t in kaiming.tensors]  # GradInit moved the scales


def test_compare_refuses_different_architectures():
    a = diagnose(deep_default_mlp(4), batches(3), lr=0.1)
    b = diagnose(deep_default_mlp(5), batches(3), lr=0.1)
    with pytest.raises(ValueError, match="different architectures"):
        compare(a, b)
    assert len(compare(a, a, a).diagnoses) == 3


def test_an_unknown_method_is_named():
    with pytest.raises(KeyError, match="unknown initialization method 'kaimin'"):
        initlab.diagnostics.compare_method(deep_default_mlp(3), batches(3), "kaimin", lr=0.1)
