"""LSUV: unit output std per layer on unseen data, orthonormal pre-init, forward order, safety."""
import copy

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import (
    FAILURE_CASES,
    assert_same,
    batches,
    bn_dropout_mlp,
    failure_case,
    snapshot,
)
from initlab.methods.lsuv import lsuv


class Shuffled(nn.Module):
    """Conv1d, Conv2d, Conv3d and Linear layers, registered in an order unlike the forward one."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(24, 5)
        self.c3 = nn.Conv3d(2, 3, 3, padding=1)
        self.c1 = nn.Conv1d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(3 * 3 * 4 * 4, 24)

    def forward(self, x):                                    # x: (B, 3, 16)
        h = torch.tanh(self.c1(x))                           # (B, 4, 16)
        h = torch.relu(self.c2(h.reshape(-1, 4, 4, 4)))      # (B, 6, 4, 4)
        h = self.c3(h.reshape(-1, 2, 3, 4, 4))               # (B, 3, 3, 4, 4)
        h = torch.tanh(self.fc(h.reshape(h.shape[0], -1)))   # (B, 24)
        return self.head(h)


def image_batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(2.5 * torch.randn(128, 3, 16, generator=g) + 0.3,
             torch.randint(0, 5, (128,), generator=g))
            for _ in range(n)]


def output_stds(model, x):
    stds = {}

    def hook(name):
        def record(module, args, out):
            stds.setdefault(name, out.std().item())
        return record
    hooks = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return stds


def test_every_layer_has_unit_std_on_an_unseen_batch():
    model = Shuffled()
    report = lsuv(model, image_batches(6, seed=0), seed=0)
    unseen = image_batches(1, seed=99)[0][0]
    stds = output_stds(model, unseen)
    assert set(stds) == {"c1", "c2", "c3", "fc", "head"}
    for name, s in stds.items():
        assert abs(s - 1.0) < 0.1, (name, s)
    assert [h["layer"] for h in report.history] == ["c1", "c2", "c3", "fc", "head"]  # forward order
    assert all(1 <= h["tries"] <= 10 for h in report.history)


def test_target_std_and_orthonormal_directions():
    model = Shuffled()
    lsuv(model, image_batches(6, seed=1), target_std=0.5, tol=0.02, seed=1)
    stds = output_stds(model, image_batches(1, seed=98)[0][0])
    for name, s in stds.items():
        assert abs(s - 0.5) < 0.05, (name, s)
    for m in (model.c1, model.c2, model.c3, model.fc, model.head):
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w   # c^2 I for a scaled orthonormal
        c2 = gram.diagonal().mean()
        torch.testing.assert_close(gram / c2, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
        assert torch.all(m.bias == 0)


def test_without_pre_init_the_report_replays():
    model = Shuffled()
    fresh = copy.deepcopy(model)
    report = lsuv(model, image_batches(4, seed=2), orthonormal=False)
    assert set(report.scales) == {"c1.weight", "c2.weight", "c3.weight", "fc.weight", "head.weight"}
    initlab.apply(fresh, report)
    for p, q in zip(model.parameters(), fresh.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_leaves_modes_and_buffers_as_they_were():
    model = bn_dropout_mlp()
    before = snapshot(model)
    initlab.initialize(model, "lsuv", batches(4))
    assert_same(model, before, params=False)
    assert not torch.equal(model[4].weight, before["params"]["4.weight"])


@pytest.mark.parametrize("case", FAILURE_CASES)
def test_failure_leaves_model_bitwise_unchanged(case):
    model = bn_dropout_mlp()
    data, loss_fn, err = failure_case(case, batches(4), raise_after=2)
    before = snapshot(model)
    with pytest.raises(err) as info:
        lsuv(model, data, loss_fn=loss_fn)
    assert any("unchanged" in n for n in getattr(info.value, "__notes__", []))
    assert_same(model, before)


def deep_bn_mlp():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16),
                      nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    m.train()
    m(torch.randn(8, 6))  # non-trivial running statistics
    return m


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_mid_run_leaves_model_bitwise_unchanged(exc):
    """Ctrl-C (or an error) while the third layer is being measured: the first two layers are
    already rescaled in the search, and none of it may reach the model."""
    model = deep_bn_mlp()
    calls = []

    def hook(module, args, out):
        calls.append(1)
        if len(calls) == 3:  # the order-recording forward, then two tries on this layer
            raise exc("stopped by the user")

    handle = model[5].register_forward_hook(hook)
    before = snapshot(model)
    with pytest.raises(exc):
        lsuv(model, batches(4), tol=1e-6, max_tries=3)
    handle.remove()
    assert len(calls) == 3
    assert_same(model, before)


def test_dead_layer_is_a_clear_error():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    before = snapshot(model)
    with pytest.raises(FloatingPointError, match="std 0"):
        lsuv(model, batches(2), orthonormal=False)
    assert_same(model, before)


def test_refuses_bad_settings():
    model = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(ValueError, match="tol"):
        lsuv(model, batches(1), tol=0)
    with pytest.raises(ValueError, match="Linear/Conv"):
        lsuv(nn.Sequential(nn.ReLU()), batches(1))


class Keywords(nn.Module):
    """A model called with keyword inputs, as dict batches are passed."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x, shift):
        return self.b(torch.tanh(self.a(x + shift)))


def test_batches_of_inputs_alone_need_no_loss_fn():
    """Tensors, `(inputs,)` lists (a DataLoader over a TensorDataset of inputs) and dicts of
    keyword inputs: the same weights as (inputs, targets) batches with the same inputs."""
    from torch.utils.data import DataLoader, TensorDataset
    xs = [b[0] for b in batches(4)]
    results = []
    for data in ([(x, torch.zeros(len(x), dtype=torch.long)) for x in xs], xs,
                 list(DataLoader(TensorDataset(torch.cat(xs)), batch_size=32))):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        lsuv(model, data, seed=0)
        results.append([p.detach().clone() for p in model.parameters()])
    for other in results[1:]:
        for p, q in zip(results[0], other):
            assert torch.equal(p, q)
    model = Keywords()
    report = lsuv(model, [{"x": x, "shift": torch.ones(())} for x in xs], seed=0)
    assert [h["layer"] for h in report.history] == ["a", "b"]
    assert all(abs(h["std_after"] - 1) < 0.1 for h in report.history)


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(1000 * x)  # overflows to inf past the last measured layer


def test_non_finite_outputs_of_the_finished_model_are_refused():
    model = nn.Sequential(nn.Linear(6, 3), Exp())
    before = snapshot(model)
    with pytest.raises(FloatingPointError, match="non-finite output of the initialized model"):
        lsuv(model, [b[0] for b in batches(2)])
    assert_same(model, before)
