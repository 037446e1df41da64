"""The default search: its batches (S = one of the user's batches), its stopping rule and the
reasons it reports, its warnings, and the all-or-nothing contract on its own steps."""
import copy
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from initlab.core.loss import default_loss
from initlab.methods.gradinit.default_search import REDUCTIONS, StoppingRule


def net():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3))


def data(n=12, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


class Opt:
    lr = 0.1


def record(value, branch="objective"):
    return dict(branch=branch, loss_after=value if branch == "objective" else None)


def test_stopping_rule_halves_on_each_plateau_and_stops_on_the_third():
    opt, window = Opt(), 4
    rule = StoppingRule(window, opt)
    values = [2.0] * window + [1.5] * window  # improves: no decision
    values += [1.495] * window                # under 1 %: first plateau
    values += [1.0] * window                  # improves again
    values += [1.0] * (2 * window)            # two more plateaus: the third ends it
    stops = [rule.update(record(v)) for v in values]
    assert stops == [False] * (len(values) - 1) + [True]
    assert opt.lr == pytest.approx(0.1 / 2 ** REDUCTIONS)


def test_stopping_rule_waits_while_constraint_steps_dominate():
    opt = Opt()
    rule = StoppingRule(4, opt)
    for _ in range(50):
        assert not rule.update(record(None, "constraint"))
    assert rule.constraint_only > 0 and opt.lr == 0.1 and rule.best is None


def test_stopping_rule_never_fires_while_the_objective_keeps_falling():
    rule = StoppingRule(5, Opt())
    assert not any(rule.update(record(1.0 / (1 + 0.05 * t))) for t in range(400))


def test_reasons_in_the_report_and_warnings(caplog):
    caplog.set_level(logging.WARNING)
    torch.manual_seed(0)
    converged = initlab.gradinit(net(), data(), steps=200, patience=4)
    assert converged.outcome["stop"] == "converged"
    assert len(converged.history) < 200 and len(converged.history) % 4 == 0
    assert "budget" not in caplog.text
    budget = initlab.gradinit(net(), data(), steps=5)
    assert budget.outcome["stop"] == "budget" and len(budget.history) == 5
    assert "budget of 5 iterations" in caplog.text
    never = initlab.gradinit(net(), data(), steps=12, patience=4, gamma=1e-9)
    assert never.outcome["stop"] == "constraint never met"
    assert {h["branch"] for h in never.history} == {"constraint"}
    assert "stayed above gamma" in caplog.text
    assert "stop: converged" in converged.summary()


def test_faithful_warns_when_its_scales_cannot_move(caplog):
    caplog.set_level(logging.WARNING)
    initlab.gradinit(net(), data(), steps=20, scale_lr=0.01, faithful=True)
    assert "can move by about +-0.2" in caplog.text
    caplog.clear()
    initlab.gradinit(net(), data(), steps=30, scale_lr=0.01, faithful=True)
    assert caplog.text == ""


def test_draw_order_held_out_first_then_one_batch_per_iteration():
    batches = data(n=30)
    seen = []

    def loss_fn(model, batch):
        seen.append(next(i for i, b in enumerate(batches) if b[0] is batch[0]))
        return default_loss(model, batch)

    report = initlab.gradinit(net(), batches, loss_fn=loss_fn, steps=3, gamma=1e9)
    assert [h["branch"] for h in report.history] == ["objective"] * 3
    # warm start on B1 (two passes: residual branches, then the scales);
    # iteration t: S = B(t+1), S~ = B(t+2); guard on H = B0 (2 passes
    # each for the start and the result: a step and the loss after it; 2 more for the warm
    # start when the result did worse than the start)
    guard = report.outcome["guard"]
    assert seen == [1, 1, 1, 2, 2, 3, 3, 4] + [0] * (6 if "warm start" in guard else 4)
    seen.clear()
    initlab.gradinit(net(), batches, loss_fn=loss_fn, steps=3, gamma=1e-9, guard=False,
                     warm_start=False)
    assert seen == [0, 1, 2]  # constraint steps: S only, one pass each (the graph predicted)


def test_each_iteration_uses_one_batch_of_the_users_size():
    sizes = []

    def loss_fn(model, batch):
        sizes.append(len(batch[0]))
        return default_loss(model, batch)

    initlab.gradinit(net(), data(size=10), loss_fn=loss_fn, steps=6)
    assert set(sizes) == {10}


@pytest.mark.parametrize("fail_call", [1, 3, 9])  # warm start, search, guard
def test_failure_anywhere_leaves_the_model_unchanged(fail_call):
    model = net()
    before = copy.deepcopy(model.state_dict())
    calls = [0]

    def loss_fn(m, batch):
        calls[0] += 1
        if calls[0] == fail_call:
            raise RuntimeError("boom")
        return F.cross_entropy(m(batch[0]), batch[1])

    with pytest.raises(RuntimeError, match="boom") as info:
        initlab.gradinit(model, data(), loss_fn=loss_fn, steps=3, gamma=1e9)
    notes = getattr(info.value, "__notes__", [])
    assert any("left unchanged" in n for n in notes)
    if fail_call == 1:  # before the search's first iteration
        assert any("at iteration 0" in n for n in notes), notes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_from_pytorch_default_init_scales_move_beyond_what_a_short_authors_search_can():
    """A deep ReLU MLP from PyTorch's default init needs its layers scaled by ~2.4 each; 20
    iterations of the authors' search leave every scale within 1 +- 0.2, the default search
    does not (and one training step from its result lowers the loss more)."""
    torch.manual_seed(0)
    layers = [nn.Linear(6, 32), nn.ReLU()]
    for _ in range(6):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 3))
    authors = initlab.gradinit(copy.deepcopy(model), data(), steps=20, faithful=True)
    assert all(0.8 <= s <= 1.2 for s in authors.scales.values())
    report = initlab.gradinit(model, data(), steps=20)
    weights = [s for n, s in report.scales.items() if n.endswith("weight")]
    assert sorted(weights)[len(weights) // 2] > 1.5


def test_max_growth_caps_each_scale_at_that_factor_of_its_warm_start():
    """Checked against the warm start run on its own (`gradinit-warmstart`): uncapped, the search
    on this LayerNorm MLP grows a scale past twice its warm-start value; with max_growth=g no
    scale ends above g times it, and at g=2 the cap is reached (so it binds, not the search)."""
    torch.manual_seed(0)
    layers = [nn.Linear(6, 32), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Linear(32, 32), nn.LayerNorm(32), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 3))
    warm = initlab.initialize(copy.deepcopy(model), "gradinit-warmstart", data()).scales

    def growth(**settings):
        report = initlab.gradinit(copy.deepcopy(model), data(), guard=False, **settings)
        return max(s / warm.get(n, 1.0) for n, s in report.scales.items())

    assert growth(max_growth=math.inf) > 2.5    # no cap
    assert growth(max_growth=2.0) == pytest.approx(2.0, rel=1e-9)
    assert growth(max_growth=1.0) <= 1 + 1e-9
    with pytest.raises(ValueError, match="max_growth must be a number >= 1"):
        initlab.gradinit(copy.deepcopy(model), data(), max_growth=0.5)
    with pytest.raises(ValueError, match="max_growth applies to the default search"):
        initlab.gradinit(copy.deepcopy(model), data(), max_growth=1.0, faithful=True)
