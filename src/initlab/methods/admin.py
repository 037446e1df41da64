"""Admin: Post-LN residual weights set from one profiling forward pass.

Liu, Liu, Gao, Chen & Han, "Understanding the Difficulty of Training Transformers", EMNLP 2020
(arXiv 2004.08249); the authors' code is Transformer-Clinic (`--init-type adaptive-profiling`).
Each Post-LN sublayer computes

    x_i = LN(omega_i * x_{i-1} + f_i(x_{i-1})),

and omega_i is set so the residual stream keeps the weight of everything added before it: the
paper's omega_i = sqrt(sum_{j<i} Var[f_j(x_{j-1})]). As the authors' code computes it, in one
forward pass on a real batch, per stack (encoder and decoder each start at 1), in order of
execution:

    omega_1 = 1,   omega_{i+1} = sqrt(Var[omega_i * x_{i-1}] + Var[f_i(x_{i-1})]),

each variance over every element of the batch (padding positions included, as there), with
omega_i already in place when the later sublayers run (x_{i-1} is a LayerNorm output of variance
about 1 for i > 1, so omega_{i+1}^2 is about Var[x_0] + sum_{j<=i} Var[f_j]). The pass runs in
training mode (dropout on: the authors' profiling pass is their first training step);
`train_mode=False` profiles without dropout.

The model exposes its sums as `initlab.ResidualSum` modules (see `core.residual`); a model
without them, or whose Transformer layers normalize first (Pre-LN), is refused and left
unchanged. Departure from the authors' code, and why: omega is a fixed scalar buffer here, where
their code makes it a trainable per-channel vector filled with omega_i (initlab initializes; it
does not add parameters to the user's model). The report (`ResidualReport`) lists omega and
both variances per sum; the values live in the model's state dict.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from ..core.batches import BatchStream
from ..core.finish import finish, plain_settings, unchanged_on_error
from ..core.loss import LossFn, default_loss
from ..core.report import ResidualReport
from ..core.residual import NO_SUMS, ResidualSum, SumSite, pre_ln_layers, residual_sums
from ..registry import register

log = logging.getLogger(__name__)


@dataclass
class AdminConfig:
    train_mode: bool = True    # profile with dropout on, as the authors' first training step does


def profile_sums(model: nn.Module, sites: list[SumSite],
                 forward: Callable[[], Any]) -> list[dict[str, Any]]:
    """Run `forward()` once, setting each sum's multiplier to its stack's running ratio just
    before the sum is computed (the multipliers are written live: the caller restores them on
    failure). Returns one record per sum, in order of execution."""
    ratio: dict[Optional[str], float] = {}
    stack_of = {id(s.sum): s for s in sites}
    records: list[dict[str, Any]] = []
    seen: set[int] = set()

    def before(module: ResidualSum, args: tuple) -> None:
        if id(module) in seen:          # a sum called twice (shared layer): its first value holds
            return
        seen.add(id(module))
        site = stack_of[id(module)]
        x, f_x = args[0].detach().float(), args[1].detach().float()
        omega = ratio.get(site.stack, 1.0)
        module.multiplier.fill_(omega)
        x_var, f_var = float((omega * x).var(unbiased=False)), float(f_x.var(unbiased=False))
        ratio[site.stack] = math.sqrt(x_var + f_var)
        records.append(dict(sum=site.name, stack=site.stack or "", multiplier=omega,
                            input_var=x_var, branch_var=f_var))

    hooks = [s.sum.register_forward_pre_hook(before) for s in sites]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in hooks:
            h.remove()
    missed = [s.name for s in sites if id(s.sum) not in seen]
    if missed:
        raise ValueError(f"admin: the profiling pass never reached {', '.join(missed)}; every "
                         "residual sum must run in the model's forward pass")
    bad = [r["sum"] for r in records if not math.isfinite(r["multiplier"])]
    if bad or not all(math.isfinite(r["branch_var"]) for r in records):
        raise FloatingPointError(f"admin: non-finite variance in the profiling pass (at "
                                 f"{', '.join(bad) or 'a branch output'}); check the batch")
    return records


@register("admin", needs_data=True, description="Post-LN residual weights omega from one "
          "profiling forward pass", paper="Liu, Liu, Gao, Chen & Han, EMNLP 2020",
          config=AdminConfig)
def admin(model: nn.Module, data: Iterable, *, loss_fn: Optional[LossFn] = None,
          **settings: Any) -> ResidualReport:
    """Set every `ResidualSum`'s multiplier to Admin's omega, from one forward pass on the first
    batch of `data` (run through `loss_fn(model, batch)`, default: `(inputs, targets)` with
    cross-entropy). The model is unchanged on error."""
    cfg = AdminConfig(**settings)
    sites = residual_sums(model)
    if not sites:
        raise ValueError(NO_SUMS.format(method="admin"))
    pre = pre_ln_layers(sites)
    if pre:
        raise ValueError(f"admin is for Post-LN Transformers; these layers normalize first "
                         f"(Pre-LN): {', '.join(pre)}. Pre-LN needs no residual weighting")
    loss_fn = loss_fn or default_loss
    device = next(model.parameters()).device
    saved = [s.sum.multiplier.detach().clone() for s in sites]
    modes = {m: m.training for m in model.modules()}
    with unchanged_on_error("admin"):
        try:
            batch = BatchStream(data, device).next()
            model.train(cfg.train_mode)
            records = profile_sums(model, sites, lambda: loss_fn(model, batch))
        except BaseException:
            with torch.no_grad():
                for s, old in zip(sites, saved):
                    s.sum.multiplier.copy_(old)
            raise
        finally:
            for m, flag in modes.items():
                m.training = flag
    omegas = [r["multiplier"] for r in records]
    log.info("admin: omega from %.3g to %.3g over %d residual sums", min(omegas), max(omegas),
             len(records))
    return finish(model, "admin", settings=plain_settings(cfg), history=records,
                  report=ResidualReport)
