"""Shared by the AutoInit map tests: predicted statistics of every output against Monte Carlo."""
import math

import pytest
import torch
from torch import nn

import initlab


def check_outputs(model: nn.Module, shape: tuple, names: list, mu: float = 0.4,
                  var: float = 1.7, rel: float = 0.05, n: int = 4000) -> None:
    """Run AutoInit on `model` (its outputs a tuple, one per name) with i.i.d. normal inputs of
    mean `mu` and variance `var`, and compare each output's predicted (mean, variance) with
    the same model on `n` such inputs."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64) * math.sqrt(var) + mu
    model = model.double()
    _, est = initlab.autoinit(model, x[:8], input_moments=(mu, var), return_estimates=True,
                              seed=0)
    with torch.no_grad():
        outs = model(x)
    for name, out in zip(names, outs):
        m, v = float(out.mean()), float(out.var(unbiased=False))
        got = est[name]
        assert got[0] == pytest.approx(m, abs=0.03 * (1 + abs(m))), (name, got, m)
        assert got[1] == pytest.approx(v, rel=rel, abs=1e-4), (name, got, v)
