"""diagnose's contract: the model comes back bitwise (parameters, buffers, modes, random state),
no hook is left behind, the package is callable, and bad input gets a clear error."""
import random
import types

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import initlab
from helpers.methods import ResMLP, assert_same, batches, bn_dropout_mlp, mlp, snapshot
from initlab.diagnostics import Diagnosis, diagnose


def rng_states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def assert_rng_equal(a, b):
    assert torch.equal(a[0], b[0])
    assert a[1] == b[1]
    assert a[2][0] == b[2][0] and np.array_equal(a[2][1], b[2][1]) and a[2][2:] == b[2][2:]


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def shuffling_loader(n: int = 128) -> DataLoader:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)  # draws from torch's RNG


def test_the_model_and_every_generator_come_back_bitwise():
    model = bn_dropout_mlp()  # train mode, running statistics, dropout
    before, n_hooks = snapshot(model), hooks(model)
    loader = shuffling_loader()
    random.random(), np.random.rand()  # noqa: B018  (move them off their seeds first)
    rng = rng_states()
    d = initlab.diagnose(model, loader, lr=0.1)
    assert isinstance(d, Diagnosis) and d.tensors and d.layers
    assert_same(model, before)
    assert model.training and all(m.training for m in model.modules())
    assert_rng_equal(rng_states(), rng)
    assert hooks(model) == n_hooks
    next(iter(loader))  # the check can fail: the loader alone moves torch's generator
    assert not torch.equal(torch.get_rng_state(), rng[0])


@pytest.mark.parametrize("make", [lambda: mlp(), lambda: ResMLP(n_blocks=2, width=8)])
def test_unchanged_for_marked_and_plain_models(make):
    model = make()
    before = snapshot(model)
    diagnose(model, batches(3), lr=0.5, optimizer="adam")
    assert_same(model, before)


def test_an_error_midway_leaves_the_model_and_removes_every_hook():
    model = bn_dropout_mlp()
    before, n_hooks = snapshot(model), hooks(model)
    calls = []

    def breaks(m, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("loss broke")
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    with pytest.raises(RuntimeError, match="loss broke") as info:
        diagnose(model, batches(4), lr=0.1, loss_fn=breaks)
    assert "left unchanged" in "".join(getattr(info.value, "__notes__", []))
    assert_same(model, before)
    assert hooks(model) == n_hooks


def test_the_function_at_the_top_and_the_package_with_the_rest():
    assert initlab.diagnose is diagnose and isinstance(initlab.diagnostics, types.ModuleType)
    d = initlab.diagnose(mlp(), batches(2), lr=0.1)
    assert d.settings["batches"] == 2 and len(d.batch_losses) == 1
    assert callable(initlab.diagnostics.compare) and callable(initlab.diagnostics.layer_moments)


def test_a_callable_optimizer_keeps_its_own_lr_unless_lr_is_given():
    model, data = mlp(), batches(3)
    own = diagnose(model, data, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.2))
    given = diagnose(model, data, lr=0.4, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.2))
    for a, b in zip(own.tensors, given.tensors):
        assert b.update_rms == pytest.approx(2 * a.update_rms, rel=1e-5)


@pytest.mark.parametrize("data, kwargs, error, words", [
    ([], {"lr": 0.1}, ValueError, "yielded 0 batches"),
    (batches(1), {"lr": 0.1}, ValueError, "at least 2"),
    (torch.randn(8, 6), {"lr": 0.1}, TypeError, "iterable of batches"),
    (batches(3), {}, TypeError, "needs lr="),
    (batches(3), {"lr": -1.0}, ValueError, "positive"),
    (batches(3), {"lr": 0.1, "batches": 1}, ValueError, "batches must be"),
    (batches(3), {"lr": 0.1, "optimizer": "lion"}, ValueError, "sgd, adam, adamw"),
    (batches(3), {"lr": 0.1, "loss_fn": lambda m, b: nn.functional.cross_entropy(
        m(b[0]), b[1], reduction="none")}, ValueError, "scalar"),
])
def test_bad_input_gets_a_clear_error(data, kwargs, error, words):
    model = mlp()
    before = snapshot(model)
    with pytest.raises(error, match=words):
        diagnose(model, data, **kwargs)
    assert_same(model, before)


def test_a_loss_that_bypasses_the_model_it_is_given_is_refused_and_leaves_grads():
    model = mlp()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    with pytest.raises(ValueError, match="captured reference"):
        diagnose(model, batches(3), lr=0.1,
                 loss_fn=lambda m, b: nn.functional.cross_entropy(model(b[0]), b[1]))
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[2].weight.grad is None
    with pytest.raises(ValueError, match="does not depend on the model"):
        diagnose(model, batches(3), lr=0.1, loss_fn=lambda m, b: torch.zeros((), requires_grad=False))


def test_an_optimizer_over_the_real_parameters_is_refused():
    model = mlp()
    with pytest.raises(ValueError, match="over the tensors it is given"):
        diagnose(model, batches(3), optimizer=lambda ps: torch.optim.SGD(model.parameters(), lr=1))


def test_a_model_without_trainable_tensors_is_refused():
    model = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        diagnose(model, batches(3), lr=0.1)
