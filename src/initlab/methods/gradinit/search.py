"""GradInit's per-iteration computations on a fixed model.

`GradInitSearch` computes, for scales alpha (float64, one per trainable tensor), the first pass
(loss on S and g at p = alpha * w), the constraint step's dN(g)/dalpha (a double backward, with
Linear/Conv weights through `shortcut.py`) and the objective step's
dL(S~; p - lr A[g])/dalpha / lr. `api.py` drives it; `distributed.py` extends it to several
ranks.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from ...core.loss import LossFn, Substituted, checked_loss
from ...core.modes import double_backward_attention
from ...core.params import ParamSpec
from .config import GradInitConfig
from .shortcut import Shortcut


class GradInitSearch:
    """The per-iteration computations, on a fixed model, loss and set of tensors.

    `alpha` is a float64 vector with one entry per trainable tensor (1 for unscaled ones).
    """

    def __init__(self, model: nn.Module, specs: list[ParamSpec], loss_fn: LossFn,
                 cfg: GradInitConfig):
        self.model, self.loss_fn, self.cfg = model, loss_fn, cfg.resolved()
        self.names = [s.name for s in specs]
        self.w0 = [s.param.detach() for s in specs]
        wide = any(w.dtype == torch.float64 for w in self.w0)
        self.acc = torch.float64 if wide else torch.float32  # norms and scale leaves
        self.shortcut = Shortcut(model, specs) if cfg.fast_constraint else None
        self.iteration = 0
        self.is_main, self.replaced = True, False  # one process: no ranks to share with

    # One process: nothing to share. `distributed.py` averages these over the ranks.
    def share_first(self, fn: Callable[[], dict], where: str) -> dict:
        return fn()

    def share(self, fn: Callable[[], tuple], where: str) -> tuple:
        return fn()

    def guarded(self, fn: Callable[[], Any], where: str) -> Any:
        return fn()

    def mean(self, fn: Callable[[], list[torch.Tensor]], like: list[torch.Tensor],
             where: str) -> list[torch.Tensor]:
        """`fn()`'s tensors (shaped as `like`); under torch.distributed their mean over ranks."""
        return fn()

    def any_rank(self, flag: bool) -> bool:
        """A decision every rank takes together: True if it is True on any rank."""
        return flag

    # p_i = alpha_i * w_i: detached leaves (first-order passes) or a function of alpha.
    def leaves(self, alpha: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():  # one fused kernel launch per dtype/device group
            ps = torch._foreach_mul(self.w0, alpha.tolist())
        return [p.requires_grad_() for p in ps]

    def graph_pass(self, alpha: torch.Tensor, S: Any) -> tuple[torch.Tensor, list, list[int], torch.Tensor]:
        """The loss on S as a function of an alpha leaf `a`, for a double backward: p_i = a_i w_i,
        or, for Linear/Conv weights, a plain leaf and a_i fed to the layer (shortcut.py)."""
        a = alpha.to(self.w0[0].device, self.acc).requires_grad_()  # alpha itself if float64 on
        # the CPU: callers pass a copy
        use = self.shortcut is not None and not self.cfg.second_order
        fast = self.shortcut.usable(alpha) if use else []
        fast_set = set(fast)
        ps = [(w * a_i.detach()).requires_grad_() if i in fast_set else w * a_i  # same values
              for i, (w, a_i) in enumerate(zip(self.w0, a.unbind()))]
        running = self.shortcut.running(a, fast) if fast else contextlib.nullcontext()
        with double_backward_attention(), running as calls:
            loss = self.loss(ps, S, "loss on S")
        if fast and self.shortcut.check(loss, {i: ps[i] for i in fast}, calls):
            return self.graph_pass(alpha, S)  # again, without the tensors that failed the check
        return a, ps, fast, loss

    def loss(self, tensors: list[torch.Tensor], batch: Any, what: str) -> torch.Tensor:
        where = f"iteration {self.iteration}, {what}"
        return checked_loss(self.loss_fn, Substituted(self.model, dict(zip(self.names, tensors))),
                            batch, where)

    def grad(self, loss: torch.Tensor, ps: list[torch.Tensor], create_graph: bool):
        gs = torch.autograd.grad(loss, ps, create_graph=create_graph, allow_unused=True)
        used = [g is not None for g in gs]
        if not any(used):
            raise ValueError(
                "the loss does not depend on any parameter being initialized; did loss_fn call the "
                "`model` it was given (not a captured reference to the real model)?")
        return [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, ps)], used

    def norm(self, gs: list[torch.Tensor], graph: bool) -> torch.Tensor:
        """N(g): L2 for sgd, L1 for adam (differentiable in alpha when `graph`)."""
        adam = self.cfg.target == "adam"
        if not graph:  # fused per-tensor norms
            per = torch.stack(torch._foreach_norm(gs, 1 if adam else 2, dtype=self.acc))
            return per.sum() if adam else per.square().sum().sqrt()
        if adam:
            return sum(g.abs().sum(dtype=self.acc) for g in gs)
        return sum(g.square().sum(dtype=self.acc) for g in gs).sqrt()

    def step_direction(self, gs: list[torch.Tensor], gnorm: torch.Tensor) -> list[torch.Tensor]:
        """A[g], the target optimizer's first update direction."""
        if self.cfg.target == "adam":
            return [g.sign() for g in gs]
        if self.cfg.normalize_grad:
            return [g / gnorm.to(g.dtype) for g in gs]
        return list(gs)

    def first_pass(self, alpha: torch.Tensor, S: Any, graph: bool):
        """Loss on S and its gradient; with `graph`, as functions of the alpha leaf."""
        if graph:
            a, ps, fast, loss = self.graph_pass(alpha, S)
        else:
            a, ps, fast = None, self.leaves(alpha), []
            loss = self.loss(ps, S, "loss on S")
        gs, used = self.grad(loss, ps, create_graph=graph)
        gnorm = self.norm(gs, graph and self.cfg.second_order)  # differentiated only there
        return dict(a=a, ps=ps, fast=fast, loss=loss, gs=gs, used=used, gnorm=gnorm)

    def constraint_grad(self, first: dict) -> torch.Tensor:
        """d N(g) / d alpha = J^T v with v = dN/dg (needs `first_pass(..., graph=True)`)."""
        gs = [g.detach() for g in first["gs"]]
        if self.cfg.target == "adam":
            return self.vjp(first, torch._foreach_sign(gs))
        return self.vjp(first, torch._foreach_div(gs, first["gnorm"].item()))

    def vjp(self, first: dict, v: list[torch.Tensor]) -> torch.Tensor:
        """J^T v = d<g(alpha), v>/dalpha for this process's g, by double backward."""
        local = first.get("local", first["gs"])  # distributed: this rank's g (gs: the mean)
        pairs = [(g, x) for g, x in zip(local, v) if g.requires_grad]
        if not pairs:
            return torch.zeros(len(self.w0), dtype=torch.float64)
        (da,) = torch.autograd.grad([g for g, _ in pairs], first["a"], [x for _, x in pairs])
        return da.to(torch.float64)

    def objective_grad(self, first: dict, S_tilde: Any) -> tuple[torch.Tensor, torch.Tensor, list]:
        """d J / d alpha with J = L(S~; p - lr A[g]) / lr; returns (grad, loss after, used)."""
        lr = self.cfg.lr
        if self.cfg.second_order and self.cfg.target == "sgd":
            direction = self.step_direction(first["gs"], first["gnorm"])
            stepped = [p - lr * d for p, d in zip(first["ps"], direction)]
            after = self.loss(stepped, S_tilde, "loss after the step on S~")
            (da,) = torch.autograd.grad(after / lr, first["a"])
            return da.to(torch.float64), after.detach(), first["used"]
        with torch.no_grad():  # p' = p - lr A[g], A held constant (fused)
            gs, ps = [g.detach() for g in first["gs"]], [p.detach() for p in first["ps"]]
            if self.cfg.target == "adam":
                stepped = torch._foreach_add(ps, torch._foreach_sign(gs), alpha=-lr)
            else:
                scale = lr / first["gnorm"].item() if self.cfg.normalize_grad else lr
                stepped = torch._foreach_add(ps, gs, alpha=-scale)
        stepped = [p.requires_grad_() for p in stepped]
        after = self.loss(stepped, S_tilde, "loss after the step on S~")
        grads, used = self.grad(after / lr, stepped, create_graph=False)
        # d/d alpha_i of J(alpha_i * w_i - lr A) = <dJ/dp'_i, w_i>   (A held constant)
        da = torch.stack([torch.vdot(g.reshape(-1).to(self.acc), w.reshape(-1).to(self.acc))
                          for g, w in zip(grads, self.w0)]).to(torch.float64)
        return da, after.detach(), used
