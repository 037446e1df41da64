"""initlab's default GradInit search (`faithful=False`): robust to its start and its budget.

Same objective and constraint as the authors (minimize L(S~; p - lr A[g]) / lr subject to
N(g) <= gamma, p = alpha * w), found differently:

1. warm start (`warm_start.py`): each Linear/Conv layer's scale from one forward pass, so each
   layer's output has unit RMS (a post-normalized residual branch is never grown,
   `branches.py`); PyTorch's default init, He, Xavier and He x 3 all start there;
2. Adam on log-scales (`scale_adam.LogScaleAdam`): multiplicative steps, so a scale can move by
   any factor in a number of steps that does not depend on the factor's size; none above
   `max_growth` times its warm-start value (1: the search only shrinks; growth is the warm
   start's, since the one-step objective rewards growth as a smaller effective step);
3. a scale learning rate that adapts to the objective and a stopping rule (`StoppingRule`):
   the objective's mean over each window of `patience` iterations is compared with the best
   window so far; a window that does not improve it by 1 % halves the scale learning rate, and
   the third such window ends the search ("converged"). Otherwise it ends at `steps`
   ("budget", with a warning that it had not converged) or, when the last window took only
   constraint steps, "constraint never met";
4. the guard (`guard.py`): the result is returned only if, on a held-out batch, one step of the
   target optimizer from it does no worse than from the start (up to 0.1 % worse against a
   start that one step does not move); else the warm start, else the start.

Batches: H = the first batch drawn (held out for the guard), then one batch per iteration:
S = B_t and S~ = B_{t+1}, which is the next iteration's S. So S is one of the user's own
batches and an objective iteration costs about two of the user's training steps (a constraint
iteration: one forward and a double backward).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch

from ...core.batches import BatchStream
from .iteration import iteration, predict_graph
from .search import GradInitSearch

log = logging.getLogger("initlab.methods.gradinit")

TOL = 0.01          # a window improves when its mean objective is 1 % under the best window's
REDUCTIONS = 3      # the third window without improvement ends the search


class OneBatchEach:
    """S = B_t, S~ = B_{t+1}; B_{t+1} is then the next iteration's S."""

    def __init__(self, stream: BatchStream):
        self.stream, self.pending = stream, None

    def S(self) -> Any:
        if self.pending is None:
            return self.stream.next()
        batch, self.pending = self.pending, None
        return batch

    def S_tilde(self) -> Any:
        self.pending = self.stream.next()
        return self.pending


class StoppingRule:
    """Window means of the objective: halve the scale lr on a plateau, stop on the third."""

    def __init__(self, window: int, opt: Any):
        self.window, self.opt = window, opt
        self.values: list[float] = []
        self.seen = self.constraint_only = 0
        self.best: Optional[float] = None
        self.reductions = 0

    def update(self, record: dict[str, Any]) -> bool:
        """Take one iteration's record; True when the search has converged."""
        self.seen += 1
        if record["branch"] == "objective":
            self.values.append(record["loss_after"])
        if self.seen < self.window:
            return False
        values, self.values, self.seen = self.values, [], 0
        if len(values) < self.window // 2:  # mostly constraint steps: nothing to judge yet
            self.constraint_only = self.constraint_only + 1 if not values else 0
            return False
        self.constraint_only = 0
        mean = sum(values) / len(values)
        if self.best is None or mean < self.best - TOL * abs(self.best):
            self.best = mean
            return False
        self.reductions += 1
        self.opt.lr /= 2
        return self.reductions >= REDUCTIONS


def run_default(search: GradInitSearch, batches: OneBatchEach, opt: Any, scaled: torch.Tensor,
                bar: Any) -> tuple[list[dict[str, Any]], str]:
    """The loop: iterations until the stopping rule fires or `steps` runs out; (history, why)."""
    cfg, history, last_norm = search.cfg, [], math.inf
    rule = StoppingRule(cfg.patience, opt)
    for t in range(cfg.steps):
        search.iteration = t
        lr = opt.lr
        history.append(dict(iteration(search, batches, opt, scaled,
                                      predict_graph(search, last_norm)), scale_lr=lr))
        last_norm = history[-1]["grad_norm"]
        bar.update(1)
        done = rule.update(history[-1])
        if rule.seen == 0 and search.any_rank(done):  # decided at window ends, on every rank
            return history, "converged"
        if search.is_main and (t + 1) % cfg.patience == 0:
            log.info("gradinit %d: %s, |g| %.3g, loss after the step %s, scale lr %.3g", t + 1,
                     history[-1]["branch"], last_norm, history[-1]["loss_after"], opt.lr)
    if not history:
        return history, "warm start only"
    never = not any(h["branch"] == "objective" for h in history[-cfg.patience:])
    return history, "constraint never met" if never else "budget"
