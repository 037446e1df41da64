"""InitCallback in a real `transformers.Trainer` on a tiny GPT-2 built from a config (offline):
the same result as calling GradInit on the Trainer's batches with the model's own loss and the
Trainer's optimizer as target, RNG untouched, settings checked at construction, skipped when
resuming, and under torchrun on 2 CPU processes identical ranks equal to one process on the
union of their batches."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import initlab
from helpers.dist_workers import one_thread
from helpers.hf_trainer import IDS, SETTINGS, Snapshot, T, gpt2, trainer
from initlab.integrations.hf import InitCallback, causal_lm_batches

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def assert_params_close(got: dict, want: dict, rtol: float) -> None:
    for k, w in want.items():
        err = (got[k] - w).norm() / max(w.norm(), 1e-12)
        assert err <= rtol, f"{k}: relative difference {err:.2e}"


def test_train_initializes_with_the_models_loss_and_the_trainers_optimizer(tmp_path):
    before, init, after = Snapshot(), InitCallback("gradinit", **SETTINGS), Snapshot()
    t = trainer([before, init, after], str(tmp_path))
    t.train()
    assert init.report.settings["target"] == "adam" and init.report.settings["lr"] == 1e-3
    assert {h["branch"] for h in init.report.history} == {"constraint", "objective"}
    model = gpt2()  # the Trainer's batches: rows in order, 4 at a time
    report = initlab.gradinit(model, causal_lm_batches(IDS, T, 4), target="adam", lr=1e-3,
                              **SETTINGS)
    assert init.report.scales.keys() == report.scales.keys()
    assert init.report.scales == pytest.approx(report.scales, rel=1e-6)
    assert_params_close(after.params, model.state_dict(), 1e-6)
    assert torch.equal(before.rng, after.rng)                   # the RNG as it was
    assert t.state.global_step == 2                             # training went on


def test_settings_are_checked_at_construction():
    with pytest.raises(TypeError, match="did you mean 'steps'"):
        InitCallback("gradinit", stepz=3)
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        InitCallback("gradinit", steps=-1)  # 0: the default search's warm start alone
    with pytest.raises(KeyError, match="available"):
        InitCallback("gradinot")


def test_skips_when_resuming_or_already_initialized(tmp_path):
    model = gpt2()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    init = InitCallback("gradinit", **SETTINGS)
    state = SimpleNamespace(global_step=5, is_world_process_zero=True)
    init.on_train_begin(None, state, None, model=model, train_dataloader=None)
    assert init.report is None and init.skipped == "resuming at step 5"
    initlab.gradinit(model, causal_lm_batches(IDS, T, 4), steps=1, faithful=True)
    again = InitCallback("lsuv")
    again.on_train_begin(None, SimpleNamespace(global_step=0, is_world_process_zero=True), None,
                         model=model, train_dataloader=None)
    assert "already had gradinit" in again.skipped
    assert any(not torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_any_method_runs_on_the_trainers_batches(tmp_path):
    init = InitCallback("lsuv", seed=0)       # inputs only: no loss needed
    trainer([init], str(tmp_path), max_steps=1).train()
    assert type(init.report).__name__ == "LayerReport"
    # GPT-2's blocks use transformers' Conv1D; its one nn.Linear is the (tied) output layer.
    assert [h["layer"] for h in init.report.history] == ["lm_head"]
    assert abs(init.report.history[0]["std_after"] - 1) < 0.1
    rule, snap = InitCallback("kaiming", seed=0), Snapshot()   # a fixed rule: no data
    trainer([rule, snap], str(tmp_path), max_steps=1).train()
    w = snap.params["lm_head.weight"]         # (V, 16): He normal, fan_in 16, ReLU gain
    assert w.std().item() == pytest.approx(2 ** 0.5 / 4, rel=0.15)   # GPT-2's own: 0.02


def test_torchrun_two_processes_identical_and_equal_to_one_process(tmp_path):
    script = Path(__file__).parents[2] / "helpers" / "hf_trainer.py"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(script.parents[1]),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script),
                           str(tmp_path)], env=env, cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert r0["scales"] == r1["scales"]
    # Each rank reads every other batch of 4 rows: together, the k-th steps are 8 rows in order.
    model = gpt2()
    report = initlab.gradinit(model, causal_lm_batches(IDS, T, 8), target="adam", lr=1e-3,
                              **SETTINGS)
    assert [h["branch"] for h in r0["history"]] == [h["branch"] for h in report.history]
    assert_params_close(r0["params"], model.state_dict(), 1e-5)
