"""GradInit: learn one scale per parameter tensor so that one optimizer step helps the most.

Zhu, Ni, Xu, Kong, Huang, Goldstein, "GradInit: Learning to Initialize Neural Networks for Stable
and Efficient Training", NeurIPS 2021 (arXiv 2102.08098). With p_i = alpha_i * w_i (w the
initial values) and g = grad L(S; p):

    minimize_alpha  L(S~; p - lr * A[g]) / lr      subject to  N(g) <= gamma

A[g] = g or g/|g|_2 and N = |.|_2 for an SGD target; A[g] = sign(g) and N = |.|_1 for Adam.
Each iteration takes either a constraint step (N(g) > gamma: descend N(g), a double backward) or
an objective step (`iteration.py`). Two searches: `faithful=True` runs the authors' (their
RescaleAdam for a fixed number of iterations, S = B0 u B1; `iteration.run_faithful`); the default
is initlab's (warm start, log-scales, an adaptive scale lr, a stopping rule, S = one batch, a
guard; `default_search.py`).

Where initlab departs from the authors' code, on both paths, and why:
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
from .default_search import OneBatchEach, run_default
from .guard import STALLED, guarded
from .iteration import run_faithful
from .scale_adam import LogScaleAdam, ScaleAdam, caps_and_floors
from .search import GradInitSearch
from .warm_start import warm_start

log = logging.getLogger(__name__)

SHORT = 0.25  # faithful: warn when steps * scale_lr (the most a scale can move) is under this


def _prepare(model: nn.Module, params: Optional[ParamFilter], exclude: Optional[ParamFilter],
             settings: dict[str, Any]) -> tuple[GradInitConfig, list[ParamSpec], torch.Tensor]:
    """Validated settings (defaults resolved), the trainable tensors, which of them get a scale."""
    cfg = GradInitConfig(**settings)
    cfg.validate()
    cfg = cfg.resolved()
    specs = trainable_params(model)
    mask = select_params(specs, params, exclude)
    nonzero = [bool(s.param.detach().abs().sum() > 0) for s in specs]
    scaled = torch.tensor([m and nz for m, nz in zip(mask, nonzero)])
    if not specs or not scaled.any():
        raise ValueError("nothing to scale: the model has no selected, non-zero, floating-point "
                         "parameter that requires grad" + (" (check params=/exclude=)"
                                                           if specs else ""))
    return cfg, specs, scaled


def _faithful(search: GradInitSearch, specs: list[ParamSpec], stream: BatchStream, scaled: torch.Tensor,
              floors: torch.Tensor, caps: torch.Tensor, bar: Any) -> tuple[torch.Tensor, list, dict]:
    """The authors' search: their RescaleAdam from alpha = 1 for `steps` iterations."""
    cfg = search.cfg
    if cfg.steps * cfg.scale_lr < SHORT and search.is_main:
        log.warning("gradinit (faithful): steps=%d x scale_lr=%g: each scale can move by about "
                    "+-%.2g at most, too little to change the network much; raise steps or "
                    "scale_lr, or use the default search (faithful=False)", cfg.steps,
                    cfg.scale_lr, cfg.steps * cfg.scale_lr)
    opt = ScaleAdam(len(search.w0), cfg.scale_lr, floors, caps, cfg.betas, cfg.eps, cfg.clip)
    history = run_faithful(search, GradInitBatches(stream, cfg), opt, scaled, bar)
    return opt.alpha, history, dict(search="faithful", iterations=len(history))


def _default(search: GradInitSearch, specs: list[ParamSpec], stream: BatchStream, scaled: torch.Tensor,
             floors: torch.Tensor, caps: torch.Tensor, bar: Any) -> tuple[torch.Tensor, list, dict]:
    """initlab's search: held-out batch, warm start, log-scale Adam until the stopping rule,
    guard (`default_search.py`)."""
    cfg = search.cfg
    H = stream.next() if cfg.guard else None
    start = torch.ones(len(search.w0), dtype=torch.float64)
    warm, branches = start, []
    if cfg.warm_start:
        batch = stream.next()
        stream.put_back(batch)  # also the first iteration's S
        warm, branches = warm_start(search.model, specs, search.w0, scaled, search.loss_fn,
                                    batch, floors, caps, getattr(search, "ranks", None))
    if math.isfinite(cfg.max_growth):  # grow at most max_growth x the warm start (or the start)
        caps = torch.minimum(caps, warm * cfg.max_growth)
    opt = LogScaleAdam(warm, cfg.scale_lr, floors, caps, cfg.betas, cfg.eps)
    history, reason = run_default(search, OneBatchEach(stream), opt, scaled, bar)
    found = opt.alpha
    outcome: dict[str, Any] = dict(search="default", stop=reason, iterations=len(history))
    if cfg.warm_start:
        outcome["warm_start"] = dict(residual_branch_layers=branches)
    if reason == "budget" and search.is_main:
        log.warning("gradinit stopped at its budget of %d iterations before its look-ahead "
                    "loss stopped improving; pass a larger steps= to let it finish", cfg.steps)
    elif reason == "constraint never met" and search.is_main:
        log.warning("gradinit: the gradient norm stayed above gamma=%g in the last %d "
                    "iterations; the scales satisfy neither the bound nor the objective yet "
                    "(raise steps, or gamma)", cfg.gamma, min(cfg.patience, len(history)))
    if cfg.guard:
        fallbacks = [("warm start", warm)] if cfg.warm_start else []
        found, outcome["guard"] = guarded(search, H, found, fallbacks)
        if not math.isfinite(outcome["guard"]["start"]) and search.is_main and not math.isfinite(
                outcome["guard"]["returned"]):
            log.warning("gradinit: one step at lr=%g makes the loss non-finite from the start and "
                        "from every result; that learning rate is too large for this model",
                        cfg.lr)
        elif outcome["guard"]["fell_back_to"] and search.is_main:
            g = outcome["guard"]
            log.warning("gradinit: one step from the searched scales did worse on a held-out "
                        "batch than from the start (loss %.4g against %.4g); returning the %s "
                        "instead (pass guard=False to keep the search's result)", g["searched"],
                        g["start"], g["fell_back_to"])
        elif outcome["guard"]["stalled"] and search.is_main:
            log.info("gradinit: one step does not move the start's loss (%.4g); the guard "
                     "accepts a result up to %g %% above it", outcome["guard"]["start"],
                     100 * STALLED)
    return found, history, outcome


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
        data: an iterable of batches, re-iterated when exhausted. Default search: the first
            batch is held out for the guard, the next one warm-starts, then iteration t uses
            S = B_t and S~ = B_{t+1} (one batch each, as they come). `faithful=True`: each
            iteration draws B0 and B1 (S = B0 u B1); an objective iteration then draws B2
            (S~ = B0 u B2), or with `overlap=False` B2 then B3 (S~ = B3 u B2); batches that
            cannot be concatenated are split in thirds: S = first two thirds, S~ = last two.
        loss_fn: `(model, batch) -> scalar`; default: cross-entropy for (inputs, targets),
            `model(**batch).loss` for dict batches. It must call the `model` it is given.
        params / exclude: which tensors get a scale (default: every floating-point parameter
            that requires grad): regex on the name, module type, callable, or a list of these.
        progress: show a tqdm bar (on rank 0 only, under torch.distributed).
        distributed: under an initialized `torch.distributed` group of 2+ ranks, run one search
            across all ranks (every rank must call; see `methods/gradinit/distributed.py`).
            False: this process searches alone (e.g. on rank 0 only, then broadcast).
        **settings: fields of `GradInitConfig` (target, lr, faithful, steps, scale_lr, ...).

    Returns:
        an `InitReport` with the scales, a per-iteration history, the settings and the
        `outcome` (default search: why it stopped, and the guard's losses).
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
    stream = BatchStream(data, device=specs[0].param.device)
    bar = progress_bar(cfg.steps, progress and search.is_main, "gradinit")
    try:
        with unchanged_on_error("gradinit", lambda: f"at iteration {search.iteration}"):
            with search_mode(model):
                run = _faithful if cfg.faithful else _default
                alpha, history, outcome = run(search, specs, stream, scaled, floors, caps, bar)

            def final_values() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
                keep = [k or search.replaced for k in scaled.tolist()]  # replaced: rank 0's values
                return ([s.param for s, k in zip(specs, keep) if k],
                        [w * float(a) for w, a, k in zip(search.w0, alpha.tolist(), keep) if k])
            write_params(*search.guarded(final_values, "final values"))
    finally:
        bar.close()
    return finish(model, "gradinit", settings=dict(asdict(cfg), params=repr(params),
                                                   exclude=repr(exclude)),
                  history=history, specs=specs, outcome=outcome,
                  scales={s.name: a for s, a, k in zip(specs, alpha.tolist(), scaled.tolist()) if k})


@register("gradinit-authors", settings_of="gradinit", needs_data=True,
          description="GradInit exactly as the authors' code runs it (faithful=True)",
          paper="Zhu et al., NeurIPS 2021, arXiv 2102.08098")
def gradinit_authors(model: nn.Module, data: Iterable, **settings: Any) -> InitReport:
    """`gradinit(model, data, faithful=True, **settings)`: the authors' algorithm and batch drawing."""
    if settings.get("faithful") is False:
        raise ValueError("gradinit-authors is GradInit with faithful=True; use gradinit for the "
                         "default search")
    return gradinit(model, data, **dict(settings, faithful=True))


@register("gradinit-warmstart", settings_of="gradinit", needs_data=True,
          description="GradInit's warm start alone: each Linear/Conv layer's scale brings its "
                      "output to unit RMS on one batch, never growing a post-normalized "
                      "residual branch (gradinit with steps=0, guard=False)",
          paper="Zhu et al., NeurIPS 2021 (parametrization); Mishkin & Matas, ICLR 2016 (target)")
def gradinit_warmstart(model: nn.Module, data: Iterable, **settings: Any) -> InitReport:
    """`gradinit(model, data, steps=0, guard=False, **settings)`: the default search's warm
    start and nothing else, the baseline its tables show beside the full search."""
    for key, value in dict(faithful=False, warm_start=True).items():
        if settings.get(key, value) != value:
            raise ValueError(f"gradinit-warmstart is the default search's warm start; {key}="
                             f"{settings[key]!r} does not apply (use gradinit or gradinit-authors)")
    return gradinit(model, data, **dict(settings, steps=0, guard=False))
