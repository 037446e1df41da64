"""GradInit's scale gradients against finite differences, and its behaviour as a library call."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import initlab
from initlab.core.loss import default_loss
from initlab.core.params import trainable_params
from initlab.methods.gradinit import GradInitConfig, GradInitSearch


def mlp64() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()


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
    cfg = GradInitConfig(target=target, lr=lr, normalize_grad=normalize, second_order=second_order)
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
        cfg.second_order = True
        other, _, _ = search.objective_grad(first2, S_tilde)
        assert not torch.allclose(other, got, rtol=1e-4)


@pytest.mark.parametrize("target", ["sgd", "adam"])
def test_constraint_gradient_matches_finite_differences(target):
    model = mlp64()
    specs = trainable_params(model)
    names, w0 = [s.name for s in specs], [s.param.detach() for s in specs]
    S = pair(seed=3)
    search = GradInitSearch(model, specs, default_loss, GradInitConfig(target=target))
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


# ---- behaviour ---------------------------------------------------------------------------------

def bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, 3))


def data(n=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model, saved):
    now = model.state_dict()
    assert now.keys() == saved.keys()
    for k in saved:
        assert torch.equal(now[k], saved[k]), k


def test_running_stats_and_modes_untouched():
    model = bn_net()
    model.train()
    model[3].eval()  # a mixed mode the user chose
    before = state(model)
    initlab.gradinit(model, data(), steps=5)
    bn = model[1]
    assert torch.equal(bn.running_mean, before["1.running_mean"])
    assert torch.equal(bn.num_batches_tracked, before["1.num_batches_tracked"])
    assert bn.track_running_stats and model.training and bn.training and not model[3].training
    assert not torch.equal(model[0].weight, before["0.weight"])  # and something did change


def test_dropout_off_and_batch_statistics_used_during_search():
    seen = []

    def loss_fn(m, batch):
        seen.append((m._model[3].training, m._model[1].training, m._model[1].track_running_stats))
        return default_loss(m, batch)

    initlab.gradinit(bn_net(), data(), loss_fn=loss_fn, steps=2)
    assert seen and all(s == (False, True, False) for s in seen)


class Boom(Exception):
    pass


@pytest.mark.parametrize("kind", ["loss_raises", "interrupt", "nan_loss", "nan_after"])
def test_model_restored_bitwise_on_failure(kind):
    model = bn_net()
    model.train()
    before = state(model)
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = default_loss(m, batch)
        if calls["n"] == (6 if kind == "nan_after" else 5):
            if kind == "loss_raises":
                raise Boom("user loss failed")
            if kind == "interrupt":
                raise KeyboardInterrupt
            return loss * float("nan")
        return loss

    err = {"loss_raises": Boom, "interrupt": KeyboardInterrupt,
           "nan_loss": FloatingPointError, "nan_after": FloatingPointError}[kind]
    with pytest.raises(err) as info:
        initlab.gradinit(model, data(), loss_fn=loss_fn, steps=10, gamma=1e9)
    assert_same(model, before)
    assert model.training and model[1].track_running_stats
    if kind.startswith("nan"):
        assert "iteration 2" in str(info.value)  # calls 1-2: iteration 0, 3-4: 1, 5-6: 2


def test_failure_while_writing_restores(monkeypatch):
    model = bn_net()
    before = state(model)
    original = torch.Tensor.copy_
    count = {"n": 0}

    def flaky(self, src, *a, **k):
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt
        return original(self, src, *a, **k)

    monkeypatch.setattr(torch.Tensor, "copy_", flaky)
    with pytest.raises(KeyboardInterrupt):
        initlab.gradinit(model, data(), steps=2)
    monkeypatch.undo()
    assert_same(model, before)


@pytest.mark.parametrize("bad,match", [
    (dict(target="rmsprop"), "unknown target"), (dict(lr=-0.1), "lr must be"),
    (dict(steps=0), "steps must be"), (dict(scale_lr=0.0), "scale_lr"),
    (dict(gamma=float("nan")), "gamma"), (dict(min_scale=-1.0), "min_scale"),
    (dict(batching="zip"), "batching"),
])
def test_invalid_settings(bad, match):
    model = bn_net()
    before = state(model)
    with pytest.raises(ValueError, match=match):
        initlab.gradinit(model, data(), **bad)
    assert_same(model, before)


def test_clear_errors_for_bad_inputs():
    with pytest.raises(ValueError, match="no batches"):
        initlab.gradinit(bn_net(), [], steps=1)
    with pytest.raises(ValueError, match="re-iterable"):
        initlab.gradinit(bn_net(), iter(data(n=2)), steps=3)
    frozen = bn_net().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to scale"):
        initlab.gradinit(frozen, data(), steps=1)
    with pytest.raises(ValueError, match="nothing to scale"):
        initlab.gradinit(bn_net(), data(), steps=1, params="no_such_tensor")
    with pytest.raises(ValueError, match="scalar"):
        initlab.gradinit(bn_net(), data(), steps=1,
                         loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none"))
    real = bn_net()
    with pytest.raises(ValueError, match="call the `model` it was given"):
        initlab.gradinit(real, data(), steps=1, loss_fn=lambda m, b: real(b[0]).sum())
    with pytest.raises(TypeError, match="iterable of batches"):
        initlab.gradinit(bn_net(), torch.randn(3, 6), steps=1)
    with pytest.raises(ValueError, match="dict batches"):
        initlab.gradinit(bn_net(), [(torch.randn(4, 6), torch.zeros(4).long(), 1)], steps=1)


def test_draw_order_is_the_contract():
    drawn = []

    class Recording:
        def __init__(self, batches):
            self.batches = batches

        def __iter__(self):
            for i, b in enumerate(self.batches):
                drawn.append(i)
                yield b

    batches = data(n=20)
    initlab.gradinit(bn_net(), Recording(batches), steps=2, gamma=1e9)  # objective: 3 per step
    assert drawn == [0, 1, 2, 3, 4, 5]
    drawn.clear()
    initlab.gradinit(bn_net(), Recording(batches), steps=2, gamma=1e9, overlap=False)
    assert drawn == list(range(8))
    drawn.clear()
    initlab.gradinit(bn_net(), Recording(batches), steps=3, gamma=1e-9)  # constraint: 2 per step
    assert drawn == list(range(6))


def test_objective_batches_are_B0_B2_or_B3_B2():
    batches = data(n=8)
    seen = []

    def loss_fn(m, batch):
        seen.append(batch[0])
        return default_loss(m, batch)

    for overlap, want in [(True, (0, 2)), (False, (3, 2))]:
        seen.clear()
        initlab.gradinit(bn_net(), batches, loss_fn=loss_fn, steps=1, gamma=1e9, overlap=overlap)
        assert torch.equal(seen[0], torch.cat([batches[0][0], batches[1][0]]))
        assert torch.equal(seen[1], torch.cat([batches[want[0]][0], batches[want[1]][0]]))


def test_deterministic_bitwise():
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = bn_net()
        runs.append(initlab.gradinit(model, data(), steps=6).scales)
    assert runs[0] == runs[1]


def test_optimizer_built_earlier_stays_valid():
    model = bn_net()
    ids = [id(p) for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    initlab.gradinit(model, data(), steps=3)
    assert [id(p) for p in model.parameters()] == ids
    x, y = data(n=1)[0]
    before = model[0].weight.detach().clone()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(model[0].weight, before)


def test_selection_floors_and_caps():
    model = bn_net()
    before = state(model)
    report = initlab.gradinit(model, data(), steps=30, scale_lr=0.5, gamma=1e-9,
                              params=nn.Linear, exclude=r"^4\.", min_scale=0.3)
    assert set(report.scales) == {"0.weight", "0.bias"}
    assert torch.equal(model[1].weight, before["1.weight"])
    assert torch.equal(model[4].weight, before["4.weight"])
    assert report.scales["0.weight"] >= 0.3 and report.scales["0.bias"] >= 0.0
    torch.testing.assert_close(model[0].weight, before["0.weight"] * report.scales["0.weight"])
    capped = initlab.gradinit(bn_net(), data(), steps=30, scale_lr=0.5, gamma=1e9,
                              max_scale=1.05, norm_max_scale=1.01)
    assert max(capped.scales.values()) <= 1.05
    assert capped.scales["1.weight"] <= 1.01


def test_report_roundtrip_and_apply(tmp_path):
    torch.manual_seed(11)
    model = bn_net()
    report = initlab.gradinit(model, data(), steps=4, progress=False)
    assert len(report.history) == 4 and report.version == initlab.__version__
    assert {"iteration", "branch", "loss", "loss_after", "grad_norm"} <= set(report.history[0])
    path = tmp_path / "init.pt"
    report.save(path)
    loaded = initlab.InitReport.load(path)
    assert loaded == report
    torch.manual_seed(11)
    fresh = bn_net()
    initlab.apply(fresh, path)
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    with pytest.raises(RuntimeError, match="scale twice"):
        initlab.apply(fresh, report)
    other = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(16, 4))
    with pytest.raises(ValueError, match="'4.weight'"):
        initlab.apply(other, report)
    fig_path = tmp_path / "scales.png"
    report.plot(fig_path)
    assert fig_path.stat().st_size > 1000
