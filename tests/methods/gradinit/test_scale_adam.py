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


# ---- both optimizers against a loop over plain Python floats, one scale at a time ---------------

def hand_adam(events, n, lr, floors, caps, clip, log_scale, start=None, betas=(0.9, 0.999),
              eps=1e-8):
    """The authors' RescaleAdam (log_scale=False) or Adam on beta = log alpha, scalar by scalar:
    separate first moments and step counts for constraint and objective steps, one second moment
    bias-corrected with the total count; additive: clip the gradient, skip a scale at 0;
    log: d/dbeta = alpha * d/dalpha. Then clamp to [floor, cap]. `events`: (grad, active,
    constraint, lr or None). Yields (alphas, states) after each event."""
    b1, b2 = betas
    alpha = list(start or [1.0] * n)
    st = [dict(m={True: 0.0, False: 0.0}, k={True: 0, False: 0}, v=0.0) for _ in range(n)]
    for grad, active, constraint, new_lr in events:
        lr = new_lr or lr
        for i in range(n):
            if not active[i] or (not log_scale and alpha[i] == 0.0):
                continue
            s, g = st[i], grad[i]
            if log_scale:
                g = g * alpha[i]
            elif clip:
                g = max(-clip, min(clip, g))
            s["k"][constraint] += 1
            s["m"][constraint] = b1 * s["m"][constraint] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            bc1 = 1 - b1 ** s["k"][constraint]
            bc2 = 1 - b2 ** (s["k"][True] + s["k"][False])
            step = lr / bc1 * s["m"][constraint] / (math.sqrt(s["v"] / bc2) + eps)
            if log_scale:
                beta = math.log(alpha[i]) - step
                beta = min(max(beta, math.log(floors[i]) if floors[i] > 0 else -math.inf),
                           math.log(caps[i]))
                alpha[i] = math.exp(beta)
            else:
                alpha[i] = min(max(alpha[i] - step, floors[i]), caps[i])
        yield list(alpha), st


def events_for(n, seed):
    """14 steps: constraint and objective steps mixed, some scales inactive, gradients from
    tiny to far beyond the clip, a strong push down (floors, a bias to 0) and up (a cap)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(14):
        grad = (torch.randn(n, generator=g, dtype=torch.float64) * 3.0 ** (t % 3 - 1)).tolist()
        if t in (2, 3, 4):
            grad = [8.0, 8.0, 6.0, -9.0, 0.5][:n]          # push down 0-2, up 3
        active = (torch.rand(n, generator=g) > 0.25).tolist()
        if t == 0:
            active = [True] * n
        out.append((grad, active, t % 3 == 1, 0.05 if t == 9 else None))
    return out


def same_moments(opt, st):
    for name, key in (("m_con", True), ("m_obj", False)):
        torch.testing.assert_close(getattr(opt, name), torch.tensor([s["m"][key] for s in st], **F64),
                                   rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(opt.v, torch.tensor([s["v"] for s in st], **F64), rtol=1e-12, atol=0)


def given(betas):
    """The optimizers' own default betas (Adam's) are left to them, so the default is tested."""
    return {} if betas == (0.9, 0.999) else dict(betas=betas)


FLOORS, CAPS = [0.01, 0.0, 0.7, 0.01, 0.01], [math.inf, math.inf, math.inf, 1.25, 2.0]


@pytest.mark.parametrize("clip,betas", [(1.0, (0.9, 0.999)), (None, (0.9, 0.999)),
                                        (0.0, (0.9, 0.999)), (1.0, (0.5, 0.3))])
def test_scale_adam_is_the_authors_rescale_adam_scalar_by_scalar(clip, betas):
    # beta2 = 0.3: 1 - b2 and 1 % b2 agree only for b2 > 0.5
    events = events_for(5, seed=1)
    opt = ScaleAdam(5, 0.3, torch.tensor(FLOORS, **F64), torch.tensor(CAPS, **F64), clip=clip,
                    **given(betas))
    seen = []
    for (grad, active, constraint, new_lr), (want, st) in zip(
            events, hand_adam(events, 5, 0.3, FLOORS, CAPS, clip, log_scale=False, betas=betas)):
        opt.lr = new_lr or opt.lr
        opt.step(torch.tensor(grad, **F64), torch.tensor(active), constraint)
        torch.testing.assert_close(opt.alpha, torch.tensor(want, **F64), rtol=1e-12, atol=1e-15)
        same_moments(opt, st)
        seen.append(want)
    # the run reached every case the loop distinguishes: a bias at 0, a floor, a cap
    assert seen[-1][1] == 0.0 and any(a[2] == 0.7 for a in seen) and any(a[3] == 1.25 for a in seen)


def test_scale_adam_state_dict_is_a_copy_of_every_field():
    opt = ScaleAdam(2, 0.1, torch.tensor([0.01, 0.0], **F64), torch.tensor([5.0, 5.0], **F64))
    opt.step(torch.tensor([0.5, -2.0], **F64), torch.tensor([True, True]), constraint=True)
    state = opt.state_dict()
    assert set(state) >= {"alpha", "m_con", "m_obj", "v", "steps_con", "steps_obj", "lr"}
    assert state["lr"] == 0.1 and state["steps_con"].tolist() == [1.0, 1.0]
    assert state["m_con"].tolist() == pytest.approx([0.05, -0.1])  # clipped at 1: -2 -> -1
    state["alpha"].zero_()
    assert opt.alpha.tolist() != [0.0, 0.0]


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.3)])
def test_log_scale_adam_is_adam_on_log_scales_scalar_by_scalar(betas):
    events = events_for(5, seed=2)
    start = [1.0, 0.5, 0.8, 1.1, 3.0]  # the last above its cap: clamped at the start
    opt = LogScaleAdam(torch.tensor(start, **F64), 0.3, torch.tensor(FLOORS, **F64),
                       torch.tensor(CAPS, **F64), **given(betas))
    assert opt.alpha[4].item() == pytest.approx(2.0)
    seen = []
    for (grad, active, constraint, new_lr), (want, st) in zip(
            events, hand_adam(events, 5, 0.3, FLOORS, CAPS, None, log_scale=True,
                              start=[1.0, 0.5, 0.8, 1.1, 2.0], betas=betas)):
        opt.lr = new_lr or opt.lr
        opt.step(torch.tensor(grad, **F64), torch.tensor(active), constraint)
        torch.testing.assert_close(opt.alpha, torch.tensor(want, **F64), rtol=1e-12, atol=0)
        same_moments(opt, st)
        seen.append(want)
    assert any(a[2] == pytest.approx(0.7) for a in seen)
    assert any(a[3] == pytest.approx(1.25) for a in seen) and 0 < seen[-1][1] < 0.5


def test_caps_and_floors_by_hand():
    floors, caps = caps_and_floors([False, True, False, True], [False, False, True, False],
                                   0.05, 10.0, 3.0)
    assert floors.tolist() == [0.05, 0.0, 0.05, 0.0] and floors.dtype == torch.float64
    assert caps.tolist() == [10.0, 10.0, 3.0, 10.0] and caps.dtype == torch.float64
    _, caps = caps_and_floors([False, False], [True, False], 0.01, 2.0, 30.0)
    assert caps.tolist() == [2.0, 2.0]                      # the smaller cap wins
    _, caps = caps_and_floors([False, False], [True, False], 0.01, None, 100.0)
    assert caps.tolist() == [100.0, math.inf]
    _, caps = caps_and_floors([False], [True], 0.01, None, None)
    assert caps.tolist() == [math.inf]
