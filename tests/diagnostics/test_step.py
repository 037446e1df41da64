"""Gradients, one optimizer step and the held-out loss against a manual step on a copy."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.methods import batches, mlp
from initlab.diagnostics import diagnose


def rms(t: torch.Tensor) -> float:
    return float(t.double().square().mean().sqrt())


def manual_step(model: nn.Module, data: list, make_opt) -> tuple[nn.Module, dict]:
    twin = copy.deepcopy(model)
    opt = make_opt(twin.parameters())
    loss = sum(F.cross_entropy(twin(x), y) for x, y in data) / len(data)
    loss.backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in twin.named_parameters()}
    opt.step()
    return twin, grads


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=1e-3),
    "callable": lambda ps: torch.optim.RMSprop(ps, lr=0.05),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_ratio_and_losses_match_a_manual_step_on_a_copy(name):
    torch.manual_seed(1)
    model, data = mlp(), batches(4, size=16)
    optimizer = OPTIMIZERS[name] if name == "callable" else name
    lr = None if name == "callable" else 0.05
    d = diagnose(model, data, lr=lr, optimizer=optimizer, momentum=0.8, weight_decay=1e-3)
    twin, grads = manual_step(model, data[:3], OPTIMIZERS[name])
    params, stepped = dict(model.named_parameters()), dict(twin.named_parameters())
    assert [t.name for t in d.tensors] == list(params)
    for t in d.tensors:
        w0, w1 = params[t.name].detach(), stepped[t.name].detach()
        assert t.weight_rms == pytest.approx(rms(w0), rel=1e-6)
        assert t.grad_rms == pytest.approx(rms(grads[t.name]), rel=1e-4)
        assert t.update_rms == pytest.approx(rms(w1 - w0), rel=1e-5, abs=1e-9)
        assert t.ratio == pytest.approx(rms(w1 - w0) / rms(w0), rel=1e-5, abs=1e-9)
    x, y = data[3]
    with torch.no_grad():
        assert d.loss_before == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-6)
        assert d.loss_after == pytest.approx(float(F.cross_entropy(twin(x), y)), rel=1e-5)
        assert d.batch_losses == pytest.approx(
            [float(F.cross_entropy(model(x), y)) for x, y in data[:3]], rel=1e-6)


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.spare = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        return self.used(x)


def test_a_tensor_the_loss_does_not_reach_has_no_gradient_and_no_update():
    d = diagnose(Unused(), batches(3), lr=0.1, weight_decay=0.1)
    spare = {t.name: t for t in d.tensors}["spare.weight"]
    assert spare.grad_rms is None and spare.update_rms == 0.0


def test_tied_tensors_appear_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    data = [(torch.randint(0, 10, (8,)), torch.randint(0, 10, (8,))) for _ in range(3)]
    d = diagnose(model, data, lr=0.1)
    assert [t.name for t in d.tensors] == ["0.weight"]
    twin, grads = manual_step(model, data[:2], lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
    assert d.tensors[0].grad_rms == pytest.approx(rms(grads["0.weight"]), rel=1e-5)
