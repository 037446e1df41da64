"""`initlab compare` under torchrun (2 CPU processes, gloo): DDP training with distributed GradInit
gives the curves of a one-process run with the same global batches; only rank 0 prints and logs."""
import json
import os
import subprocess
import sys

import pytest

from helpers.dist_workers import one_thread
from initlab.lab import cli
from initlab.lab.distributed import Shard

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

TINY = ["compare", "--data", "digits", "--subset", "200", "--test-subset", "100",
        "--batch-size", "64", "--epochs", "1", "--seeds", "1", "--model", "mlp", "--depth", "3",
        "--width", "16", "--methods", "default,gradinit", "--set", "gradinit.steps=6", "--quiet"]


def test_shards_partition_every_batch():
    batches = [(list(range(10 * k, 10 * k + 7)), list(range(7))) for k in range(3)]
    shards = [list(Shard(batches, r, 2)) for r in range(2)]
    for k, (x, _) in enumerate(batches):
        assert sorted(shards[0][k][0] + shards[1][k][0]) == x
        assert len(shards[0][k][0]) - len(shards[1][k][0]) in (0, 1)


def test_compare_under_torchrun_matches_one_process(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    loud = [t for t in TINY if t != "--quiet"]  # per-run and per-epoch log lines on
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "initlab",
                           *loud, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Results:") == 1  # only rank 0 reports
    for name in ("default", "gradinit"):  # and logs: each line once
        assert proc.stderr.count(f"{name} seed 0: first-epoch acc") == 1, proc.stderr
        assert proc.stderr.count(f"{name} seed 0 epoch 1/1:") == 1, proc.stderr
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["processes"] == 2
    assert cli.main([*TINY, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert one["processes"] == 1
    for name in ("default", "gradinit"):
        a, b = two["methods"][name], one["methods"][name]
        assert a["error"] is None and b["error"] is None
        ra, rb = a["runs"][0], b["runs"][0]
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["test_loss"] == pytest.approx(rb["test_loss"], rel=1e-4)
