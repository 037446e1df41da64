"""GradInitConfig's checks, and gamma = inf: no constraint step ever (the default of the authors'
train_cifar.py, `--gradinit-gamma`)."""
import math

import pytest
import torch

import initlab
from helpers.methods import batches, mlp
from initlab import GradInitConfig


@pytest.mark.parametrize("faithful", [False, True])
def test_infinite_gamma_never_takes_a_constraint_step(faithful):
    torch.manual_seed(0)
    model = mlp()
    same = [p.detach().clone() for p in model.parameters()]
    # gamma = 1e-3 is far below |g| here: with a finite bound, every step would be a constraint step
    bound = initlab.gradinit(mlp(), batches(4), steps=5, gamma=1e-3, faithful=faithful)
    assert {h["branch"] for h in bound.history} == {"constraint"}
    torch.manual_seed(0)
    free = initlab.gradinit(model, batches(4), steps=5, gamma=math.inf, faithful=faithful)
    assert [h["branch"] for h in free.history] == ["objective"] * 5
    assert not any(h["recomputed"] for h in free.history)
    assert free.settings["gamma"] == math.inf
    # The same search as a bound no gradient reaches (up to the double-backward graph, which
    # only the finite bound builds on its first iteration).
    torch.manual_seed(0)
    huge = initlab.gradinit(mlp(), batches(4), steps=5, gamma=1e300, faithful=faithful)
    assert free.scales == pytest.approx(huge.scales, rel=1e-6)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), same))


def test_default_gamma_stays_one_and_bad_values_are_refused():
    assert GradInitConfig().resolved().gamma == 1.0                           # sgd target
    assert GradInitConfig(faithful=True, target="adam").resolved().gamma == 1.0  # the authors'
    assert GradInitConfig(target="adam").resolved().gamma == 1000.0           # default search
    GradInitConfig(gamma=math.inf).validate()
    for bad in (0.0, -1.0, -math.inf, math.nan, "inf"):
        with pytest.raises(ValueError, match="gamma must be a positive number or inf"):
            GradInitConfig(gamma=bad).validate()
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        GradInitConfig(lr=math.inf).validate()
