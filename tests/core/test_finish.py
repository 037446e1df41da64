"""The ending every method shares: failures noted as leaving the model unchanged, a report built
with the library's version, and the mark that makes `apply` refuse to scale twice; and, as a
property of every registered method, a failure raised at a drawn point of its run (the loss,
the data, a forward hook, a tensor write, a `torch.nn.init` draw) leaves the model bitwise as
it was."""
import functools
import sys
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import initlab
from helpers import every_method
from helpers.methods import assert_same, batches, snapshot
from initlab.core.finish import finish, plain_settings, unchanged_on_error
from initlab.core.loss import default_loss
from initlab.core.report import applied_by


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")
def test_a_failure_is_noted_with_where_it_happened():
    step = {"at": 0}
    with pytest.raises(KeyError) as info:
        with unchanged_on_error("mymethod", lambda: f"at step {step['at']}"):
            step["at"] = 7  # `where` is read when the error happens, not before
            raise KeyError("boom")
    assert info.value.__notes__ == ["initlab.mymethod stopped at step 7; the model was left unchanged"]


def test_success_passes_through_and_interrupts_propagate():
    with unchanged_on_error("mymethod"):
        value = 3
    assert value == 3
    with pytest.raises(KeyboardInterrupt):
        with unchanged_on_error("mymethod", "somewhere"):
            raise KeyboardInterrupt


def test_finish_builds_the_report_and_marks_the_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    report = finish(model, "mymethod", settings={"lr": 0.1}, history=[{"iteration": 0}],
                    scales={"0.weight": 2.0})
    assert report.method == "mymethod" and report.version == initlab.__version__
    assert report.shapes == {"0.weight": [4, 3], "0.bias": [4], "2.weight": [2, 4], "2.bias": [2]}
    assert report.scales == {"0.weight": 2.0} and report.history == [{"iteration": 0}]
    fresh = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="already had mymethod scales"):
        initlab.apply(model, report)
    before = fresh[0].weight.detach().clone()
    initlab.apply(fresh, report)
    torch.testing.assert_close(fresh[0].weight, 2 * before)


def test_plain_settings_keeps_plain_values_and_reprs_the_rest():
    @dataclass
    class Cfg:
        lr: float = 0.1
        name: str = "x"
        seed: None = None
        leaves: tuple = (nn.Linear,)

    assert plain_settings(Cfg()) == {"lr": 0.1, "name": "x", "seed": None,
                                     "leaves": repr((nn.Linear,))}


# ---- for every method: a failure at any point of its run leaves the model as it was --------------

SITES = ("loss", "data", "forward", "write", "init")
INIT_FILLS = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]


class Ticking:
    """Batches whose drawing counts (and may fail)."""

    def __init__(self, good, tick):
        self.good, self.tick = good, tick

    def __iter__(self):
        for batch in self.good:
            self.tick()
            yield batch


def attempt(name: str, site: str, at, exc=RuntimeError):
    """Run method `name` with calls at `site` counted, raising `exc` at call `at` (None: never):
    the loss, the drawing of a batch, a forward hook on the first Linear, any `Tensor.copy_`
    (the way parameters are written), or any `torch.nn.init` fill (the way layers are drawn).
    Returns (model, snapshot before, calls, what was raised)."""
    model = every_method.build(name)
    before = snapshot(model)
    calls = [0]

    def tick():
        calls[0] += 1
        if calls[0] == at:
            raise exc(f"injected at {site} call {at}")

    loss_fn = data = handle = None
    if site == "loss":
        def loss_fn(m, batch):
            tick()
            return default_loss(m, batch)
    elif site == "data":
        data = Ticking(batches(4, size=8), tick)
    elif site == "forward":
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        handle = first.register_forward_hook(lambda *args: tick())
    def counted(fn):
        def call(*args, **kwargs):
            tick()
            return fn(*args, **kwargs)
        return call

    copy_, fills = torch.Tensor.copy_, {n: getattr(torch.nn.init, n) for n in INIT_FILLS}
    if site == "write":
        torch.Tensor.copy_ = counted(copy_)
    if site == "init":
        for n, fn in fills.items():
            setattr(torch.nn.init, n, counted(fn))
    raised = None
    try:
        every_method.run(name, model, data, loss_fn)
    except BaseException as e:  # noqa: B036  (KeyboardInterrupt is one of the injected kinds)
        raised = e
    finally:
        torch.Tensor.copy_ = copy_
        for n, fn in fills.items():
            setattr(torch.nn.init, n, fn)
        if handle is not None:
            handle.remove()
    return model, before, calls[0], raised


@functools.lru_cache(maxsize=None)
def call_counts(name: str) -> dict[str, int]:
    """How often a complete run of `name` calls each site (0: the method never calls it)."""
    counts = {}
    for site in SITES:
        _, _, n, raised = attempt(name, site, None)
        assert raised is None, raised
        counts[site] = n
    return counts


@pytest.mark.parametrize("name", sorted(every_method.CASES))
@given(data=st.data())
def test_a_failure_anywhere_in_a_run_leaves_the_model_bitwise_unchanged(name, data):
    counts = call_counts(name)
    site = data.draw(st.sampled_from([s for s in SITES if counts[s]]), label="site")
    at = data.draw(st.integers(1, counts[site]), label="at call")
    exc = data.draw(st.sampled_from([RuntimeError, KeyboardInterrupt]), label="raises")
    model, before, _, raised = attempt(name, site, at, exc)
    assert isinstance(raised, exc)
    chain = [raised]   # the injected error, or one that wraps it (torch.fx re-raises)
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    assert any(f"injected at {site} call {at}" == str(e) for e in chain), raised
    assert_same(model, before)
    assert applied_by(model) is None    # not marked as initialized either


def test_every_registered_method_is_in_the_property_tests():
    assert set(initlab.available_methods()) - set(every_method.CASES) == {"default"}
    assert all(sum(call_counts(n).values()) for n in every_method.CASES)  # a site to fail at
