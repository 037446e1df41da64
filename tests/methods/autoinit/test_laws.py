"""AutoInit's quadrature of elementwise functions against Monte Carlo."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from initlab.methods.autoinit.laws import expectation


def mc(t: torch.Tensor) -> tuple[float, float]:
    t = t.double()
    return float(t.mean()), float(t.var(unbiased=False))


@pytest.mark.parametrize("f", [torch.tanh, torch.relu, F.gelu, F.silu, torch.sigmoid,
                               nn.LeakyReLU(0.2), nn.ELU(), nn.Softplus()])
@pytest.mark.parametrize("mu,var", [(0.0, 1.0), (0.7, 0.3), (-0.5, 2.5)])
def test_quadrature_matches_monte_carlo(f, mu, var):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400_000, generator=g, dtype=torch.float64) * math.sqrt(var) + mu
    m_mc, v_mc = mc(f(z))
    t = torch.tensor([mu], dtype=torch.float64)
    m, second, *_ = expectation(lambda u: f(u).double(), t, torch.tensor([var]).double(),
                                torch.zeros(1, dtype=torch.float64), None, 64)
    assert float(m) == pytest.approx(m_mc, abs=8e-3 * (1 + abs(m_mc)))
    assert float(second - m ** 2) == pytest.approx(v_mc, rel=1e-2, abs=1e-4)


@pytest.mark.parametrize("f", [torch.tanh, torch.relu, F.silu])
def test_shared_part_through_a_nonlinearity_matches_monte_carlo(f):
    # X = mu + S + L per (sample, channel): S constant over positions, L fresh per position;
    # the shared part of f(X) is the variance over samples of its mean over positions
    g = torch.Generator().manual_seed(1)
    s = torch.randn(20000, 1, generator=g, dtype=torch.float64) * math.sqrt(0.6)
    loc = torch.randn(20000, 100, generator=g, dtype=torch.float64) * math.sqrt(0.9)
    y = f(0.3 + s + loc)
    m, second, _, shared, _ = expectation(f, torch.tensor([0.3]).double(),
                                          torch.tensor([1.5]).double(),
                                          torch.tensor([0.6]).double(), None, 64)
    assert float(second - m ** 2) == pytest.approx(float(y.var()), rel=0.02)
    noise = float(y.var(1).mean()) / y.shape[1]        # what the finite mean adds
    assert float(shared) == pytest.approx(float(y.mean(1).var()) - noise, abs=0.01)


def test_a_function_off_its_domain_takes_the_law_on_its_domain():
    # rsqrt of N(1, 0.3^2): the normal overhangs 0; the conditioned law is what remains
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2_000_000, generator=g, dtype=torch.float64) * 0.3 + 1.0
    y = torch.rsqrt(z[z > 0])
    m, second, *_ = expectation(torch.rsqrt, torch.tensor([1.0]).double(),
                                torch.tensor([0.09]).double(), torch.zeros(1).double(), None, 64)
    assert torch.isfinite(m) and float(m) == pytest.approx(float(y.mean()), rel=0.02)
