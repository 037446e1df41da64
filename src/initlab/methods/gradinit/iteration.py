"""One GradInit iteration, and the authors' loop built from it (`faithful=True`).

An iteration draws S, computes g = grad L(S; alpha * w) and its norm, then takes a constraint step
(N(g) > gamma: descend N(g), a double backward) or an objective step (descend
L(S~; p - lr A[g]) / lr) on the scales with the scales' optimizer. The default search
(`default_search.py`) runs the same iteration with other batches and another optimizer.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Optional, Protocol

import torch

from .search import GradInitSearch

log = logging.getLogger("initlab.methods.gradinit")

PREDICT_MARGIN = 0.9  # expect a constraint step when the last |g| > 0.9 gamma


class Batches(Protocol):
    def S(self) -> Any: ...
    def S_tilde(self) -> Any: ...


class ScaleOptimizer(Protocol):
    alpha: torch.Tensor  # float64 (n,), the current scales

    def step(self, grad: torch.Tensor, active: torch.Tensor, constraint: bool) -> None: ...


def iteration(search: GradInitSearch, batches: Batches, opt: ScaleOptimizer, scaled: torch.Tensor,
              graph: bool) -> dict[str, Any]:
    """One iteration: draw S, take a constraint or an objective step on the scales; its record.

    `graph`: build the double-backward graph in the first pass (the predicted branch is
    "constraint"); on a wrong guess the pass is redone with it.
    """
    cfg, t, started, S = search.cfg, search.iteration, time.perf_counter(), []

    def first_pass(graph: bool) -> dict:
        if not S:
            S.append(batches.S())
        return search.first_pass(opt.alpha.clone(), S[0], graph=graph)  # see graph_pass

    first = search.share_first(lambda: first_pass(graph), f"iteration {t}, loss on S")
    gnorm = first["gnorm"].item()
    if not math.isfinite(gnorm):
        raise FloatingPointError(f"non-finite gradient norm {gnorm} (iteration {t})")
    constraint = gnorm > cfg.gamma
    if constraint and not graph:  # wrong guess: redo the pass with the graph
        first = search.share_first(lambda: first_pass(True), f"iteration {t}, loss on S")

    def scale_grad() -> tuple[torch.Tensor, Optional[torch.Tensor], list[bool]]:
        if constraint:
            return search.constraint_grad(first), None, first["used"]
        return search.objective_grad(first, batches.S_tilde())

    da, after, used = search.share(scale_grad, f"iteration {t}, scale gradient")
    if not bool(torch.isfinite(da).all()):
        raise FloatingPointError(f"non-finite scale gradient (iteration {t})")
    opt.step(da, scaled & torch.tensor(used), constraint)
    return dict(iteration=t, branch="constraint" if constraint else "objective",
                loss=first["loss"].item(), grad_norm=gnorm,
                loss_after=None if after is None else after.item(),
                recomputed=constraint and not graph, seconds=time.perf_counter() - started)


def predict_graph(search: GradInitSearch, last_norm: float) -> bool:
    """Build the double-backward graph only when this iteration will likely need it: predicted
    from the last gradient norm, leaning to "constraint" near the bound because a wrong
    "objective" guess costs a whole extra pass while a wrong "constraint" guess costs only the
    graph (benchmarks/gradinit_cost.py measures both)."""
    return last_norm > PREDICT_MARGIN * search.cfg.gamma or search.cfg.second_order


def run_faithful(search: GradInitSearch, batches: Batches, opt: ScaleOptimizer,
                 scaled: torch.Tensor, bar: Any) -> list[dict[str, Any]]:
    """The authors' loop: `cfg.steps` iterations, no warm start, no stopping rule, no guard."""
    cfg, history, last_norm = search.cfg, [], math.inf
    for t in range(cfg.steps):
        search.iteration = t
        history.append(iteration(search, batches, opt, scaled, predict_graph(search, last_norm)))
        last_norm = history[-1]["grad_norm"]
        bar.update(1)
        if search.is_main and (t + 1) % max(1, cfg.steps // 10) == 0:
            log.info("gradinit %d/%d: %s, |g| %.3g, loss %.4g", t + 1, cfg.steps,
                     history[-1]["branch"], last_norm, history[-1]["loss"])
    return history
