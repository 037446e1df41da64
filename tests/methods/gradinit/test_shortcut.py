"""The constraint step's shortcut for Linear/Conv weights (methods/gradinit/shortcut.py): the same
scale gradient as finite differences and as the plain route, 7 convolutions per layer instead of
9, safe fallbacks."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import initlab
from initlab.core.loss import Substituted, default_loss
from initlab.core.params import trainable_params
from initlab.lab.models import ResNet
from initlab.methods.gradinit import GradInitConfig, GradInitSearch


class Mixed(nn.Module):
    """Every case the shortcut handles: bias-free conv followed by an in-place op, stride,
    dilation and groups, Conv1d, a Linear on 3-D input called twice, a plain Linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2)
        self.c3 = nn.Conv1d(4, 3, 2)
        self.shared = nn.Linear(3, 3)
        self.head = nn.Linear(15 * 3, 5)

    def forward(self, x):                        # (N, 2, 7, 7)
        h = self.c1(x).tanh_()                   # in place on the conv's output
        h = torch.tanh(self.c2(h)).flatten(2)    # (N, 4, 16)
        h = torch.tanh(self.c3(h)).transpose(1, 2)  # (N, 15, 3)
        h = self.shared(torch.tanh(self.shared(h)))
        return self.head(h.flatten(1))


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 2, 7, 7, generator=g, dtype=torch.float64),
            torch.randint(0, 5, (n,), generator=g))


def search_for(model, target="sgd", loss_fn=default_loss, fast=True):
    specs = trainable_params(model)
    cfg = GradInitConfig(target=target, fast_constraint=fast)
    return GradInitSearch(model, specs, loss_fn, cfg), specs


def N_fd(model, specs, loss_fn, alpha, S, target, h=1e-6):
    """Central differences of N(g(alpha)), g from scratch with p = alpha * w (no shortcut)."""
    names, w0 = [s.name for s in specs], [s.param.detach() for s in specs]

    def N(a):
        ps = [(ai * w).detach().requires_grad_() for ai, w in zip(a, w0)]
        loss = loss_fn(Substituted(model, dict(zip(names, ps))), S)
        gs = [g for g in torch.autograd.grad(loss, ps, allow_unused=True) if g is not None]
        if target == "adam":
            return sum(g.abs().sum() for g in gs)
        return torch.sqrt(sum((g * g).sum() for g in gs))

    eye = torch.eye(len(alpha), dtype=torch.float64)
    return torch.stack([(N(alpha + h * e) - N(alpha - h * e)) / (2 * h) for e in eye])


@pytest.mark.parametrize("target", ["sgd", "adam"])
def test_constraint_gradient_matches_finite_differences(target):
    torch.manual_seed(0)
    model = Mixed().double()
    search, specs = search_for(model, target)
    alpha = torch.linspace(0.7, 1.3, len(specs), dtype=torch.float64)
    S = batch()
    first = search.first_pass(alpha.clone(), S, graph=True)
    weights = {i for i, s in enumerate(specs) if s.attr == "weight"}
    assert set(first["fast"]) == weights  # every weight took the shortcut
    got = search.constraint_grad(first)
    torch.testing.assert_close(got, N_fd(model, specs, default_loss, alpha, S, target),
                               rtol=1e-5, atol=1e-8)


def test_unbatched_conv_input():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(0), nn.Linear(27, 4))
    model.double()
    loss_fn = lambda m, b: F.cross_entropy(m(b[0])[None], b[1])  # noqa: E731  x: (C, L)
    S = (torch.randn(2, 9, dtype=torch.float64), torch.tensor([2]))
    search, specs = search_for(model, loss_fn=loss_fn)
    alpha = torch.tensor([1.2, 0.8, 0.9, 1.1], dtype=torch.float64)
    first = search.first_pass(alpha.clone(), S, graph=True)
    assert len(first["fast"]) == 2
    torch.testing.assert_close(search.constraint_grad(first),
                               N_fd(model, specs, loss_fn, alpha, S, "sgd"), rtol=1e-5, atol=1e-8)


def test_same_as_the_plain_route_on_a_resnet():
    """The shortcut's scale gradient (every conv and Linear weight on it) against the plain
    route's (none on it), on a residual network with stride-2 stages."""
    torch.manual_seed(2)
    model = ResNet(3, depth=8, width=4).double().eval()
    S = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,)))
    specs = trainable_params(model)
    alpha = 0.5 + torch.rand(len(specs), dtype=torch.float64)
    weights = [i for i, s in enumerate(specs) if s.attr == "weight"
               and isinstance(model.get_submodule(s.name.rpartition(".")[0]), (nn.Conv2d, nn.Linear))]
    assert len(weights) == 8
    grads = {}
    for fast in (True, False):
        search, _ = search_for(model, fast=fast)
        first = search.first_pass(alpha.clone(), S, graph=True)
        assert sorted(first["fast"]) == (weights if fast else [])
        grads[fast] = search.constraint_grad(first)
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-9, atol=1e-12)
    assert grads[False][weights].abs().min() > 1e-6  # each compared entry is a real check


class CountConvs(TorchDispatchMode):
    """Convolutions computed: one per forward, one per gradient a convolution backward returns
    (its output mask: input and weight; the bias gradient is a sum)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.n += 1
        elif func is torch.ops.aten.convolution_backward.default:
            mask = args[10] if len(args) > 10 else kwargs["output_mask"]
            self.n += int(mask[0]) + int(mask[1])
        return func(*args, **(kwargs or {}))


def convolutions(n_convs, fast):
    """Convolutions in one constraint step (forward, backward with graph, double backward)."""
    torch.manual_seed(3)
    model = nn.Sequential(*[m for _ in range(n_convs) for m in (nn.Conv2d(4, 4, 3, padding=1),
                                                                 nn.ReLU())],
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    S = (torch.randn(2, 4, 6, 6), torch.randint(0, 3, (2,)))
    search, specs = search_for(model, fast=fast)
    with CountConvs() as c:
        first = search.first_pass(torch.ones(len(specs), dtype=torch.float64), S, graph=True)
        search.constraint_grad(first)
    assert bool(first["fast"]) == fast
    return c.n


def test_seven_convolutions_per_layer_instead_of_nine():
    """Per conv layer whose input needs a gradient: forward 1 + backward 2 + double backward 6
    = 9 on the plain route, 7 with the shortcut (module docstring of shortcut.py). The first
    layer (input needs no gradient) costs 5 on both routes."""
    fast = [convolutions(n, True) for n in (1, 2, 3)]
    plain = [convolutions(n, False) for n in (1, 2, 3)]
    assert fast[0] == plain[0] == 5
    assert [b - a for a, b in zip(fast, fast[1:])] == [7, 7]
    assert [b - a for a, b in zip(plain, plain[1:])] == [9, 9]


class Regularized(nn.Module):
    """fc is called, and its weight is also read directly; `unused_call` is never called."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.side = nn.Linear(6, 3)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return self.out(h) + F.linear(h, self.side.weight) + 0.1 * self.fc.weight.sum()


def test_weights_read_outside_their_layer_fall_back_and_stay_exact():
    torch.manual_seed(4)
    model = Regularized().double()
    S = (torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,)))
    search, specs = search_for(model)
    alpha = torch.linspace(0.8, 1.2, len(specs), dtype=torch.float64)
    first = search.first_pass(alpha.clone(), S, graph=True)
    names = {specs[i].name for i in first["fast"]}
    assert names == {"out.weight"}  # fc: read directly too; side: never called
    torch.testing.assert_close(search.constraint_grad(first),
                               N_fd(model, specs, default_loss, alpha, S, "sgd"), rtol=1e-5, atol=1e-8)


def test_layers_under_autocast_take_the_plain_route():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

    def loss_fn(m, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(b[0])
        return F.cross_entropy(out.float(), b[1])

    S = (torch.randn(6, 5), torch.randint(0, 3, (6,)))
    grads = []
    for fast in (True, False):
        search, specs = search_for(model, loss_fn=loss_fn, fast=fast)
        first = search.first_pass(torch.ones(len(specs), dtype=torch.float64), S, graph=True)
        assert first["fast"] == []
        grads.append(search.constraint_grad(first))
    torch.testing.assert_close(grads[0], grads[1])


class CastsLater(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.cast = nn.Linear(4, 6), nn.Linear(6, 3), False

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cast):
            return self.fc2(h).double()


def test_a_later_pass_with_other_calls_falls_back():
    torch.manual_seed(7)
    model = CastsLater().double()
    S = (torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,)))
    search, specs = search_for(model)
    alpha = torch.ones(len(specs), dtype=torch.float64)
    assert search.first_pass(alpha.clone(), S, graph=True)["fast"] == [0, 2]
    model.cast = True  # from now on fc2 runs under autocast: its calls go uncounted
    first = search.first_pass(alpha.clone(), S, graph=True)
    assert first["fast"] == [0]
    plain, _ = search_for(model, fast=False)
    torch.testing.assert_close(search.constraint_grad(first),
                               plain.constraint_grad(plain.first_pass(alpha.clone(), S, graph=True)))


def test_forwards_restored_after_a_search_and_after_a_failure():
    torch.manual_seed(5)
    model = Mixed()
    data = [(torch.randn(4, 2, 7, 7), torch.randint(0, 5, (4,))) for _ in range(3)]
    initlab.gradinit(model, data, steps=2, gamma=1e-9)  # constraint steps
    assert not any("forward" in vars(m) for m in model.modules())
    calls = []

    def failing(m, b):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return default_loss(m, b)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        initlab.gradinit(model, data, steps=3, gamma=1e-9, loss_fn=failing)
    assert not any("forward" in vars(m) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
