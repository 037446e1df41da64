"""The grid's methods: which cells run them, what each passes to the registry, how their cached
initializations are named."""
import pytest

from initlab.lab.translation import inits
from initlab.methods.gradinit import TRANSFORMER_RECIPE


def test_which_cells_run_which_methods():
    assert inits.runs_in("gradinit-authors", "adam") and not inits.runs_in("gradinit-authors", "sgd")
    assert inits.runs_in("gradinit-sgd", "sgd") and not inits.runs_in("gradinit-sgd", "adam")
    assert all(inits.runs_in(m, o) for m in ("default", "warmup", "gradinit", "gradinit-warmstart",
                                             "tfixup", "admin", "deepnet") for o in ("adam", "sgd"))
    assert "gradinit-sgd" not in inits.DEFAULT_METHODS


def test_cache_keys():
    key = lambda m, o="adam", lr=1e-3, seed=0: inits.init_key(  # noqa: E731
        m, o, lr, seed, gradinit_steps=780, gradinit_sgd_steps=200)
    assert key("default") is None and key("warmup") is None
    assert key("gradinit-authors", lr=2e-3) == "gradinit-authors-s780"   # one search, every rate
    assert key("gradinit") == "gradinit-adam-lr0.001"
    assert key("gradinit", "sgd", 0.15, seed=1) == "gradinit-sgd-lr0.15-seed1"
    assert key("gradinit-sgd", "sgd", 0.15) == "gradinit-sgd-lr0.15-s200"
    assert key("admin", seed=2) == "admin-seed2"
    assert key("gradinit-warmstart", "sgd", 0.15) == key("gradinit-warmstart") == "gradinit-warmstart"
    given = dict(warm_start=False, scale_lr=0.01)   # named in the key, sorted
    assert inits.init_key("gradinit", "adam", 1e-3, 1, gradinit_steps=780, gradinit_sgd_steps=200,
                          gradinit_settings=given) == (
        "gradinit-adam-lr0.001-scale_lr=0.01-warm_start=False-seed1")
    assert inits.init_key("admin", "adam", 1e-3, 0, gradinit_steps=780, gradinit_sgd_steps=200,
                          gradinit_settings=given) == "admin"


@pytest.mark.parametrize("method,optimizer,expected", [
    ("gradinit", "adam", dict(target="adam", lr=2e-3, betas=(0.9, 0.98), warm_start=False)),
    ("gradinit", "sgd", dict(target="sgd", lr=2e-3)),
    ("gradinit-authors", "adam", dict(TRANSFORMER_RECIPE, steps=7, batching="split")),
    ("gradinit-sgd", "sgd", dict(TRANSFORMER_RECIPE, steps=5, batching="split", target="sgd",
                                 lr=2e-3, gamma=1.0)),
    ("admin", "sgd", {}),
    ("gradinit-warmstart", "adam", {}),
])
def test_what_reaches_the_registry(monkeypatch, method, optimizer, expected):
    calls = []
    monkeypatch.setattr(inits, "initialize", lambda model, name, **kw: calls.append((name, kw)))
    data = type("D", (), {"src": {"train": ["x"]}, "tgt": {"train": ["y"]}})()
    inits.apply_method("model", method, data, optimizer=optimizer, lr=2e-3, seed=3, batch_size=4,
                       label_smoothing=0.1, gradinit_steps=7, gradinit_sgd_steps=5, device="cpu",
                       gradinit_settings=dict(warm_start=False) if optimizer == "adam" else None)
    (name, kw), = calls
    assert name == {"gradinit-sgd": "gradinit-authors"}.get(method, method)
    batches, loss_fn = kw.pop("data"), kw.pop("loss_fn")
    assert kw == expected
    assert batches.seed == 3 + 7919 and batches.shuffle and batches.batch_size == 4
    assert loss_fn.keywords == {"label_smoothing": 0.1}


@pytest.mark.parametrize("method", ["default", "warmup", "nope"])
def test_methods_without_an_init_to_compute_are_refused(method):
    with pytest.raises(ValueError, match="no initialization to compute"):
        inits.apply_method("model", method, None, optimizer="adam", lr=1e-3, seed=0,
                           batch_size=4, label_smoothing=0.1, gradinit_steps=1,
                           gradinit_sgd_steps=1, device="cpu")


def test_the_report_summary_keeps_plain_values():
    report = type("R", (), {"kind": "scales", "history": [{}, {}, {}],
                            "outcome": {"stop": "converged", "guard": {"start": 1.5}}})()
    assert inits.report_summary(report) == dict(kind="scales", iterations=3, outcome={
        "stop": "converged", "guard": {"start": 1.5}})
    assert inits.report_summary(None) == {}
