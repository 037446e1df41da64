"""The training loop: it learns, it is repeatable, and divergence is recorded, not raised."""
import math

import pytest
import torch

from initlab.lab.data import Batches, load_dataset
from initlab.lab.models import build_model
from initlab.lab.train import TrainConfig, evaluate, lr_factor, train


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits", subset=400, test_subset=200)
    return Batches(d.x_train, d.y_train, 50, shuffle=True, seed=0), Batches(d.x_test, d.y_test, 200)


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("mlp", image_size=8, depth=2, width=32)


def test_training_on_digits_learns(digits):
    train_b, test_b = digits
    model = _mlp()
    _, acc_before = evaluate(model, test_b)
    result = train(model, train_b, test_b, TrainConfig(epochs=4, lr=0.1))
    assert not result.diverged and len(result.test_acc) == 4
    assert result.train_loss[-1] < result.train_loss[0]
    assert result.best_acc > 0.75 and result.best_acc > acc_before + 0.4
    assert result.first_epoch_acc == result.test_acc[0]


def test_runs_are_repeatable(digits):
    d = load_dataset("digits", subset=400, test_subset=200)
    runs = []
    for _ in range(2):
        train_b = Batches(d.x_train, d.y_train, 50, shuffle=True, seed=3)
        cfg = TrainConfig(epochs=2, optimizer="adam", lr=3e-3, warmup_epochs=0.5, clip=1.0)
        runs.append(train(_mlp(1), train_b, digits[1], cfg))
    assert runs[0].test_acc == runs[1].test_acc and runs[0].train_loss == runs[1].train_loss


def test_divergence_is_recorded_not_raised(digits):
    train_b, test_b = digits
    result = train(_mlp(), train_b, test_b, TrainConfig(epochs=4, lr=1e6, momentum=0.99,
                                                        weight_decay=0.0))
    assert result.diverged and result.diverged_epoch is not None
    assert len(result.test_acc) == result.diverged_epoch - 1  # the curve stops where it blew up


def test_a_non_finite_loss_in_the_first_epoch(digits):
    d = load_dataset("digits", subset=100)
    x = d.x_train.clone()
    x[7] = float("inf")
    result = train(_mlp(), Batches(x, d.y_train, 25), digits[1], TrainConfig(epochs=3))
    assert result.diverged and result.diverged_epoch == 1
    assert result.test_acc == [] and result.best_acc is None
    out = result.to_dict()
    assert out["diverged"] and out["diverged_epoch"] == 1 and out["first_epoch_acc"] is None


def test_schedule_warmup_then_cosine_to_zero():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert lr_factor(50, 100, 0, "constant") == 1.0


def test_bad_settings_are_refused(digits):
    with pytest.raises(ValueError, match="optimizer"):
        train(_mlp(), *digits, TrainConfig(optimizer="lbfgs"))
