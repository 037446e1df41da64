"""GradInit's scale gradients against finite differences, and whole searches against an
independent, authors'-style implementation (helpers/gradinit_reference.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import initlab
from helpers.gradinit_reference import reference_gradinit
from initlab.core.loss import default_loss
from initlab.core.params import trainable_params
from initlab.methods.gradinit import GradInitConfig, GradInitSearch


def mlp64() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()


def made(text: str) -> str:
    """`text` built at run time, as a CLI or a config file gives it (not an interned literal:
    settings must be compared by value, not identity)."""
    return "".join(list(text))


def pair(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


# ---- independent computations of J(alpha) and N(g(alpha)), straight from the formulas ----------

def loss_at(model, names, tensors, batch):
    x, y = batch
    return F.cross_entropy(functional_call(model, dict(zip(names, tensors)), (x,)), y)


def first_grad(model, names, w0, alpha, S, create_graph):
    ps = [a * w for a, w in zip(alpha, w0)]
    if not create_graph:
        ps = [p.detach().requires_grad_() for p in ps]
    return ps, torch.autograd.grad(loss_at(model, names, ps, S), ps, create_graph=create_graph)


def direction(gs, target, normalize):
    if target == "adam":
        return [g.sign() for g in gs]
    if normalize:
        n = torch.sqrt(sum((g * g).sum() for g in gs))
        return [g / n for g in gs]
    return gs


@pytest.mark.parametrize("target,normalize,second_order", [
    ("sgd", True, False), ("sgd", False, False), ("adam", False, False),
    ("sgd", True, True), ("sgd", False, True),
])
def test_objective_gradient_matches_finite_differences(target, normalize, second_order):
    model = mlp64()
    specs = trainable_params(model)
    names, w0 = [s.name for s in specs], [s.param.detach() for s in specs]
    S, S_tilde = pair(seed=1), pair(seed=2)
    lr = 0.3 if target == "sgd" else 0.01
    cfg = GradInitConfig(target=made(target), lr=lr, normalize_grad=normalize,
                         second_order=second_order)
    search = GradInitSearch(model, specs, default_loss, cfg)
    alpha = torch.tensor([0.8, 1.3, 0.6, 1.1], dtype=torch.float64)
    first = search.first_pass(alpha, S, graph=second_order)
    got, _, _ = search.objective_grad(first, S_tilde)

    _, g_fixed = first_grad(model, names, w0, alpha, S, create_graph=False)
    A_fixed = direction(g_fixed, target, normalize)

    def J(a):
        if second_order:  # the step direction moves with alpha
            ps, gs = first_grad(model, names, w0, a, S, create_graph=True)
            A = direction(gs, target, normalize)
        else:  # the authors' stop-gradient: A is a constant
            ps, A = [ai * w for ai, w in zip(a, w0)], A_fixed
        return loss_at(model, names, [p - lr * d for p, d in zip(ps, A)], S_tilde) / lr

    h = 1e-6
    fd = torch.stack([(J(alpha + h * e) - J(alpha - h * e)) / (2 * h)
                      for e in torch.eye(len(alpha), dtype=torch.float64)]).detach()
    torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-8)
    if target == "sgd" and not second_order:  # the two orders really differ
        first2 = search.first_pass(alpha, S, graph=True)
        search.cfg.second_order = True  # the settings the search holds (defaults resolved)
        other, _, _ = search.objective_grad(first2, S_tilde)
        assert not torch.allclose(other, got, rtol=1e-4)


@pytest.mark.parametrize("target", ["sgd", "adam"])
def test_constraint_gradient_matches_finite_differences(target):
    model = mlp64()
    specs = trainable_params(model)
    names, w0 = [s.name for s in specs], [s.param.detach() for s in specs]
    S = pair(seed=3)
    search = GradInitSearch(model, specs, default_loss, GradInitConfig(target=made(target)))
    alpha = torch.tensor([1.2, 0.7, 0.9, 1.4], dtype=torch.float64)
    got = search.constraint_grad(search.first_pass(alpha, S, graph=True))

    def N(a):
        _, gs = first_grad(model, names, w0, a, S, create_graph=False)
        if target == "adam":
            return sum(g.abs().sum() for g in gs)
        return torch.sqrt(sum((g * g).sum() for g in gs))

    h = 1e-6
    fd = torch.stack([(N(alpha + h * e) - N(alpha - h * e)) / (2 * h)
                      for e in torch.eye(len(alpha), dtype=torch.float64)])
    torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("target,want", [("sgd", 30 ** 0.5), ("adam", 10.0)])
@pytest.mark.parametrize("graph", [False, True])
def test_gradient_norm_is_l2_for_sgd_and_l1_for_adam(target, want, graph):
    model = mlp64()
    search = GradInitSearch(model, trainable_params(model), default_loss,
                            GradInitConfig(target=made(target)))
    gs = [torch.tensor([3.0, -4.0], dtype=torch.float64), torch.tensor([[1.0, -2.0]])]
    assert search.norm(gs, graph).item() == pytest.approx(want, rel=1e-12)


# ---- whole searches against the reference implementation --------------------------------------

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
                    scale_lr=0.05, normalize_grad=True, min_scale=0.01, clip=1.0, overlap=overlap,
                    faithful=True)
    gamma = 1e30
    if mode == "mix":  # a bound slightly under the first gradient norm: constraint steps first
        probe = initlab.gradinit(copy.deepcopy(model), data, **{**settings, "steps": 1,
                                                                "gamma": 1e30})
        gamma = 0.9 * probe.history[0]["grad_norm"]
    ref = reference_gradinit(model, data, gamma=gamma, **{k: v for k, v in settings.items()
                                                           if k != "faithful"})
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
