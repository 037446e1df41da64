"""The ending every method shares: failures noted as leaving the model unchanged, a report built
with the library's version, and the mark that makes `apply` refuse to scale twice."""
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import initlab
from initlab.core.finish import finish, plain_settings, unchanged_on_error


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
