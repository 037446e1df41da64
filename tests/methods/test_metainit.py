"""MetaInit: its gradient quotient against an explicit Hessian, its update, and its guarantees."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import initlab
from helpers.methods import (
    FAILURE_CASES,
    assert_same,
    batches,
    bn_dropout_mlp,
    failure_case,
    mlp,
    snapshot,
)
from initlab.methods.metainit import gradient_quotient, metainit

# ---- brute force: GQ from the formula, with H from torch.autograd.functional.hessian ----------

def flat_loss(model, names, shapes, batch):
    x, y = batch
    sizes = [torch.Size(s).numel() for s in shapes]

    def f(theta):
        parts = [t.reshape(s) for t, s in zip(theta.split(sizes), shapes)]
        return F.cross_entropy(functional_call(model, dict(zip(names, parts)), (x,)), y)
    return f


def brute_gq(model, batch, eps=1e-5, scale_first=1.0):
    names = [n for n, _ in model.named_parameters()]
    ps = [p.detach() for _, p in model.named_parameters()]
    ps[0] = ps[0] * scale_first
    shapes = [p.shape for p in ps]
    theta = torch.cat([p.reshape(-1) for p in ps])
    f = flat_loss(model, names, shapes, batch)
    g = torch.autograd.functional.jacobian(f, theta)
    H = torch.autograd.functional.hessian(f, theta)
    Hg = H @ g
    sign = torch.where(g >= 0, 1.0, -1.0).double()
    return ((g - Hg) / (g + eps * sign) - 1).abs().mean()


def our_gq(model, batch, eps=1e-5):
    leaves = [p.detach().clone().requires_grad_() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    x, y = batch
    loss = F.cross_entropy(functional_call(model, dict(zip(names, leaves)), (x,)), y)
    return gradient_quotient(loss, leaves, eps), leaves


def test_gradient_quotient_equals_explicit_hessian():
    torch.manual_seed(3)
    model = mlp((3, 5, 4, 2), dtype=torch.float64)
    batch = batches(1, size=7, features=3, classes=2, dtype=torch.float64)[0]
    gq, _ = our_gq(model, batch)
    torch.testing.assert_close(gq, brute_gq(model, batch), rtol=1e-10, atol=1e-12)


def test_gq_gradient_along_a_weight_matches_finite_differences():
    # <W, dGQ/dW> is the derivative of GQ(s W) at s = 1: MetaInit's update direction.
    torch.manual_seed(4)
    model = mlp((3, 5, 2), dtype=torch.float64)
    batch = batches(1, size=6, features=3, classes=2, dtype=torch.float64)[0]
    gq, leaves = our_gq(model, batch)
    (dw,) = torch.autograd.grad(gq, leaves[0])
    ours = torch.vdot(leaves[0].detach().reshape(-1), dw.reshape(-1))
    h = 1e-6
    fd = (brute_gq(model, batch, scale_first=1 + h)
          - brute_gq(model, batch, scale_first=1 - h)) / (2 * h)
    torch.testing.assert_close(ours, fd, rtol=1e-4, atol=1e-8)


def test_one_step_is_sign_momentum_on_the_norm():
    torch.manual_seed(5)
    model = mlp((3, 5, 2), dtype=torch.float64)
    batch = batches(1, size=6, features=3, classes=2, dtype=torch.float64)[0]
    w0 = [p.detach().clone() for p in model.parameters()]
    h = 1e-6
    sign = torch.sign(brute_gq(model, batch, scale_first=1 + h)
                      - brute_gq(model, batch, scale_first=1 - h))
    report = metainit(model, [batch], steps=1, lr=0.1)
    norm0 = w0[0].norm()
    expected = (norm0 - 0.1 * sign) / norm0          # m1 = -lr * d, |W| <- |W| + m1
    assert report.scales["0.weight"] == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(model[0].weight.detach(), w0[0] * expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(model[0].bias.detach(), w0[1], rtol=0, atol=0)  # 1-dim: untouched


def gq_at_scales(model, batch, scales, eps=1e-5):
    """GQ from the formula (explicit Hessian) with parameter k multiplied by scales[k]."""
    names = [n for n, _ in model.named_parameters()]
    ps = [p.detach() * s for p, s in zip(model.parameters(), scales)]
    theta = torch.cat([p.reshape(-1) for p in ps])
    f = flat_loss(model, names, [p.shape for p in ps], batch)
    g = torch.autograd.functional.jacobian(f, theta)
    Hg = torch.autograd.functional.hessian(f, theta) @ g
    sign = torch.where(g >= 0, 1.0, -1.0).double()
    return ((g - Hg) / (g + eps * sign) - 1).abs().mean()


def reference_metainit(model, batch, steps, lr, momentum, min_scale=0.01, h=1e-6):
    """The paper's update written as a loop over tensors: d = sign(d GQ(s W) / ds) by central
    differences, m <- momentum * m - lr * d, |W| <- max(|W| + m, min_scale |W0|)."""
    params = list(model.parameters())
    tuned = [k for k, p in enumerate(params) if p.dim() >= 2]
    norm0 = [p.detach().norm().item() for p in params]
    norm, mem = list(norm0), [0.0] * len(params)
    for _ in range(steps):
        scales = [n / n0 for n, n0 in zip(norm, norm0)]
        d = {}
        for k in tuned:
            up, down = list(scales), list(scales)
            up[k], down[k] = scales[k] * (1 + h), scales[k] * (1 - h)
            slope = (gq_at_scales(model, batch, up) - gq_at_scales(model, batch, down)).item()
            assert abs(slope) > 1e-9 * h, "a direction too close to 0 to take its sign"
            d[k] = 1.0 if slope > 0 else -1.0
        for k in tuned:
            mem[k] = momentum * mem[k] - lr * d[k]
            norm[k] = max(norm[k] + mem[k], min_scale * norm0[k])
    return {k: norm[k] / norm0[k] for k in tuned}


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_several_steps_follow_the_momentum_recursion(momentum):
    """Steps > 1, where the momentum term matters: against a loop over tensors with the
    direction's sign from finite differences of the explicit-Hessian GQ."""
    torch.manual_seed(6)
    model = mlp((3, 5, 2), dtype=torch.float64)
    batch = batches(1, size=6, features=3, classes=2, dtype=torch.float64)[0]
    want = reference_metainit(copy.deepcopy(model), batch, steps=5, lr=0.05, momentum=momentum)
    no_momentum = reference_metainit(copy.deepcopy(model), batch, steps=5, lr=0.05, momentum=0.0)
    report = metainit(model, [batch], steps=5, lr=0.05, momentum=momentum)
    got = {k: report.scales[n] for k, (n, _) in enumerate(model.named_parameters())
           if n in report.scales}
    assert got.keys() == want.keys() == {0, 2}
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k
    assert any(abs(want[k] - no_momentum[k]) > 0.01 for k in want)  # momentum changed the path


def held_out_gq(model, n=6):
    g = torch.Generator().manual_seed(123)
    total = 0.0
    for _ in range(n):
        x, y = torch.randn(64, 10, generator=g), torch.randint(0, 4, (64,), generator=g)
        leaves = [p.detach().clone().requires_grad_() for p in model.parameters()]
        names = [k for k, _ in model.named_parameters()]
        loss = F.cross_entropy(functional_call(model, dict(zip(names, leaves)), (x,)), y)
        total += gradient_quotient(loss, leaves).item()
    return total / n


def test_lowers_the_gradient_quotient_of_an_exploding_relu_net():
    torch.manual_seed(0)
    model = mlp((10, 32, 32, 32, 4), act=nn.ReLU)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    before = held_out_gq(model)
    report = metainit(model, data_free=True, input_shape=(64, 10), num_classes=4, steps=40, seed=0)
    after = held_out_gq(model)
    assert after < 0.25 * before, (before, after)
    assert all(s < 1 for s in report.scales.values())  # exploding: every norm came down
    assert len(report.history) == 40 and set(report.history[0]) == {"iteration", "gq", "loss"}


def test_data_free_is_seeded_and_report_replays():
    a = mlp((10, 16, 4))
    b, fresh = copy.deepcopy(a), copy.deepcopy(a)
    kw = dict(data_free=True, input_shape=(16, 10), num_classes=4, steps=5, seed=7)
    ra = initlab.initialize(a, "metainit", **kw)
    rb = metainit(b, **kw)
    assert ra.scales == rb.scales
    assert set(ra.scales) == {"0.weight", "2.weight"}  # only >= 2-dim tensors are tuned
    initlab.apply(fresh, ra)
    for p, q in zip(a.parameters(), fresh.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_leaves_modes_and_buffers_as_they_were():
    model = bn_dropout_mlp()
    before = snapshot(model)
    metainit(model, batches(3), steps=3)
    assert_same(model, before, params=False)
    assert not torch.equal(model[0].weight, before["params"]["0.weight"])


@pytest.mark.parametrize("case", FAILURE_CASES)
def test_failure_leaves_model_bitwise_unchanged(case):
    model = bn_dropout_mlp()
    data, loss_fn, err = failure_case(case, batches(4), raise_after=3)
    before = snapshot(model)
    with pytest.raises(err):
        metainit(model, data, loss_fn=loss_fn, steps=6)
    assert_same(model, before)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_mid_run_leaves_model_bitwise_unchanged(exc):
    """Ctrl-C (or an error) from a forward hook at iteration 4 of 6."""
    model = bn_dropout_mlp()
    calls = []

    def hook(module, args, out):
        calls.append(1)
        if len(calls) == 4:
            raise exc("stopped by the user")

    handle = model[4].register_forward_hook(hook)
    before = snapshot(model)
    with pytest.raises(exc):
        metainit(model, batches(4), steps=6)
    handle.remove()
    assert len(calls) == 4
    assert_same(model, before)


def test_refuses_bad_settings_and_missing_data():
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="data_free"):
        metainit(model, None)
    with pytest.raises(ValueError, match="input_shape"):
        metainit(model, data_free=True, num_classes=3)
    with pytest.raises(ValueError, match="momentum"):
        metainit(model, batches(1), momentum=1.5)
    with pytest.raises(ValueError, match=">= 2 dims"):
        metainit(model, batches(1), params=r"bias")
    assert_same(model, before)


def test_data_and_data_free_together_says_what_is_wrong():
    model = mlp((10, 16, 4))
    before = snapshot(model)
    with pytest.raises(ValueError, match="got both data= and data_free=True: with data, drop "
                                         "data_free=True"):
        metainit(model, batches(2, features=10, classes=4), data_free=True)
    with pytest.raises(ValueError, match="needs data=<iterable of batches>, or data_free=True"):
        metainit(model)
    assert_same(model, before)
