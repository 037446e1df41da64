"""`initlab.diagnose(model, data, lr=...)`: what a network does at init, measured on real batches.

The contract. The model comes back bitwise as it was: parameters, buffers, every module's mode
and torch's, Python's and NumPy's random generators. Inside, the model runs as during a GradInit
search (`core.modes.search_mode`): dropout off, batch norm on each batch's statistics without
updating its running ones. Of the `batches` batches drawn from `data`, all but the last are
measured and give the step's gradient (of their mean loss); the last is held out and gives the
loss before and after one step of the user's optimizer at the user's lr, taken on copies of the
parameters (`torch.func.functional_call`; GradInit's criterion, Zhu et al. 2021).
Residual sums found by tracing and MultiheadAttention weights are extra computations made under
`torch.no_grad()`; the tracing reruns happen on the first batch only.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..core.batches import to_device
from ..core.finish import unchanged_on_error
from ..core.loss import LossFn, default_loss
from ..core.modes import search_mode
from ..core.params import trainable_params
from ..core.rng import kept_rng
from .record import Recorder
from .result import AttentionStat, BranchStat, Diagnosis, LayerStat, RankStat, TensorStat
from .step import OPTIMIZERS, OptimizerSpec, accumulate, copies_of, held_out_loss, make_optimizer
from .trace import SumRecorder
from .transformer import TransformerRecorder
from .verdict import judge

log = logging.getLogger(__name__)


def diagnose(model: nn.Module, data: Iterable, *, lr: Optional[float] = None,
             loss_fn: Optional[LossFn] = None, optimizer: OptimizerSpec = "sgd",
             momentum: float = 0.9, weight_decay: float = 0.0, batches: int = 4,
             label: str = "model") -> Diagnosis:
    """Measure `model` on `batches` batches of `data` and one step of the optimizer at `lr`.

    `optimizer`: "sgd" (with `momentum`), "adam", "adamw", or a callable params -> optimizer
    (its own lr is kept unless `lr` is given). `loss_fn(model, batch) -> scalar` as for every
    method (default: cross-entropy on (inputs, targets), or the model's `.loss` for dict batches).
    """
    check_settings(lr, optimizer, momentum, weight_decay, batches)
    specs = trainable_params(model)
    if not specs:
        raise ValueError("the model has no trainable floating-point parameters to diagnose")
    device = specs[0].param.device
    loss_fn = loss_fn or default_loss
    start = time.perf_counter()
    with unchanged_on_error("diagnose"), kept_rng(device), search_mode(model), kept_grads(model):
        drawn = draw(data, batches, device)
        step_batches, held_out = drawn[:-1], drawn[-1]
        with contextlib.ExitStack() as hooks:  # every hook comes off, whatever happens
            recorder = Recorder(model)
            hooks.callback(recorder.remove)
            attention = TransformerRecorder(model)
            hooks.callback(attention.remove)
            sums = None
            if not recorder.has_residuals:  # marked branches and ResidualSums say it all
                sums = SumRecorder(model, mute=_muter(recorder, attention))
                hooks.callback(sums.remove)
            copies = copies_of(specs)

            def first_batch_only(i: int) -> None:
                if sums is not None:  # the traced reruns cost a forward each: the first batch
                    sums.active = False

            losses = accumulate(model, copies, loss_fn, step_batches, after=first_batch_only)
        if all(c.grad is None for c in copies.values()):
            raise ValueError("the loss does not reach the model's parameters through the `model` "
                             "it was given; did loss_fn call a captured reference to the real "
                             "model (or model.submodule(...)) instead of its `model` argument?")
        originals = {s.name: s.param.detach() for s in specs}
        grads = {name: None if c.grad is None else c.grad.detach().clone()
                 for name, c in copies.items()}
        opt = make_optimizer(optimizer, list(copies.values()), lr=lr, momentum=momentum,
                             weight_decay=weight_decay)
        opt.step()
        before = held_out_loss(model, originals, loss_fn, held_out)
        after = held_out_loss(model, {n: c.detach() for n, c in copies.items()}, loss_fn, held_out)
    tensors = [TensorStat(s.name, tuple(s.param.shape), rms(originals[s.name]),
                          None if grads[s.name] is None else rms(grads[s.name]),
                          rms(copies[s.name].detach() - originals[s.name])) for s in specs]
    settings = dict(lr=lr, optimizer=optimizer if isinstance(optimizer, str) else repr(optimizer),
                    momentum=momentum, weight_decay=weight_decay, batches=len(drawn))
    in_branches = recorder.branch_modules | attention.branch_modules | (
        sums.branch_modules if sums is not None else set())
    d = Diagnosis(layers=layer_stats(recorder, in_branches), tensors=tensors, loss_before=before,
                  loss_after=after, batch_losses=losses,
                  branches=branch_stats(recorder, attention, sums),
                  attention=[AttentionStat(n, h.means, hn.means)
                             for n, (h, hn) in attention.entropy.items()],
                  ranks=[RankStat(n, r.mean, s.mean, f.mean)
                         for n, (r, s, f) in attention.ranks.items()],
                  settings=settings, seconds=time.perf_counter() - start, label=label)
    d.findings = judge(d)
    return d


@contextlib.contextmanager
def kept_grads(model: nn.Module) -> Iterator[None]:
    """The parameters' `.grad` as they were (a loss_fn that calls the real model would add to
    them)."""
    saved = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    try:
        yield
    finally:
        for p, g in saved:
            p.grad = g


def check_settings(lr: Optional[float], optimizer: OptimizerSpec, momentum: float,
                   weight_decay: float, batches: int) -> None:
    if not callable(optimizer) and optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)} or a callable "
                         f"params -> torch.optim.Optimizer, got {optimizer!r}")
    if lr is None and not callable(optimizer):
        raise TypeError("diagnose needs lr=, the learning rate you will train with: the update "
                        "ratios and the one-step loss depend on it (e.g. lr=0.1 for SGD, 1e-3 "
                        "for Adam)")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not 0 <= momentum < 1 or weight_decay < 0:
        raise ValueError(f"need 0 <= momentum < 1 and weight_decay >= 0, got {momentum}, "
                         f"{weight_decay}")
    if not isinstance(batches, int) or batches < 2:
        raise ValueError(f"batches must be an int >= 2 (at least one measured batch and one "
                         f"held out), got {batches!r}")


def draw(data: Iterable, batches: int, device: torch.device) -> list[Any]:
    """Up to `batches` batches from one pass over `data` (at least 2), on `device`."""
    if isinstance(data, (torch.Tensor, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be an iterable of batches (a DataLoader, a list of "
                        f"(inputs, targets)...), got {type(data).__name__}")
    drawn = [to_device(b, device) for b in itertools.islice(iter(data), batches)]
    if len(drawn) < 2:
        raise ValueError(f"data yielded {len(drawn)} batch{'es' if len(drawn) != 1 else ''}; "
                         "diagnose needs at least 2 (one measured, one held out)")
    if len(drawn) < batches:
        log.warning("data yielded %d of the %d batches asked for; using them", len(drawn), batches)
    return drawn


def rms(t: torch.Tensor) -> float:
    return float(t.detach().double().square().mean().sqrt()) if t.numel() else math.nan


def _muter(*recorders: Any):
    def mute(on: bool) -> None:
        for r in recorders:
            r.active = not on
    return mute


CHAIN_RATIO = 2.5  # an activation or pooling changes the spread by less; a residual sum or a norm may not


def layer_stats(recorder: Recorder, in_branches: set[str]) -> list[LayerStat]:
    """The recorded layers in forward order, with each weighted layer's gain (see LayerStat)."""
    out, previous = [], None
    for e in recorder.entries.values():
        stat = LayerStat(e.name, e.kind, e.out.rms, e.out.mean, e.out.spread, e.weighted,
                         in_branch=e.name.partition("#")[0] in in_branches)
        if e.weighted:
            if e.float_input:
                into = e.inp.spread
                chained = (previous is not None and into > 0 and previous > 0
                           and max(into / previous, previous / into) <= CHAIN_RATIO)
                reference = previous if chained else into
                stat.chained = chained
                stat.gain = e.out.spread / reference if reference and reference > 0 else None
            previous = e.out.spread
        out.append(stat)
    return out


def branch_stats(recorder: Recorder, attention: TransformerRecorder,
                 sums: Optional[SumRecorder]) -> list[BranchStat]:
    found = [(recorder.sources[name], name, pair) for name, pair in recorder.branches.items()]
    found += [("sublayer", name, pair) for name, pair in attention.branches.items()]
    found += [("traced", name, pair) for name, pair in (sums.branches if sums else {}).items()]
    return [BranchStat(name, b.rms, s.rms, source) for source, name, (b, s) in found]
