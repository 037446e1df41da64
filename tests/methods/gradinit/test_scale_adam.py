"""The scales' optimizers: the default search's log-scale Adam against its closed form, and why
it reaches any factor where the authors' additive steps cannot."""
import math

import pytest
import torch

from initlab.methods.gradinit import ScaleAdam
from initlab.methods.gradinit.scale_adam import LogScaleAdam, caps_and_floors

F64 = dict(dtype=torch.float64)


def log_adam(n=3, lr=0.1, floors=(0.01, 0.0, 0.01), caps=(math.inf,) * 3, start=(1.0, 1.0, 1.0)):
    return LogScaleAdam(torch.tensor(start, **F64), lr, torch.tensor(floors[:n], **F64),
                        torch.tensor(caps[:n], **F64))


def test_constant_gradient_moves_log_scales_by_lr_per_step():
    # Adam on a constant gradient in log-scale (d/dbeta = alpha * d/dalpha): bias-corrected
    # moments m = g, v = g^2, so each step is lr * sign(g) (up to eps), whatever |g| and
    # whatever the scale's size.
    opt = log_adam(start=(1.0, 0.5, 4.0))
    g_beta = torch.tensor([-0.3, -1e-3, 5.0], **F64)
    for _ in range(20):
        opt.step(g_beta / opt.alpha, torch.ones(3, dtype=torch.bool), False)
    want = torch.tensor([1.0 * math.exp(2.0), 0.5 * math.exp(2.0), 4.0 * math.exp(-2.0)], **F64)
    torch.testing.assert_close(opt.alpha, want, rtol=1e-4, atol=0)  # eps: 1e-8 next to |g| = 1e-3


def test_additive_steps_cannot_reach_a_factor_of_2_5_in_the_same_budget():
    floors, caps = caps_and_floors([False], [False], 0.01, None, None)
    additive = ScaleAdam(1, 0.1, floors, caps, clip=1.0)
    multiplicative = log_adam(n=1, floors=(0.01,), caps=(math.inf,), start=(1.0,))
    for _ in range(10):
        for opt in (additive, multiplicative):
            opt.step(torch.tensor([-1.0], **F64), torch.ones(1, dtype=torch.bool), False)
    assert additive.alpha.item() == pytest.approx(2.0, rel=1e-6)  # 1 + 10 * 0.1 at most
    assert multiplicative.alpha.item() >= math.e                 # at least e^(10 * 0.1)


def test_gradient_in_log_space_and_moments_kept_apart():
    opt = log_adam(n=1, floors=(0.01,), caps=(math.inf,), start=(2.0,))
    opt.step(torch.tensor([0.5], **F64), torch.ones(1, dtype=torch.bool), constraint=True)
    # d/dbeta = alpha * d/dalpha = 1.0: only the constraint moment and the shared second moment
    assert opt.m_con.item() == pytest.approx(0.1 * 1.0)
    assert opt.m_obj.item() == 0.0 and opt.v.item() == pytest.approx(0.001 * 1.0)
    assert opt.alpha.item() == pytest.approx(2.0 * math.exp(-0.1), rel=1e-6)


def test_floors_caps_and_inactive_scales():
    opt = log_adam(floors=(0.5, 0.0, 0.01), caps=(math.inf, math.inf, 1.2))
    active = torch.tensor([True, True, False])
    for _ in range(30):
        opt.step(torch.tensor([1.0, 1.0, -1.0], **F64), active, False)
    assert opt.alpha[0].item() == pytest.approx(0.5)            # held at its floor
    assert 0 < opt.alpha[1].item() < 0.2                         # a bias: no floor, still > 0
    assert opt.alpha[2].item() == 1.0                            # inactive: untouched
    opt.step(torch.tensor([0.0, 0.0, -1.0], **F64), torch.ones(3, dtype=torch.bool), False)
    assert opt.alpha[2].item() <= 1.2 + 1e-12                    # capped
