"""Never worse than where it started: on the held-out batch (the first one drawn), the loss after
one step of the target optimizer from the returned model is at most the loss after one step from
the starting model. Checked here with plain autograd on copies of the models."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab


def one_step_loss(model: nn.Module, batch, target: str, lr: float) -> float:
    """L(H; p - lr A(g)), g = grad L(H; p): SGD's plain step or Adam's first step (sign)."""
    model = copy.deepcopy(model).train()
    x, y = batch
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * (g.sign() if target == "adam" else g)
        return F.cross_entropy(model(x), y).item()


def tanh_mlp():
    return nn.Sequential(nn.Linear(10, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(),
                         nn.Linear(24, 4))


def relu_deep():
    layers = [nn.Linear(10, 16), nn.ReLU()]
    for _ in range(5):
        layers += [nn.Linear(16, 16), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(16, 4))


def small_cnn():
    return nn.Sequential(nn.Unflatten(1, (1, 10)), nn.Conv1d(1, 4, 3, padding=1),
                         nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(40, 4))


def data(seed, n=6, size=16):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, 10, generator=g)
        out.append((x, (x[:, :4] + 0.3 * torch.randn(size, 4, generator=g)).argmax(1)))
    return out


@pytest.mark.parametrize("build", [tanh_mlp, relu_deep, small_cnn])
@pytest.mark.parametrize("target,lr", [("sgd", 0.1), ("sgd", 1.0), ("adam", 0.01)])
@pytest.mark.parametrize("seed", [0, 1])
def test_one_step_from_the_result_is_no_worse_than_from_the_start(build, target, lr, seed):
    torch.manual_seed(seed)
    model = build()
    start = copy.deepcopy(model)
    batches = data(seed)
    report = initlab.gradinit(model, batches, target=target, lr=lr, steps=30, patience=5)
    H = batches[0]
    before, after = one_step_loss(start, H, target, lr), one_step_loss(model, H, target, lr)
    assert after <= before + 1e-6
    guard = report.outcome["guard"]  # the guard's own figures agree with these
    assert guard["start"] == pytest.approx(before, rel=1e-4, abs=1e-6)
    assert guard["returned"] == pytest.approx(after, rel=1e-4, abs=1e-6)


def adversarial(H):
    """The true loss on the held-out batch H, its negative elsewhere: the search then seeks
    scales that make one step *raise* the loss, which the guard must catch."""
    def loss_fn(model, batch):
        loss = F.cross_entropy(model(batch[0]), batch[1])
        return loss if batch[0] is H[0] else -loss
    return loss_fn


def test_a_bad_search_falls_back_to_the_start_bitwise():
    torch.manual_seed(3)
    model = tanh_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = data(3)
    report = initlab.gradinit(model, batches, loss_fn=adversarial(batches[0]), steps=20,
                              warm_start=False, max_growth=math.inf)  # free to go wrong
    guard = report.outcome["guard"]
    assert guard["fell_back_to"] == "start"
    assert guard["searched"] > guard["start"] == guard["returned"]  # what it rejected, and why
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_bad_search_falls_back_to_the_warm_start(caplog):
    torch.manual_seed(4)
    model = relu_deep()  # PyTorch's init: signals shrink with depth; the warm start beats it
    warm = copy.deepcopy(model)
    initlab.initialize(warm, "gradinit-warmstart", data=data(4)[1:])  # its batch: the second
    # (the adversarial loss is -CE there, and the warm start uses only the forward pass)
    batches = data(4)
    report = initlab.gradinit(model, batches, loss_fn=adversarial(batches[0]), steps=20)
    assert report.outcome["guard"]["fell_back_to"] == "warm start"
    assert "returning the warm start" in caplog.text and "pass guard=False" in caplog.text
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, warm.state_dict()[k], rtol=1e-12, atol=0)


def test_guard_off_returns_the_search_as_found():
    torch.manual_seed(3)
    model = tanh_mlp()
    report = initlab.gradinit(model, data(3), scale_lr=4.0, steps=6, patience=100,
                              warm_start=False, guard=False)
    assert "guard" not in report.outcome
    assert max(report.scales.values()) > 2 or min(report.scales.values()) < 0.5


def test_the_bar_is_the_start_unless_one_step_does_not_move_it():
    from initlab.methods.gradinit.guard import STALLED, bar
    assert bar(2.5, 2.3) == (2.3, False)                         # the step moves it: no slack
    limit, stalled = bar(2.3026, 2.3027)                         # at chance, one step: +1e-4
    assert stalled and limit == pytest.approx(2.3027 + STALLED * 2.3026)
    assert bar(-4.0, -4.001) == (-4.001 + STALLED * 4.0, True)   # a loss below zero: |L|
    assert bar(2.0, float("inf")) == (float("inf"), False)


@pytest.mark.parametrize("searched,stalled_start,expected", [
    (2.3040, True, None),            # a live result that lost by round-off to a dead start
    (2.3100, True, "warm start"),    # more than 0.1 % above it: refused even so
    (2.3040, False, "warm start"),   # against a start that one step moves: no slack
])
def test_a_stalled_start_lets_a_result_within_the_bar_through(monkeypatch, searched,
                                                              stalled_start, expected):
    from initlab.methods.gradinit import guard
    found, warm = torch.tensor([2.0, 0.5]), torch.tensor([1.5, 1.5])
    start = (2.3026, 2.3027) if stalled_start else (2.3500, 2.3027)
    losses = {id(found): (9.0, searched), id(warm): (9.0, 2.3020)}
    monkeypatch.setattr(guard, "one_step_loss",
                        lambda search, alpha, H: losses.get(id(alpha), start))
    alpha, record = guard.guarded(None, None, found, [("warm start", warm)])
    assert record["fell_back_to"] == expected and record["stalled"] == stalled_start
    assert alpha is (found if expected is None else warm)


def dead_deep_mlp():
    """Every weight 0.05 of PyTorch's, no biases: the output is ~0, the loss ln 4 on balanced
    labels, and one step at lr 0.1 moves it by far less than 0.1 %."""
    layers = []
    for i in range(8):
        layers += [nn.Linear(10 if i == 0 else 16, 16, bias=False), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(16, 4, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.05)
    return model


def test_from_a_stalled_start_the_returned_loss_stays_within_the_bar():
    torch.manual_seed(5)
    model = dead_deep_mlp()
    start = copy.deepcopy(model)
    batches = data(5)
    H = (batches[0][0], torch.arange(16) % 4)   # balanced labels: the start's gradient ~ 0
    batches[0] = H
    x, y = H
    loss0 = F.cross_entropy(start(x), y).item()
    assert abs(one_step_loss(start, H, "sgd", 0.1) - loss0) < 1e-6   # stalled, independently
    report = initlab.gradinit(model, batches, lr=0.1, steps=30, patience=5)
    guard = report.outcome["guard"]
    assert guard["stalled"] is True
    bound = one_step_loss(start, H, "sgd", 0.1) + 1e-3 * loss0
    assert one_step_loss(model, H, "sgd", 0.1) <= bound
    assert guard["fell_back_to"] != "start"   # the search's result or the warm start: alive
    assert F.cross_entropy(model(x), y).item() != pytest.approx(loss0, abs=1e-4)
