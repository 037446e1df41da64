"""InitCallback in a real Lightning Trainer.fit on digits: the same result as calling GradInit
directly, RNG untouched, skipped on resume, and under strategy="ddp" on 2 CPU processes (a
subprocess, since Lightning's ddp launcher re-runs the script) identical ranks equal to one
process on the union of their batches."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler, default_collate

import initlab
from helpers.dist_workers import one_thread
from helpers.lightning_digits import SETTINGS, DigitsNet, Snapshot, loader, trainer
from initlab.integrations.lightning import InitCallback

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def direct(batch_size: int) -> tuple[DigitsNet, initlab.InitReport]:
    model = DigitsNet(0)
    return model, initlab.gradinit(model, list(loader(batch_size)), loss_fn=ce, **SETTINGS)


def assert_params_close(got: dict, want: dict, rtol: float) -> None:
    for k, w in want.items():
        err = (got[k] - w).norm() / w.norm()
        assert err <= rtol, f"{k}: relative difference {err:.2e}"


def test_fit_initializes_with_the_training_step_loss():
    init, snap = InitCallback("gradinit", **SETTINGS), Snapshot()
    t = trainer([init, snap])
    t.fit(DigitsNet(0), loader())
    model, report = direct(32)
    assert_params_close(snap.params, model.state_dict(), 1e-6)
    assert init.report.scales.keys() == report.scales.keys()  # names as in the module
    assert init.report.scales == pytest.approx(report.scales, rel=1e-6)
    assert t.global_step == 3  # training went on
    assert not torch.equal(snap.params["net.1.weight"], DigitsNet(0).state_dict()["net.1.weight"])


def test_rng_isolated_and_loss_fn_option():
    before, after = Snapshot(), Snapshot()
    init = InitCallback("gradinit", loss_fn=ce, **SETTINGS)
    trainer([before, init, after]).fit(DigitsNet(0), loader(shuffle=True))
    assert torch.equal(before.rng, after.rng)
    assert not torch.equal(before.params["net.1.weight"], after.params["net.1.weight"])
    assert init.report is not None and init.skipped is None


def test_autoinit_takes_its_example_input_from_the_train_dataloader():
    init, snap = InitCallback("autoinit", seed=0), Snapshot()
    trainer([init, snap]).fit(DigitsNet(0), loader())
    assert init.report is not None and init.report.method == "autoinit"
    model = DigitsNet(0)                  # the same draws as AutoInit on the first batch's inputs
    initlab.autoinit(model, next(iter(loader()))[0], seed=0)
    for k, v in model.state_dict().items():
        assert torch.allclose(snap.params[k], v, rtol=1e-6, atol=1e-7), k
    assert not torch.equal(snap.params["net.1.weight"], DigitsNet(0).state_dict()["net.1.weight"])


def test_resume_from_checkpoint_skips(tmp_path):
    t = trainer([InitCallback("gradinit", **SETTINGS)])
    t.fit(DigitsNet(0), loader())
    t.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    init, snap = InitCallback("gradinit", **SETTINGS), Snapshot()
    trainer([init, snap], max_steps=5).fit(DigitsNet(1), loader(), ckpt_path=tmp_path / "last.ckpt")
    assert init.report is None and "resuming" in init.skipped
    for k, v in saved.items():
        assert torch.equal(snap.params[k], v), k


def test_ddp_strategy_two_processes(tmp_path):
    script = Path(__file__).parents[1] / "helpers" / "lightning_digits.py"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(script.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert r0["scales"] == r1["scales"]
    # Lightning gives each rank a DistributedSampler (shuffled, seed 0, epoch 0): one process
    # on the union of the ranks' k-th batches of 16.
    data = loader().dataset
    shards = [list(DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0))
              for r in (0, 1)]
    union = [default_collate([data[i] for r in (0, 1) for i in shards[r][16 * k:16 * k + 16]])
             for k in range(len(shards[0]) // 16)]
    model = DigitsNet(0)
    report = initlab.gradinit(model, union, loss_fn=ce, **SETTINGS)
    assert_params_close(r0["params"], model.state_dict(), 1e-5)
    assert [h["branch"] for h in r0["history"]] == [h["branch"] for h in report.history]


def test_settings_are_checked_when_the_callback_is_built():
    with pytest.raises(TypeError, match="gradinit has no setting 'stepz'; did you mean 'steps'"):
        InitCallback("gradinit", stepz=3)
    with pytest.raises(ValueError, match="tol must be a positive finite number"):
        InitCallback("lsuv", tol=-1)
