"""Distributed GradInit: 2 CPU processes (gloo, file:// rendezvous) against one process on the
union of their batches; DDP-wrapped models; failures on one rank. One spawn runs every scenario
(dist_workers.py); the one-process references are computed here, independently."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import initlab
from helpers.dist_workers import (
    ALPHA,
    CASES,
    RUNS,
    WORLD,
    mlp,
    one_thread,
    rank_batches,
    union_batches,
    worker,
)
from initlab.core.loss import default_loss
from initlab.core.params import trainable_params
from initlab.methods.gradinit import GradInitConfig, GradInitSearch

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)




@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("dist")
    ctx = mp.spawn(worker, args=(str(tmp / "rendezvous"), str(tmp)), nprocs=WORLD, join=False)
    try:  # a hang is stopped by pytest-timeout; the workers must not outlive it
        while not ctx.join():
            pass
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    results = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r} crashed:\n{res['crash']}"
    return results


def assert_rel_close(got: dict, want: dict, rtol: float = 1e-5) -> None:
    for k, w in want.items():
        err = (got[k].double() - w.double()).norm() / w.double().norm().clamp_min(1e-30)
        assert err <= rtol, f"{k}: relative difference {err:.2e}"


def assert_equal_to_one_process(r0: dict, r1: dict, model, report) -> None:
    for k in r0["params"]:  # identical on every rank, bitwise
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert r0["history"] == [dict(h, seconds=h2["seconds"]) for h, h2 in zip(r1["history"], r0["history"])]
    assert_rel_close(r0["params"], model.state_dict())
    assert [h["branch"] for h in r0["history"]] == [h["branch"] for h in report.history]
    assert {h["branch"] for h in report.history} == {"constraint", "objective"}, "test needs both"
    for mine, ref in zip(r0["history"], report.history):
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-9)
        assert mine["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-9)


@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_equal_one_process_on_the_union(ranks, name):
    model = mlp(0)
    report = initlab.gradinit(model, union_batches(), **RUNS[name])
    assert_equal_to_one_process(ranks[0][name], ranks[1][name], model, report)


@pytest.mark.parametrize("name", list(CASES))
def test_batch_norm_dict_batches_and_split_batching(ranks, name):
    """Batch norm (each rank normalizes its own rows: the one-process loss does the same per
    rank), dict batches to `model(**batch).loss`, and split batching (the one-process batch's
    thirds are the union of the ranks' thirds)."""
    for r in ranks:
        assert "error" not in r[name], r[name].get("error")
    build, _, union, loss_fn, settings = CASES[name]
    model = build(0)
    report = initlab.gradinit(model, union(), loss_fn=loss_fn, **settings)
    assert_equal_to_one_process(ranks[0][name], ranks[1][name], model, report)
    if name == "batchnorm":  # and the per-rank statistics matter: one batch norm over the union
        pooled = build(0)     # of the rows gives another result
        initlab.gradinit(pooled, union(), loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                         **settings)
        assert not torch.allclose(pooled[0].weight, model[0].weight, rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", ["constraint", "second_order"])
def test_scale_gradient_of_the_union(ranks, name):
    """One step's averaged dN(G)/dalpha and second-order dJ/dalpha against the one-process
    autograd formulas on the union of S (and of S~)."""
    cfg = GradInitConfig(**RUNS["second_order" if name == "second_order" else "sgd"])
    model = mlp(0)
    search = GradInitSearch(model, trainable_params(model), default_loss, cfg)
    per = [rank_batches(r) for r in range(WORLD)]
    S = (torch.cat([p[k][0] for p in per for k in (0, 1)]), torch.cat([p[k][1] for p in per for k in (0, 1)]))
    first = search.first_pass(ALPHA, S, graph=True)
    if name == "constraint":
        want = search.constraint_grad(first)
    else:
        S_tilde = (torch.cat([p[2][0] for p in per]), torch.cat([p[2][1] for p in per]))
        want, _, _ = search.objective_grad(first, S_tilde)
    for rank in ranks:
        got = rank[f"grad_{name}"]
        assert got["gnorm"] == pytest.approx(first["gnorm"].item(), rel=1e-12)
        torch.testing.assert_close(got["da"], want, rtol=1e-9, atol=1e-12)
    assert want.abs().min() > 1e-6  # every entry is a real check


def test_ddp_wrapper_scaled_and_still_trains(ranks):
    ref = mlp(0, torch.float32)
    initlab.gradinit(ref, union_batches(dtype=torch.float32), **RUNS["sgd"])
    for rank in ranks:
        assert_rel_close(rank["ddp"]["after_init"], ref.state_dict())
    # The DDP step after GradInit: gradients averaged across ranks = one step on the union.
    x = torch.cat([rank_batches(r, dtype=torch.float32)[0][0] for r in range(WORLD)])
    y = torch.cat([rank_batches(r, dtype=torch.float32)[0][1] for r in range(WORLD)])
    stepped = copy.deepcopy(ref)
    stepped.load_state_dict(ranks[0]["ddp"]["after_init"])
    opt = torch.optim.SGD(stepped.parameters(), lr=0.1)
    F.cross_entropy(stepped(x), y).backward()
    opt.step()
    for rank in ranks:
        assert_rel_close(rank["ddp"]["after_step"], stepped.state_dict())
        assert not torch.equal(rank["ddp"]["after_step"]["0.weight"], rank["ddp"]["after_init"]["0.weight"])


def test_bare_modules_that_differ_end_identical_from_rank_0(ranks):
    a, b = ranks[0]["bare_differing"], ranks[1]["bare_differing"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = mlp(0)  # rank 0's construction
    initlab.gradinit(model, union_batches(), **RUNS["sgd"])
    assert_rel_close(a, model.state_dict())


def test_default_search_stops_at_the_same_iteration_everywhere(ranks):
    """The stopping rule, the warm start and the guard decide on rank means: the ranks stop
    together, at the iteration a one-process run on the union stops (checked above: equal
    histories), and the decision itself is one vote (any rank's True is everyone's)."""
    r0, r1 = ranks[0]["default"], ranks[1]["default"]
    assert r0["outcome"] == r1["outcome"]
    assert r0["outcome"]["stop"] == "converged"
    assert r0["outcome"]["iterations"] < RUNS["default"]["steps"]
    report = initlab.gradinit(mlp(0), union_batches(), **RUNS["default"])
    assert report.outcome["stop"] == "converged"
    assert report.outcome["iterations"] == r0["outcome"]["iterations"]
    assert report.outcome["guard"]["start"] == pytest.approx(r0["outcome"]["guard"]["start"],
                                                             rel=1e-9)
    for rank in ranks:
        assert rank["vote"] == [True, False, True]


@pytest.mark.parametrize("name", ["fail_first_pass", "fail_objective", "fail_second_order",
                                  "fail_warm_start", "fail_guard"])
def test_failure_on_one_rank_stops_every_rank_with_models_unchanged(ranks, name):
    failed, other = ranks[1][name], ranks[0][name]
    assert failed["type"] == "ValueError" and "boom" in failed["message"]
    assert other["type"] == "RemoteRankError"
    assert "rank 1" in other["message"] and "boom" in other["message"]
    assert failed["unchanged"] and other["unchanged"]


def test_settings_checked_on_every_rank(ranks):
    assert ranks[1]["bad_setting"]["type"] == "ValueError"
    assert "lr must be" in ranks[1]["bad_setting"]["message"]
    assert ranks[0]["bad_setting"]["type"] == "RemoteRankError"
    for r in ranks:
        assert r["different_setting"]["type"] == "ValueError"
        assert "different GradInit settings" in r["different_setting"]["message"]
        assert r["still_in_step"]


def test_distributed_false_searches_alone(ranks):
    model = mlp(0)
    initlab.gradinit(model, rank_batches(0), **RUNS["sgd"])  # one process, rank 0's data only
    for k, v in model.state_dict().items():
        assert torch.equal(ranks[0]["alone"][k], v), k
    assert "alone" not in ranks[1]
