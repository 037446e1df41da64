"""The default search's guard: never return scales that do worse than the start.

The measure is the one the user's training takes first: on a held-out batch H, one step of the
target optimizer at its learning rate from p = alpha * w,

    sgd:   p' = p - lr * g          adam:  p' = p - lr * sign(g)      (g = grad L(H; p))

(the plain first step: momentum and Adam's moments do not act on it), then L(H; p'). A step that
makes the loss non-finite counts as +inf. Under torch.distributed, g and the losses are means over
the ranks' H (a DDP step), so every rank takes the same decision.

A start that one step does not move (|L(H; p') - L(H; p)| <= STALLED * |L(H; p)| at alpha = 1:
e.g. a deep plain net whose signal has vanished, its loss at chance) protects nothing that a
one-step test can see, and a result that trains can lose to it by round-off. Against such a
start the bar is raised by STALLED * |L(H; p)|: the returned loss is never more than 0.1 %
above the start's, and the record says `stalled=True`.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ...core.loss import Substituted
from .search import GradInitSearch

STALLED = 1e-3  # relative: a start whose one-step loss moves less than this is "stalled"


def _raw_loss(search: GradInitSearch, tensors: list[torch.Tensor], batch: Any) -> torch.Tensor:
    """The user's loss, with a non-finite value (or a failed step) as +inf instead of an error."""
    loss = search.loss_fn(Substituted(search.model, dict(zip(search.names, tensors))), batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor (guard)")
    loss = loss.reshape(()).to(search.acc)
    return loss if bool(torch.isfinite(loss)) else torch.full((), math.inf, dtype=search.acc,
                                                              device=loss.device)


def one_step_loss(search: GradInitSearch, alpha: torch.Tensor, H: Any) -> tuple[float, float]:
    """(L(H; p), L(H; p - lr A(g))) at p = alpha * w, with the target optimizer's first step A."""
    w0, cfg = search.w0, search.cfg
    device = w0[0].device
    ps = search.leaves(alpha)

    def local_grad() -> list[torch.Tensor]:
        loss = _raw_loss(search, ps, H)
        if not bool(torch.isfinite(loss)) or not loss.requires_grad:
            return [torch.zeros_like(w) for w in w0] + [loss.detach()]
        gs = torch.autograd.grad(loss, ps, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, ps)] + [loss.detach()]

    scalar = torch.zeros((), dtype=search.acc, device=device)
    *G, before = search.mean(local_grad, w0 + [scalar], "guard, loss on the held-out batch")
    if not math.isfinite(before.item()):
        return math.inf, math.inf
    with torch.no_grad():
        p = [x.detach() for x in ps]
        direction = torch._foreach_sign(G) if cfg.target == "adam" else G
        stepped = torch._foreach_add(p, direction, alpha=-cfg.lr)
        (after,) = search.mean(lambda: [_raw_loss(search, stepped, H)], [scalar],
                               "guard, loss after one step")
    return before.item(), after.item()


def bar(start_before: float, start_after: float) -> tuple[float, bool]:
    """The one-step loss a result must not exceed, and whether the start is stalled."""
    slack = STALLED * abs(start_before)
    stalled = math.isfinite(start_after) and abs(start_after - start_before) <= slack
    return (start_after + slack if stalled else start_after), stalled


def guarded(search: GradInitSearch, H: Any, found: torch.Tensor,
            fallbacks: list[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, Any]]:
    """`found` if its one-step loss on H is at most the start's (alpha = 1; see `bar` for a
    stalled start), else the first of `fallbacks` ((name, alpha), e.g. the warm start) that is,
    else the start itself. Returns (alpha, record)."""
    before, start = one_step_loss(search, torch.ones_like(found), H)
    limit, stalled = bar(before, start)
    searched = one_step_loss(search, found, H)[1]
    record: dict[str, Any] = dict(start=start, searched=searched, returned=searched,
                                  fell_back_to=None, stalled=stalled)
    if searched <= limit:
        return found, record
    for name, alpha in fallbacks:
        loss = one_step_loss(search, alpha, H)[1]
        record[name] = loss
        if loss <= limit:
            record.update(fell_back_to=name, returned=loss)
            return alpha, record
    record.update(fell_back_to="start", returned=start)
    return torch.ones_like(found), record
