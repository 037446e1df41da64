"""initlab.gradinit against an independent, authors'-style implementation (gradinit_reference).

The issue's contract: same model, batches and settings -> scales within 1e-3 relative, for SGD
and Adam targets, with and without batch norm, with and without constraint steps.
"""
import copy

import pytest
import torch
from torch import nn

import initlab
from gradinit_reference import reference_gradinit


def small_cnn(bn: bool) -> nn.Module:
    # A conv bias right before batch norm has a gradient of pure round-off (BN removes the
    # mean), which Adam on its scale amplifies into noise: as in the authors' models, no bias there.
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=not bn), norm(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, bias=not bn), norm(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
    )


def batches(n=7, size=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 5, (size,), generator=g))
            for _ in range(n)]


# "obj": gamma so large that every step is an objective step; "mix": both branches.
CASES = [(t, bn, mode) for t in ("sgd", "adam") for bn in (False, True) for mode in ("obj", "mix")]


@pytest.mark.parametrize("target,bn,mode", CASES)
@pytest.mark.parametrize("overlap", [True, False])
def test_matches_reference(target, bn, mode, overlap):
    torch.manual_seed(3)
    model = small_cnn(bn)
    data = batches()
    settings = dict(target=target, lr=0.1 if target == "sgd" else 1e-3, steps=16,
                    scale_lr=0.05, normalize_grad=True, min_scale=0.01, clip=1.0, overlap=overlap)
    gamma = 1e30
    if mode == "mix":  # a bound slightly under the first gradient norm: constraint steps first
        probe = initlab.gradinit(copy.deepcopy(model), data, **{**settings, "steps": 1,
                                                                "gamma": 1e30})
        gamma = 0.9 * probe.history[0]["grad_norm"]
    ref = reference_gradinit(model, data, gamma=gamma, **settings)
    report = initlab.gradinit(model, data, gamma=gamma, **settings)
    branches = {h["branch"] for h in report.history}
    if mode == "mix":
        assert branches == {"objective", "constraint"}, branches
    else:
        assert branches == {"objective"}
    for name, scale in report.scales.items():
        expected = ref.reference_scales[name]
        assert scale == pytest.approx(expected, rel=1e-3, abs=1e-6), name
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-6, msg=name)
