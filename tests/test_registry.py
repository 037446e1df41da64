"""The registry serves every method by name; every method keeps modes and buffers as they were."""
import importlib
import logging
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from helpers.methods import Block, assert_same, batches, snapshot

ISSUE_METHODS = ["gradinit", "metainit", "lsuv", "fixup", "skipinit", "zero", "tfixup", "emergence",
                 "kaiming", "xavier", "orthogonal"]
DATA_DRIVEN = {"gradinit", "metainit", "lsuv"}
MODULES = dict(metainit="metainit", lsuv="lsuv", fixup="fixup", skipinit="skipinit", zero="zero",
               tfixup="tfixup", emergence="emergence", kaiming="classic", xavier="classic",
               orthogonal="classic")


class Zoo(nn.Module):
    """Batch norm, dropout, marked residual branches and a Transformer layer in one small model."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 64)
        self.bn = nn.BatchNorm1d(64)
        self.drop = nn.Dropout(0.2)
        self.blocks = nn.Sequential(Block(64, 2), Block(64, 2))
        self.attn = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        h = self.drop(F.relu(self.bn(self.stem(x))))        # (B, 64)
        h = self.blocks(h)
        h = self.attn(h.reshape(-1, 4, 16)).reshape(-1, 64)  # 4 tokens of 16
        return self.head(h)


SETTINGS = dict(metainit=dict(steps=2), lsuv={}, fixup={}, skipinit={},
                zero={}, tfixup={}, emergence={}, kaiming={}, xavier={}, orthogonal={})


def test_every_method_of_the_issue_is_registered_in_order():
    names = initlab.available_methods()
    assert [n for n in names if n in ISSUE_METHODS] == ISSUE_METHODS
    for name in ISSUE_METHODS:
        info = initlab.method_info(name)
        assert info.description and info.paper, name
        assert re.search(r"(19|20)\d\d", info.paper), f"{name}: the paper entry names no year"
        assert info.needs_data == (name in DATA_DRIVEN), name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_method_file_cites_its_paper_and_has_a_settings_dataclass(name):
    module = importlib.import_module(f"initlab.methods.{MODULES[name]}")
    doc = module.__doc__ or ""
    assert re.search(r"(19|20)\d\d", doc), f"{name}: module docstring cites no paper"
    assert "depart" in doc or "No departure" in doc, f"{name}: docstring names no departures"
    assert any(k.endswith("Config") and hasattr(v, "__dataclass_fields__")
               for k, v in vars(module).items()), name


@pytest.mark.parametrize("name", sorted(SETTINGS))   # gradinit: in its own tests
def test_modes_and_buffers_are_left_as_they_were(name):
    torch.manual_seed(0)
    model = Zoo().train()
    model(torch.randn(8, 6))                               # non-trivial running statistics
    model.attn.eval()                                      # a mix of modes to keep
    before = snapshot(model)
    data = batches(3) if name in DATA_DRIVEN else None
    initlab.initialize(model, name, data, **SETTINGS[name])
    assert_same(model, before, params=False)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before["params"][n])]
    assert changed, f"{name} changed nothing"


def test_initialize_checks_data_against_the_method_kind():
    model = Zoo()
    before = snapshot(model)
    with pytest.raises(ValueError, match="fixed rule"):
        initlab.initialize(model, "zero", batches(1))
    with pytest.raises(ValueError, match="learns from data"):
        initlab.initialize(model, "lsuv")
    with pytest.raises(KeyError, match="available"):
        initlab.initialize(model, "no-such-method")
    with pytest.raises(TypeError):
        initlab.initialize(model, "fixup", not_a_setting=1)
    assert_same(model, before)


def test_metainit_data_free_through_the_registry():
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    report = initlab.initialize(model, "metainit", data_free=True, input_shape=[16, 6],
                                num_classes=3, steps=2, seed=0)
    assert report.method == "metainit" and len(report.history) == 2


def test_lsuv_reaches_transformer_feed_forward_layers(caplog):
    model = Zoo()
    with caplog.at_level(logging.WARNING, logger="initlab"):
        report = initlab.initialize(model, "lsuv", batches(3))
    measured = {h["layer"] for h in report.history}
    assert {"stem", "attn.linear1", "attn.linear2", "head"} <= measured
    assert "attn.self_attn.out_proj" in caplog.text       # called inside attention: warned


def test_analytic_rules_read_their_example_input_from_data():
    x = torch.randn(64, 6)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4))
    initlab.initialize(model, "autoinit", data=[(x, torch.zeros(64, dtype=torch.long))])
    by_data = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4))
    initlab.initialize(model, "autoinit", example_input=x)
    assert all(torch.equal(a, b) for a, b in zip(by_data, model.parameters()))
    with pytest.raises(ValueError, match="example_input=<tensor>"):
        initlab.initialize(model, "autoinit", data=[{"x": x}])
    with pytest.raises(ValueError, match="fixed rule and takes no data"):
        initlab.initialize(model, "kaiming", data=[(x, x)])


def test_unknown_settings_are_refused_before_any_work_with_the_closest_name():
    model = Zoo()
    before = snapshot(model)
    with pytest.raises(TypeError, match="gradinit has no setting 'stepz'; did you mean 'steps'"):
        initlab.gradinit(model, batches(1), stepz=3)
    with pytest.raises(TypeError, match="lsuv has no setting 'tolerance'"):
        initlab.initialize(model, "lsuv", batches(1), tolerance=0.1)
    assert_same(model, before)
    assert initlab.registry.setting_names("gradinit-authors") == \
        initlab.registry.setting_names("gradinit")
    initlab.registry.check_settings("fixup", {"mode": "fan_in"})
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out'"):
        initlab.registry.check_settings("fixup", {"mode": "sideways"})


def test_a_second_run_of_the_same_method_warns():
    import warnings
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # the first run: no warning
        initlab.gradinit(model, batches(2), steps=2)
    with pytest.warns(UserWarning, match="gradinit already initialized this model; running it "
                      "again starts from its result"):
        initlab.gradinit(model, batches(2), steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # another method on top: no warning
        initlab.metainit(model, batches(2), steps=1)
