"""GradInit: learn one scale per parameter tensor so that one optimizer step helps the most.

Zhu, Ni, Xu, Kong, Huang, Goldstein, "GradInit: Learning to Initialize Neural Networks for Stable
and Efficient Training", NeurIPS 2021 (arXiv 2102.08098). With p_i = alpha_i * w_i (w the
initial values) and g = grad L(S; p):

    minimize_alpha  L(S~; p - lr * A[g]) / lr      subject to  N(g) <= gamma

A[g] = g or g/|g|_2 and N = |.|_2 for an SGD target; A[g] = sign(g) and N = |.|_1 for Adam.
Each iteration takes either a constraint step (N(g) > gamma: descend N(g), a double backward) or
an objective step, with the scales' own Adam (`scale_adam.ScaleAdam`).

Where initlab departs from the authors' code, and why:
- The model is never edited during the search: it runs through `torch.func.functional_call` on
  p = alpha * w formed afresh each step (alpha in float64), and the result is written once at the
  end. The authors rescale weights in place; the two agree to ~1e-7 per step.
- The double-backward graph is built only when the branch needs it. The branch is predicted from
  the previous iteration and, on a wrong guess, the first pass is redone with the graph.
- A constraint step reaches Linear/Conv weights' scales through the layers' recorded outputs and
  input gradients instead of weight gradients (`shortcut.py`): same gradient, 7
  convolutions per layer instead of 9.
- Any nn.Module, loss and batch structure; the target step and gradient norm cover every
  trainable tensor, while scales go to the selected ones (the authors' code scales all).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from typing import Any, Iterable, Optional

import torch
from torch import nn

from ...core.batches import BatchStream
from ...core.distributed import current_ranks
from ...core.finish import finish, unchanged_on_error
from ...core.loss import LossFn, default_loss
from ...core.modes import search_mode, write_params
from ...core.params import ParamFilter, ParamSpec, select_params, trainable_params
from ...core.progress import progress_bar
from ...core.report import InitReport
from ...registry import register
from .batches import GradInitBatches
from .config import GradInitConfig
from .scale_adam import ScaleAdam, caps_and_floors
from .search import GradInitSearch

log = logging.getLogger(__name__)

PREDICT_MARGIN = 0.9  # expect a constraint step when the last |g| > 0.9 gamma

#: The authors' IWSLT'14 Post-LN Transformer recipe: `gradinit(model, data, **TRANSFORMER_RECIPE)`.
TRANSFORMER_RECIPE: dict[str, Any] = dict(
    target="adam", lr=1e-3, gamma=1000.0, scale_lr=2.5e-3, betas=(0.9, 0.98),
    norm_max_scale=100.0, clip=None, steps=780,
)


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


@register("gradinit", config=GradInitConfig, needs_data=True,
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
            across all ranks (every rank must call; see `methods/gradinit/distributed.py`).
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
        from .distributed import DistributedGradInitSearch
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
        with unchanged_on_error("gradinit", lambda: f"at iteration {search.iteration}"):
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
    finally:
        bar.close()
    return finish(model, "gradinit", settings=dict(asdict(cfg), params=repr(params),
                                                   exclude=repr(exclude)),
                  history=history, specs=specs,
                  scales={s.name: a for s, a, k in zip(specs, opt.alpha.tolist(), scaled.tolist()) if k})


@register("gradinit-authors", settings_of="gradinit", needs_data=True,
          description="GradInit exactly as the authors' code runs it (faithful=True)",
          paper="Zhu et al., NeurIPS 2021, arXiv 2102.08098")
def gradinit_authors(model: nn.Module, data: Iterable, **settings: Any) -> InitReport:
    """`gradinit(model, data, faithful=True, **settings)`: the authors' algorithm and batch drawing."""
    if settings.get("faithful") is False:
        raise ValueError("gradinit-authors is GradInit with faithful=True; use gradinit for the "
                         "default search")
    return gradinit(model, data, **dict(settings, faithful=True))
