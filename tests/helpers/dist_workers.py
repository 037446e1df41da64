"""Worker processes for the distributed GradInit tests (spawned with torch.multiprocessing).

Every rank runs the same list of scenarios in one gloo process group and saves what it saw to
`out/rank{r}.pt`; the test compares ranks with each other and with one-process runs on the
union of the ranks' batches.
"""
from __future__ import annotations

import datetime
import traceback
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import initlab
from initlab.core.distributed import current_ranks
from initlab.methods.gradinit import GradInitConfig
from initlab.methods.gradinit.distributed import DistributedGradInitSearch

WORLD = 2
PER_RANK = 6  # rows per batch on each rank


def one_thread():
    """A fixture body (tests wrap it): one torch thread for tiny models, which two threads only
    slow down on a busy 2-core machine (they spin-wait); the count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(seed: int, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                         nn.Linear(8, 3)).to(dtype)


def rank_batches(rank: int, n: int = 8, dtype=torch.float64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(PER_RANK, 5, generator=g, dtype=dtype),
             torch.randint(0, 3, (PER_RANK,), generator=g)) for _ in range(n)]


def union_batches(n: int = 8, dtype=torch.float64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    per = [rank_batches(r, n, dtype) for r in range(WORLD)]
    return [(torch.cat([p[k][0] for p in per]), torch.cat([p[k][1] for p in per])) for k in range(n)]


class DictNet(nn.Module):
    """Hugging Face style: `model(**batch)` returns an output with `.loss`."""

    def __init__(self, seed: int, dtype=torch.float64):
        super().__init__()
        self.net = mlp(seed, dtype)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        logits = self.net(inputs)
        return SimpleNamespace(loss=F.cross_entropy(logits, labels), logits=logits)


def bn_mlp(seed: int, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def per_rank_loss(model, batch) -> torch.Tensor:
    """The mean over the ranks present in the batch of each one's cross-entropy on its own rows:
    batch norm then normalizes each rank's rows alone, as it does on that rank."""
    x, y, rank = batch
    ranks = rank.unique(sorted=True).tolist()
    return sum(F.cross_entropy(model(x[rank == r]), y[rank == r]) for r in ranks) / len(ranks)


def tagged_batches(rank: int, n: int = 8) -> list[tuple[torch.Tensor, ...]]:
    return [(x, y, torch.full((PER_RANK,), rank)) for x, y in rank_batches(rank, n)]


def dict_batches(rank: int, n: int = 8) -> list[dict[str, torch.Tensor]]:
    return [dict(inputs=x, labels=y) for x, y in rank_batches(rank, n)]


def union_of(batches, n: int = 8) -> list:
    """Batch k of the one-process run: batch k of every rank, rank 0 first, field by field."""
    per = [batches(r, n) for r in range(WORLD)]
    if isinstance(per[0][0], dict):
        return [{f: torch.cat([p[k][f] for p in per]) for f in per[0][k]} for k in range(n)]
    return [tuple(torch.cat([p[k][f] for p in per]) for f in range(len(per[0][k])))
            for k in range(n)]


def union_of_thirds(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For split batching: third t of the union = third t of every rank's batch, so that the
    union's first / last two thirds (S, S~) are the union of the ranks' S and S~."""
    per, third = [rank_batches(r, n) for r in range(WORLD)], PER_RANK // 3
    rows = [slice(t * third, (t + 1) * third) for t in range(3)]
    return [tuple(torch.cat([p[k][f][r] for r in rows for p in per]) for f in range(2))
            for k in range(n)]


# Beyond the tanh MLP on equal tuple batches: (model, rank's batches, one-process batches,
# loss_fn, settings). Both branches occur in each (checked by the test). The authors' search,
# whose S = B0 u B1 (or thirds of one batch) these were built for.
CASES: dict[str, tuple] = {
    "batchnorm": (bn_mlp, tagged_batches, lambda: union_of(tagged_batches), per_rank_loss,
                  dict(target="sgd", lr=0.1, steps=12, scale_lr=0.05, gamma=0.4, faithful=True)),
    "dict": (DictNet, dict_batches, lambda: union_of(dict_batches), None,
             dict(target="sgd", lr=0.1, steps=12, scale_lr=0.05, gamma=0.35, faithful=True)),
    "split": (mlp, rank_batches, union_of_thirds, None,
              dict(target="adam", lr=0.01, steps=10, scale_lr=0.05, gamma=3.0, batching="split",
                    faithful=True)),
}


# Settings of the equality runs: both branches occur (checked by the test). The authors' search
# (faithful) and the default one (warm start, stopping rule, guard: every decision collective).
RUNS: dict[str, dict[str, Any]] = {
    "sgd": dict(target="sgd", lr=0.1, steps=12, scale_lr=0.05, gamma=0.35, faithful=True),
    "adam": dict(target="adam", lr=0.01, steps=10, scale_lr=0.05, gamma=3.0, overlap=False,
                 faithful=True),
    "second_order": dict(target="sgd", lr=0.1, steps=8, scale_lr=0.05, gamma=0.35,
                         normalize_grad=False, second_order=True, faithful=True),
    "default": dict(target="sgd", lr=0.1, steps=40, patience=4, gamma=1.0),
}
ALPHA = torch.tensor([0.8, 1.3, 0.6, 1.1, 0.9, 1.2], dtype=torch.float64)


def failing_loss(rank: int, fail_rank: int, fail_call: int):
    calls = [0]

    def loss_fn(model, batch):
        calls[0] += 1
        if rank == fail_rank and calls[0] == fail_call:
            raise ValueError(f"boom on call {fail_call}")
        x, y = batch
        return F.cross_entropy(model(x), y)
    return loss_fn


def _error(fn) -> dict[str, Any]:
    """Run fn expecting an exception; record its type and message."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return dict(type=type(e).__name__, message=str(e))
    return dict(type=None, message="no error")


def scenarios(rank: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    data = rank_batches(rank)
    for name, settings in RUNS.items():  # 2 processes vs 1 on the union (compared by the test)
        model = mlp(0)
        report = initlab.gradinit(model, data, **settings)
        out[name] = dict(params={k: v.detach().clone() for k, v in model.state_dict().items()},
                         scales=report.scales, history=report.history,
                         outcome=report.outcome)

    for name, (build, batches, _, loss_fn, settings) in CASES.items():  # each fails alone
        model = build(0)
        try:
            report = initlab.gradinit(model, batches(rank), loss_fn=loss_fn, **settings)
        except Exception:  # noqa: BLE001  (reported by this case's test)
            out[name] = dict(error=traceback.format_exc())
            continue
        out[name] = dict(params={k: v.detach().clone() for k, v in model.state_dict().items()},
                         scales=report.scales, history=report.history)

    # One step's scale gradients against the one-process formulas on the union of S (and S~).
    out["grad_constraint"] = one_step_grad(data, "constraint")
    out["grad_second_order"] = one_step_grad(data, "second_order")

    # A DDP-wrapped float32 model; the wrapper must still train after GradInit.
    ddp = nn.parallel.DistributedDataParallel(mlp(0, torch.float32))
    data32 = rank_batches(rank, dtype=torch.float32)
    initlab.gradinit(ddp, data32, **RUNS["sgd"])
    after_init = {k: v.detach().clone() for k, v in ddp.module.state_dict().items()}
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    x, y = data32[0]
    F.cross_entropy(ddp(x), y).backward()
    opt.step()
    out["ddp"] = dict(after_init=after_init,
                      after_step={k: v.detach().clone() for k, v in ddp.module.state_dict().items()})

    # A bare module built differently on each rank: rank 0's values, scaled, everywhere.
    model = mlp(rank)
    initlab.gradinit(model, data, **RUNS["sgd"])
    out["bare_differing"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # distributed=False: rank 0 searches alone while rank 1 does nothing (no collective, no hang).
    if rank == 0:
        model = mlp(0)
        initlab.gradinit(model, data, distributed=False, **RUNS["sgd"])
        out["alone"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # Failures on rank 1 only: every rank raises and keeps its model.
    out["fail_first_pass"] = failure(rank, data, 3, steps=5, gamma=1e9)
    out["fail_objective"] = failure(rank, data, 4, steps=5, gamma=1e9)
    out["fail_second_order"] = failure(rank, data, 4, steps=5, gamma=1e9, second_order=True)
    model = mlp(0)
    out["fail_warm_start"] = failure(rank, data, 1, steps=5)  # the first loss call
    calls = [0]

    def counting(model, batch):
        calls[0] += 1
        return F.cross_entropy(model(batch[0]), batch[1])
    initlab.gradinit(mlp(0), data, loss_fn=counting, steps=5)
    out["fail_guard"] = failure(rank, data, calls[0], steps=5)  # the last one: the guard's
    out["vote"] = [DistributedGradInitSearch.any_rank(_Voter(), flag)  # type: ignore[arg-type]
                   for flag in (rank == 1, False, True)]
    out["bad_setting"] = _error(lambda: initlab.gradinit(model, data, steps=3,
                                                         lr=0.1 if rank == 0 else -1.0))
    out["different_setting"] = _error(lambda: initlab.gradinit(model, data, steps=3 + rank))
    out["still_in_step"] = _still_in_step()
    return out


class _Voter:
    """Just enough of a search for `any_rank`: the ranks of the process group."""

    def __init__(self) -> None:
        self.ranks = current_ranks()


def one_step_grad(data: list, kind: str) -> dict[str, Any]:
    """This rank's view of one averaged scale gradient at alpha = ALPHA."""
    model = mlp(0)
    specs = initlab.core.params.trainable_params(model)
    cfg = GradInitConfig(**RUNS["second_order" if kind == "second_order" else "sgd"])
    search = DistributedGradInitSearch(model, specs, initlab.core.loss.default_loss, cfg,
                                       current_ranks(), torch.ones(len(specs), dtype=torch.bool))
    S = (torch.cat([data[0][0], data[1][0]]), torch.cat([data[0][1], data[1][1]]))
    first = search.share_first(lambda: search.first_pass(ALPHA, S, graph=True), "test")
    if kind == "constraint":
        da, _, _ = search.share(lambda: (search.constraint_grad(first), None, first["used"]), "test")
    else:
        da, _, _ = search.share(lambda: search.objective_grad(first, data[2]), "test")
    return dict(da=da, gnorm=first["gnorm"].item())


def failure(rank: int, data: list, fail_call: int, **settings: Any) -> dict[str, Any]:
    """Rank 1's loss raises at call `fail_call`: the error each rank saw, and its model."""
    model = mlp(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    err = _error(lambda: initlab.gradinit(model, data, loss_fn=failing_loss(rank, 1, fail_call),
                                          **settings))
    err["unchanged"] = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return err


def _still_in_step() -> bool:
    """After all the failures, the ranks still run collectives in step."""
    t = torch.ones(1)
    dist.all_reduce(t)
    return bool(t.item() == WORLD)


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        result = scenarios(rank)
    except BaseException:
        result = {"crash": traceback.format_exc()}
    finally:
        torch.save(result, f"{out_dir}/rank{rank}.pt")
        dist.destroy_process_group()

