"""GradInit: learn one scale per parameter tensor so that one optimizer step helps the most.

Zhu, Ni, Xu, Kong, Huang, Goldstein, "GradInit: Learning to Initialize Neural Networks for Stable
and Efficient Training", NeurIPS 2021 (arXiv 2102.08098). With p_i = alpha_i * w_i (w the
initial values) and g = grad L(S; p):

    minimize_alpha  L(S~; p - lr * A[g]) / lr      subject to  N(g) <= gamma

A[g] = g or g/|g|_2 and N = |.|_2 for an SGD target; A[g] = sign(g) and N = |.|_1 for Adam.
Each iteration takes either a constraint step (N(g) > gamma: descend N(g), a double backward) or
an objective step, with the scales' own Adam (`core.scales.ScaleAdam`).

Where initlab departs from the authors' code, and why:
- The model is never edited during the search: it runs through `torch.func.functional_call` on
  p = alpha * w formed afresh each step (alpha in float64), and the result is written once at the
  end. The authors rescale weights in place; the two agree to ~1e-7 per step.
- The double-backward graph is built only when the branch needs it. The branch is predicted from
  the previous iteration and, on a wrong guess, the first pass is redone with the graph.
- A constraint step reaches Linear/Conv weights' scales through the layers' recorded outputs and
  input gradients instead of weight gradients (`gradinit_shortcut.py`): same gradient, 7
  convolutions per layer instead of 9.
- Any nn.Module, loss and batch structure; the target step and gradient norm cover every
  trainable tensor, while scales go to the selected ones (the authors' code scales all).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from ..core.batches import BatchStream
from ..core.distributed import current_ranks
from ..core.loss import LossFn, Substituted, checked_loss, default_loss
from ..core.modes import double_backward_attention, search_mode, write_params
from ..core.params import ParamFilter, ParamSpec, select_params, trainable_params
from ..core.progress import progress_bar
from ..core.report import InitReport, mark_applied
from ..core.scales import ScaleAdam, caps_and_floors
from ..registry import register
from ..version import __version__
from ._common import note_unchanged
from .gradinit_batches import GradInitBatches
from .gradinit_shortcut import Shortcut

log = logging.getLogger(__name__)

TARGETS = ("sgd", "adam")
PREDICT_MARGIN = 0.9  # expect a constraint step when the last |g| > 0.9 gamma

#: The authors' IWSLT'14 Post-LN Transformer recipe: `gradinit(model, data, **TRANSFORMER_RECIPE)`.
TRANSFORMER_RECIPE: dict[str, Any] = dict(
    target="adam", lr=1e-3, gamma=1000.0, scale_lr=2.5e-3, betas=(0.9, 0.98),
    norm_max_scale=100.0, clip=None, steps=780,
)


@dataclass
class GradInitConfig:
    target: str = "sgd"            # optimizer the scales are tuned for: "sgd" or "adam"
    lr: float = 0.1                # that optimizer's learning rate (eta)
    steps: int = 390               # search iterations (390 ~ one CIFAR epoch at batch 128)
    scale_lr: float = 1e-2         # learning rate of the scales' Adam (tau)
    gamma: float = 1.0             # bound on the first gradient's norm (L2 sgd, L1 adam)
    normalize_grad: bool = True    # sgd target: step along g/|g|, so its length is exactly lr
    min_scale: float = 0.01        # floor for weights' scales (biases: 0)
    max_scale: Optional[float] = None       # cap for every scale
    norm_max_scale: Optional[float] = None  # cap for normalization-layer weights (authors: 100)
    clip: Optional[float] = 1.0    # clip each scale gradient to [-clip, clip]; None/0: off
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    overlap: bool = True           # S~ = B0 u B2 (shares half of S); False: S~ = B3 u B2
    second_order: bool = False     # differentiate the objective through A[g] (sgd target)
    fast_constraint: bool = True   # constraint steps: Linear/Conv through their outputs (same
                                   # gradient, fewer convolutions; gradinit_shortcut.py)
    batching: str = "auto"         # "concat": S = B0 u B1; "split": thirds of one batch; "auto"

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}: use 'sgd' or 'adam'")
        if self.batching not in ("auto", "concat", "split"):
            raise ValueError(f"unknown batching {self.batching!r}: use 'auto', 'concat' or 'split'")
        positive = dict(lr=self.lr, scale_lr=self.scale_lr, gamma=self.gamma)
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not (0 <= self.min_scale < math.inf):
            raise ValueError(f"min_scale must be >= 0, got {self.min_scale!r}")
        for name in ("max_scale", "norm_max_scale"):
            cap = getattr(self, name)
            if cap is not None and not cap >= self.min_scale:
                raise ValueError(f"{name}={cap!r} is below min_scale={self.min_scale!r}")
        if self.clip is not None and not self.clip >= 0:
            raise ValueError(f"clip must be >= 0 or None, got {self.clip!r}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas!r}")


class GradInitSearch:
    """The per-iteration computations, on a fixed model, loss and set of tensors.

    `alpha` is a float64 vector with one entry per trainable tensor (1 for unscaled ones).
    """

    def __init__(self, model: nn.Module, specs: list[ParamSpec], loss_fn: LossFn,
                 cfg: GradInitConfig):
        self.model, self.loss_fn, self.cfg = model, loss_fn, cfg
        self.names = [s.name for s in specs]
        self.w0 = [s.param.detach() for s in specs]
        wide = any(w.dtype == torch.float64 for w in self.w0)
        self.acc = torch.float64 if wide else torch.float32  # norms and scale leaves
        self.shortcut = Shortcut(model, specs) if cfg.fast_constraint else None
        self.iteration = 0
        self.is_main, self.replaced = True, False  # one process: no ranks to share with

    # One process: nothing to share. `gradinit_distributed` averages these over the ranks.
    def share_first(self, fn: Callable[[], dict], where: str) -> dict:
        return fn()

    def share(self, fn: Callable[[], tuple], where: str) -> tuple:
        return fn()

    def guarded(self, fn: Callable[[], Any], where: str) -> Any:
        return fn()

    # p_i = alpha_i * w_i: detached leaves (first-order passes) or a function of alpha.
    def leaves(self, alpha: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():  # one fused kernel launch per dtype/device group
            ps = torch._foreach_mul(self.w0, alpha.tolist())
        return [p.requires_grad_() for p in ps]

    def graph_pass(self, alpha: torch.Tensor, S: Any) -> tuple[torch.Tensor, list, list[int], torch.Tensor]:
        """The loss on S as a function of an alpha leaf `a`, for a double backward: p_i = a_i w_i,
        or, for Linear/Conv weights, a plain leaf and a_i fed to the layer (gradinit_shortcut)."""
        a = alpha.to(self.w0[0].device, self.acc).requires_grad_()  # a copy, even of float64
        use = self.shortcut is not None and not self.cfg.second_order
        fast = self.shortcut.usable(alpha) if use else []
        ps = [(w * a_i.detach()).requires_grad_() if i in fast else w * a_i  # same values
              for i, (w, a_i) in enumerate(zip(self.w0, a.unbind()))]
        running = self.shortcut.running(a, fast) if fast else contextlib.nullcontext()
        with double_backward_attention(), running as calls:
            loss = self.loss(ps, S, "loss on S")
        if fast and not self.shortcut.checked and self.shortcut.check(
                loss, {i: ps[i] for i in fast}, calls):
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
        gnorm = first["gnorm"].detach()
        v = [g.detach().sign() if self.cfg.target == "adam" else g.detach() / gnorm.to(g.dtype)
             for g in first["gs"]]
        return self.vjp(first, v)

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


def _prepare(model: nn.Module, params: Optional[ParamFilter], exclude: Optional[ParamFilter],
             settings: dict[str, Any]) -> tuple[GradInitConfig, list[ParamSpec], torch.Tensor]:
    """Validated settings, the trainable tensors, and which of them get a scale."""
    cfg = GradInitConfig(**settings)
    cfg.validate()
    specs = trainable_params(model)
    mask = select_params(specs, params, exclude)
    nonzero = [bool(s.param.detach().abs().sum() > 0) for s in specs]
    scaled = torch.tensor([m and nz for m, nz in zip(mask, nonzero)])
    if not specs or not scaled.any():
        raise ValueError("nothing to scale: the model has no selected, non-zero, floating-point "
                         "parameter that requires grad" + (" (check params=/exclude=)"
                                                           if specs else ""))
    return cfg, specs, scaled


def _iteration(search: GradInitSearch, batches: GradInitBatches, opt: ScaleAdam, scaled: torch.Tensor,
               graph: bool) -> dict[str, Any]:
    """One iteration: draw S, take a constraint or an objective step on the scales; its record."""
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


@register("gradinit", needs_data=True,
          description="learned per-tensor scales so one optimizer step helps most",
          paper="Zhu et al., NeurIPS 2021, arXiv 2102.08098")
def gradinit(
    model: nn.Module,
    data: Iterable,
    *,
    loss_fn: Optional[LossFn] = None,
    params: Optional[ParamFilter] = None,
    exclude: Optional[ParamFilter] = None,
    progress: bool = False,
    distributed: bool = True,
    **settings: Any,
) -> InitReport:
    """Learn a scale for each parameter tensor of `model` with GradInit, and write it in place.

    Args:
        model: any `nn.Module`. Its parameters are written once, in place, at the end (so an
            optimizer built earlier stays valid); on any error or interrupt it is left bitwise
            unchanged, with its modes and buffers.
        data: an iterable of batches, re-iterated when exhausted. Each iteration draws B0 and B1
            (S = B0 u B1); an objective iteration then draws B2 (S~ = B0 u B2), or with
            `overlap=False` B2 then B3 (S~ = B3 u B2). Batches that cannot be concatenated are
            split in thirds instead: S = first two thirds, S~ = last two thirds.
        loss_fn: `(model, batch) -> scalar`; default: cross-entropy for (inputs, targets),
            `model(**batch).loss` for dict batches. It must call the `model` it is given.
        params / exclude: which tensors get a scale (default: every floating-point parameter
            that requires grad): regex on the name, module type, callable, or a list of these.
        progress: show a tqdm bar (on rank 0 only, under torch.distributed).
        distributed: under an initialized `torch.distributed` group of 2+ ranks, run one search
            across all ranks (every rank must call; see `methods/gradinit_distributed.py`).
            False: this process searches alone (e.g. on rank 0 only, then broadcast).
        **settings: fields of `GradInitConfig` (target, lr, steps, scale_lr, gamma, ...).

    Returns:
        an `InitReport` with the scales, a per-iteration history and the settings.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # scaled in place, so the DDP wrapper stays valid
    first_param = next(model.parameters(), None)
    ranks = current_ranks(first_param.device if first_param is not None else "cpu") if distributed else None
    prepare = lambda: _prepare(model, params, exclude, settings)  # noqa: E731
    cfg, specs, scaled = prepare() if ranks is None else ranks.guarded(prepare, "checking settings")
    if ranks is None:
        search = GradInitSearch(model, specs, loss_fn or default_loss, cfg)
    else:  # every rank: g, scale gradients and losses averaged across ranks
        from .gradinit_distributed import DistributedGradInitSearch
        search = DistributedGradInitSearch(model, specs, loss_fn or default_loss, cfg, ranks, scaled)
    floors, caps = caps_and_floors([s.is_bias for s in specs], [s.is_norm_weight for s in specs],
                                   cfg.min_scale, cfg.max_scale, cfg.norm_max_scale)
    opt = ScaleAdam(len(specs), cfg.scale_lr, floors, caps, cfg.betas, cfg.eps, cfg.clip)
    batches = GradInitBatches(BatchStream(data, device=specs[0].param.device), cfg)
    history: list[dict[str, Any]] = []
    bar = progress_bar(cfg.steps, progress and search.is_main, "gradinit")
    # Build the double-backward graph only when this iteration will likely need it: predicted
    # from the last gradient norm, leaning to "constraint" near the bound because a wrong
    # "objective" guess costs a whole extra pass while a wrong "constraint" guess costs only
    # the graph (benchmarks/gradinit_cost.py measures both).
    last_norm = math.inf
    try:
        with search_mode(model):
            for t in range(cfg.steps):
                search.iteration = t
                graph = last_norm > PREDICT_MARGIN * cfg.gamma or cfg.second_order
                history.append(_iteration(search, batches, opt, scaled, graph))
                last_norm = history[-1]["grad_norm"]
                bar.update(1)
                if search.is_main and (t + 1) % max(1, cfg.steps // 10) == 0:
                    log.info("gradinit %d/%d: %s, |g| %.3g, loss %.4g", t + 1, cfg.steps,
                             history[-1]["branch"], last_norm, history[-1]["loss"])

        def final_values() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            keep = [k or search.replaced for k in scaled.tolist()]  # replaced: rank 0's values
            return ([s.param for s, k in zip(specs, keep) if k],
                    [w * float(a) for w, a, k in zip(search.w0, opt.alpha.tolist(), keep) if k])
        write_params(*search.guarded(final_values, "final values"))
    except BaseException as e:
        note_unchanged(e, "gradinit", f"at iteration {search.iteration}")
        raise
    finally:
        bar.close()
    mark_applied(model, "gradinit")
    settings_out = asdict(cfg)
    settings_out.update(params=repr(params), exclude=repr(exclude))
    return InitReport(
        method="gradinit",
        scales={s.name: a for s, a, k in zip(specs, opt.alpha.tolist(), scaled.tolist()) if k},
        shapes={s.name: list(s.shape) for s in specs},
        history=history, settings=settings_out, version=__version__,
    )

