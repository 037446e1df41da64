"""GradInit on every rank of `torch.distributed`: one search, the union of the ranks' batches.

`initlab.gradinit` uses this when a process group of two or more ranks is initialized. Each rank
draws its own S and S~ from its own `data`; with G = mean over ranks of the local first gradients
g_r (the gradient of the mean loss on the union of the batches, when the ranks' batches are
equally large; see `core.distributed` for the contract):

- branch: N(G) against gamma, identical on every rank (G is bitwise the same everywhere);
- constraint step: dN(G)/dalpha = mean_r J_r^T v, with v = dN/dG (G/|G| for L2, sign(G) for L1)
  and J_r = dg_r/dalpha, a local vector-Jacobian product (double backward), then one average;
- objective step: each rank steps with the shared A[G] and returns dL(S~_r; p')/dalpha, averaged
  (the mean of per-rank mean losses = the loss on the union);
- second order (sgd target): u_r = dL_r/dG with G as a leaf, averaged to u, then
  dJ/dalpha = mean_r (direct_r + J_r^T u), the chain rule through the shared G.

No collective runs inside autograd, so a failure on one rank is always caught before the next
collective (`Ranks.average` carries a failure flag). Losses in the history are averages too, so
every rank returns the same report. Only rank 0 shows progress and logs.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

import torch
from torch import nn

from ...core.distributed import Ranks
from ...core.loss import LossFn
from ...core.params import ParamSpec
from .config import GradInitConfig
from .search import GradInitSearch


class DistributedGradInitSearch(GradInitSearch):
    """`GradInitSearch` whose first gradient, scale gradients and losses are rank averages."""

    def __init__(self, model: nn.Module, specs: list[ParamSpec], loss_fn: LossFn,
                 cfg: GradInitConfig, ranks: Ranks, scaled: torch.Tensor):
        super().__init__(model, specs, loss_fn, cfg)
        self.ranks, self.is_main = ranks, ranks.is_main
        ranks.agree((asdict(cfg), [(s.name, s.shape) for s in specs], scaled.tolist()),
                    "GradInit settings, parameter names/shapes or selection")
        self.w0, self.replaced = ranks.from_main(self.w0)

    def _extras(self) -> list[torch.Tensor]:
        """Shapes of the values that ride along with g: the used mask (n,) and the loss ()."""
        n, dev = len(self.w0), self.ranks.device
        return [torch.zeros(n, dtype=self.acc, device=dev), torch.zeros((), dtype=self.acc, device=dev)]

    def share_first(self, fn: Callable[[], dict], where: str) -> dict:
        """Run the first pass locally, then replace g, |g|, the loss and `used` by rank means."""
        first, error = self.ranks.attempt(fn)
        local = None
        if first is not None:
            used = torch.tensor(first["used"], dtype=self.acc, device=self.ranks.device)
            local = [g.detach() for g in first["gs"]] + [used, first["loss"].detach().to(self.acc)]
        *G, used, loss = self.ranks.average(local, self.w0 + self._extras(), error, where)
        first.update(local=first["gs"], gs=G, used=(used > 0).tolist(), loss=loss,
                     gnorm=self.norm(G, graph=False))
        return first

    def share(self, fn: Callable[[], tuple], where: str) -> tuple:
        """(da, loss after or None, used) computed locally, returned as rank means."""
        out, error = self.ranks.attempt(fn)
        local = None
        if out is not None:
            da, after, used = out
            after = torch.zeros(()) if after is None else after.detach()
            local = [da.to(self.ranks.device, torch.float64),
                     torch.tensor(used, dtype=self.acc, device=self.ranks.device),
                     after.to(self.ranks.device, self.acc)]
        n, dev = len(self.w0), self.ranks.device
        like = [torch.zeros(n, dtype=torch.float64, device=dev)] + self._extras()
        da, used, after = self.ranks.average(local, like, error, where)
        return da.cpu(), (None if out is None or out[1] is None else after), (used > 0).tolist()

    def guarded(self, fn: Callable[[], Any], where: str) -> Any:
        return self.ranks.guarded(fn, where)

    def mean(self, fn: Callable[[], list[torch.Tensor]], like: list[torch.Tensor],
             where: str) -> list[torch.Tensor]:
        out, error = self.ranks.attempt(fn)
        return self.ranks.average(out, like, error, where)

    def any_rank(self, flag: bool) -> bool:
        """One all-reduce: the stopping rule's decision, the same on every rank."""
        (votes,) = self.ranks.average([torch.full((1,), float(flag), device=self.ranks.device)],
                                      [torch.zeros(1, device=self.ranks.device)], None, "stopping")
        return bool(votes.item() > 0)

    def objective_grad(self, first: dict, S_tilde: Any) -> tuple[torch.Tensor, torch.Tensor, list]:
        """First order: the one-process code with the shared G in place of g. Second order:
        the chain rule through G, whose gradient u needs one more average."""
        if not (self.cfg.second_order and self.cfg.target == "sgd"):
            return super().objective_grad(first, S_tilde)
        lr, a = self.cfg.lr, first["a"]
        G = [g.detach().requires_grad_() for g in first["gs"]]  # the shared mean, as a leaf

        def local() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
            direction = self.step_direction(G, self.norm(G, graph=True))
            stepped = [p - lr * d for p, d in zip(first["ps"], direction)]
            after = self.loss(stepped, S_tilde, "loss after the step on S~")
            direct, *u = torch.autograd.grad(after / lr, [a, *G], retain_graph=True,
                                             allow_unused=True)
            u = [x if x is not None else torch.zeros_like(g) for x, g in zip(u, G)]
            return direct.to(torch.float64), after.detach(), u

        out, error = self.ranks.attempt(local)
        u = self.ranks.average(None if out is None else out[2], G, error,
                               f"iteration {self.iteration}, second-order step")
        direct, after, _ = out  # type: ignore[misc]
        return direct + self.vjp(first, u), after, first["used"]
