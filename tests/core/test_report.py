"""Reports per kind of method: what `summary()` and `plot()` say, what `apply` replays or
refuses, saving and loading (old files too), and tensor names of `torch.compile`d models; and,
as a property of every method that returns a report, on drawn models and settings: a saved and
loaded report replays the weights exactly on a fresh copy, or `apply` refuses and changes nothing."""
import copy
import os
import tempfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import initlab
from helpers import every_method
from helpers.methods import batches, mlp
from initlab.core.finish import finish
from initlab.core.report import DrawReport, LayerReport, ScalesReport, VarianceReport


def stds_by_hook(model, x):
    """Each Linear's output std on `x`, measured here, independently of the method."""
    out = {}

    def hook(name):
        def record(module, args, y):
            out.setdefault(name, y.std().item())
        return record
    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
             if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def test_gradinit_report_summarizes_its_search_and_replays(tmp_path):
    model = mlp()
    fresh = copy.deepcopy(model)
    report = initlab.gradinit(model, batches(4), steps=6, gamma=0.5)
    assert type(report) is ScalesReport
    branches = [h["branch"] for h in report.history]
    text = report.summary()
    assert f"{len(report.scales)} tensors scaled" in text
    assert (f"6 iterations: {branches.count('objective')} objective, "
            f"{branches.count('constraint')} constraint") in text
    assert f"loss {report.history[0]['loss']:.4g} -> {report.history[-1]['loss']:.4g}" in text
    report.save(tmp_path / "r.pt")
    loaded = initlab.InitReport.load(tmp_path / "r.pt")
    assert type(loaded) is ScalesReport and loaded == report
    initlab.apply(fresh, tmp_path / "r.pt")
    for p, q in zip(model.parameters(), fresh.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_metainit_report_shows_the_gradient_quotient():
    report = initlab.metainit(mlp(), batches(3), steps=4)
    assert type(report) is ScalesReport
    gq = [h["gq"] for h in report.history]
    assert (f"gradient quotient over 4 steps: {gq[0]:.4g} -> {gq[-1]:.4g} (min {min(gq):.4g})"
            in report.summary())
    fig = report.plot()
    right = fig.axes[1]
    assert list(right.lines[0].get_ydata()) == gq  # the quotient per step


def test_lsuv_report_before_and_after_and_nothing_to_replay():
    torch.manual_seed(3)
    model = mlp((6, 32, 32, 3))
    fresh = copy.deepcopy(model)
    x = torch.randn(512, 6) * 10
    report = initlab.lsuv(model, [x], seed=0)
    assert type(report) is LayerReport
    assert [h["layer"] for h in report.history] == ["0", "2", "4"]
    measured = stds_by_hook(model, x)       # the batch LSUV checked the finished model on
    for h in report.history:
        assert h["std_after"] == pytest.approx(measured[h["layer"]], rel=1e-5)
        assert abs(h["std_after"] - 1) < 0.1
    assert report.history[0]["std_first"] > 3  # the inputs have std 10
    lines = report.summary().splitlines()
    assert lines[0] == "lsuv: 3 layers brought to output std 1 (std before -> after, tries)"
    h = report.history[1]
    assert lines[2].split() == ["2", f"{h['std_first']:.4g}", "->", f"{h['std_after']:.4g}",
                                f"({h['tries']})"]
    fig = report.plot()
    before, after = fig.axes[0].lines[:2]
    assert list(after.get_ydata()) == [h["std_after"] for h in report.history]
    assert list(before.get_ydata()) == [h["std_first"] for h in report.history]
    snapshot = [p.detach().clone() for p in fresh.parameters()]
    with pytest.raises(ValueError, match="nothing to replay: LSUV drew orthonormal weights"):
        initlab.apply(fresh, report)
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), snapshot))
    initlab.apply(fresh, initlab.gradinit(copy.deepcopy(fresh), batches(2), steps=1))  # unmarked


def test_autoinit_report_predicted_against_target_variance(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 3))
    report = initlab.autoinit(model, torch.randn(64, 6), signal_variance=2.0)
    assert type(report) is VarianceReport and report.target_variance == 2.0
    v = [h["output_var"] for h in report.history]
    text = report.summary()
    assert text.startswith("autoinit: 3 layers drawn for output variance 2")
    assert f"min {min(v):.4g}  max {max(v):.4g}" in text
    fig = report.plot()
    assert list(fig.axes[0].lines[0].get_ydata()) == v
    assert fig.axes[0].lines[1].get_ydata()[0] == 2.0            # the target line
    report.save(tmp_path / "a.pt")
    loaded = initlab.InitReport.load(tmp_path / "a.pt")
    assert type(loaded) is VarianceReport and loaded.target_variance == 2.0
    with pytest.raises(ValueError, match="AutoInit draws new weights"):
        initlab.apply(copy.deepcopy(model), loaded)


def test_archscale_report_in_degrees(tmp_path):
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.head(h + self.b(torch.relu(h)))

    report = initlab.archscale_init(Res(), seed=0)
    assert type(report) is DrawReport
    text = report.summary()
    assert text.splitlines()[0] == "archscale: 3 layers drawn, 1 of them feed a sum"
    assert "b: in-degree 2, std " in text
    with pytest.raises(ValueError, match="archscale draws new weights"):
        initlab.apply(Res(), report)
    assert len(report.plot().axes[0].patches) == 3


def test_files_saved_before_kinds_load_by_method(tmp_path):
    old = dict(method="lsuv", scales={}, shapes={"0.weight": [3, 6]}, history=[], settings={},
               version="0.1.0")
    torch.save(old, tmp_path / "lsuv.pt")
    assert type(initlab.InitReport.load(tmp_path / "lsuv.pt")) is LayerReport
    torch.save(dict(old, method="gradinit", scales={"0.weight": 2.0}), tmp_path / "g.pt")
    loaded = initlab.InitReport.load(tmp_path / "g.pt")
    assert type(loaded) is ScalesReport and loaded.scales == {"0.weight": 2.0}
    torch.save(dict(old, kind="hyperspace"), tmp_path / "new.pt")
    with pytest.raises(ValueError, match="unknown report kind 'hyperspace'"):
        initlab.InitReport.load(tmp_path / "new.pt")


def test_scales_plot_names_tensors_and_shows_zeros():
    model = mlp((6, 8, 3))
    report = finish(model, "x", settings={}, scales={"0.weight": 0.5, "0.bias": 0.0,
                                                     "2.weight": 2.0, "2.bias": 1.0})
    fig = report.plot()
    left = fig.axes[0]
    assert [t.get_text() for t in left.get_yticklabels()] == ["0.weight", "0.bias", "2.weight",
                                                              "2.bias"]
    assert [b.get_width() for b in left.patches] == [0.5, 0.0, 2.0, 1.0]
    zeros = [ln for ln in left.lines if ln.get_label() == "scale 0"]
    assert len(zeros) == 1 and list(zeros[0].get_ydata()) == [1]  # the bias at row 1, marked
    assert left.get_xscale() == "symlog"     # where 0 has a place
    xmin, _ = left.get_xlim()
    assert xmin <= 0


def test_compiled_models_report_plain_names_and_replay_both_ways():
    base = mlp()
    compiled = torch.compile(copy.deepcopy(base))            # never run: no compilation
    assert {n.split(".")[0] for n, _ in compiled.named_parameters()} == {"_orig_mod"}
    report = initlab.gradinit(compiled, batches(3), steps=3)
    assert set(report.scales) <= {n for n, _ in base.named_parameters()}
    plain = copy.deepcopy(base)
    initlab.apply(plain, report)                             # compiled -> plain
    for p, q in zip(plain.parameters(), compiled.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    other = torch.compile(copy.deepcopy(base))
    initlab.apply(other, initlab.gradinit(copy.deepcopy(base), batches(3), steps=3))  # plain -> compiled
    with pytest.raises(RuntimeError, match="already had gradinit scales"):
        initlab.apply(other, report)
    # A compiled submodule: its names lose `_orig_mod.` in the report too.
    outer = nn.Sequential(torch.compile(mlp()))
    report = finish(outer, "x", settings={}, scales={"0._orig_mod.0.weight": 2.0})
    assert report.scales == {"0.0.weight": 2.0} and "0.0.bias" in report.shapes
    assert all("_orig_mod" not in n for n in report.shapes)


def test_meta_models_are_refused_saying_how_to_materialize():
    with torch.device("meta"):
        model = mlp()
    for call in (lambda: initlab.gradinit(model, batches(1), steps=1),
                 lambda: initlab.initialize(model, "kaiming"),
                 lambda: initlab.apply(model, finish(mlp(), "x", settings={}, scales={"0.weight": 2.0}))):
        with pytest.raises(ValueError, match=r"meta device.*to_empty\(device=...\), then run its "
                                             "constructor's init"):
            call()


# ---- for every method that returns a report: apply(load(save(report))) replays it or refuses ---

def drawn_mlp(widths, act, bn):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm1d(b)] if bn else []
            layers.append(act())
    return nn.Sequential(*layers)


REPORTING = ["gradinit", "gradinit-authors", "metainit", "lsuv", "autoinit", "archscale", "admin",
             "deepnet"]


@pytest.mark.parametrize("name", REPORTING)
@given(data=st.data())
def test_a_saved_report_replays_exactly_or_apply_refuses(name, data):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    settings = {}
    if name in ("gradinit", "gradinit-authors", "metainit", "lsuv"):  # a drawn MLP, maybe with BN
        widths = [6] + data.draw(st.lists(st.integers(2, 12), min_size=1, max_size=3),
                                 label="hidden") + [3]
        act = data.draw(st.sampled_from([nn.Tanh, nn.ReLU, nn.GELU]), label="activation")
        bn = data.draw(st.booleans(), label="batch norm")
        build = lambda: drawn_mlp(widths, act, bn)  # noqa: E731
    else:
        build = every_method.CASES[name].build
    if name.startswith("gradinit"):
        settings = dict(steps=data.draw(st.integers(1, 4), label="steps"),
                        target=data.draw(st.sampled_from(["sgd", "adam"]), label="target"),
                        gamma=data.draw(st.sampled_from([1e-3, 0.5, 1e3]), label="gamma"))
    elif name == "metainit":
        settings = dict(steps=data.draw(st.integers(1, 3), label="steps"))
    elif name == "lsuv":
        settings = dict(orthonormal=data.draw(st.booleans(), label="orthonormal"))
    torch.manual_seed(seed)
    model = build()
    fresh = copy.deepcopy(model)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    report = every_method.run(name, model, **settings)
    with tempfile.TemporaryDirectory() as tmp:
        report.save(os.path.join(tmp, "init.pt"))
        loaded = initlab.InitReport.load(os.path.join(tmp, "init.pt"))
    assert loaded == report
    replays = name in ("gradinit", "gradinit-authors", "metainit") or (
        name == "lsuv" and not settings["orthonormal"])
    if not replays:
        with pytest.raises(ValueError, match="nothing to replay"):
            initlab.apply(fresh, loaded)
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, before[k]), k
        return
    initlab.apply(fresh, loaded)
    exact = name != "lsuv"   # LSUV rescales step by step; the report holds the product
    for (k, v), (_, w) in zip(model.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(w, v, rtol=0 if exact else 1e-5, atol=0, msg=k)
