"""AutoInit's entry point: trace, run the graph once for shapes, propagate, commit.

Bingham & Miikkulainen, "AutoInit: Analytic Signal-Preserving Weight Initialization for Neural
Networks", AAAI 2023 (arXiv 2109.08958). Their code is TensorFlow-only; initlab's is written from
the paper's formulas. Where it departs, and why:
- statistics are per channel and computed from the weights actually drawn (`layers.py`), so a
  layer's output units' different means and gains, which nonlinearities turn into different
  channel statistics, are followed; zero padding and position-constant parts are counted;
- by default each drawn weight is scaled so that its predicted output variance is exactly
  sigma^2 (`rescale=False`: the paper's draw as it falls);
- chains of elementwise operations on one tensor are one function of it (`elementwise.fused`);
  non-normal laws are carried as quantiles where an activation makes them (`statistics.py`);
- models that `torch.fx` cannot trace (Hugging Face Transformers) are traced with
  `torch.export` (`core.graph`).
The example input gives shapes only, unless `input_moments="measure"`; nothing measured on it
rescales a weight (that would be LSUV).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Union

import torch
from torch import nn

from ...core.finish import finish, plain_settings, unchanged_on_error
from ...core.graph import as_inputs, run_graph, trace
from ...core.modes import restore_buffers, snapshot_buffers
from ...core.report import InitReport, VarianceReport
from ...core.rules import generator
from ...registry import register
from .config import AutoInitConfig
from .context import Run
from .propagate import pooled_estimates, propagate, signal_nodes, untouched
from .registry import module_types, plain_functions
from .weights import WeightPlan

log = logging.getLogger(__name__)


def _few(inputs: tuple) -> tuple:
    """The example batch cut to 2 rows for the shape run of an fx graph (shapes only)."""
    rows = {x.shape[0] for x in inputs if isinstance(x, torch.Tensor) and x.dim() > 0}
    if len(rows) != 1 or next(iter(rows)) <= 2:
        return inputs
    return tuple(x[:2] if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in inputs)


def _graph_run(gm: Any, inputs: tuple, signals: set) -> Any:
    """Shapes of every node and values of the constant ones, modes as they are, batch-norm
    buffers and the random generators untouched."""
    exported = any("nn_module_stack" in n.meta for n in gm.graph.nodes)
    saved = snapshot_buffers(gm)
    try:
        with torch.random.fork_rng(devices=[]):
            for batch in ((inputs,) if exported else (_few(inputs), inputs)):
                try:
                    return run_graph(gm, batch, keep=lambda n: n not in signals and
                                     n.op not in ("placeholder", "get_attr", "output"))
                except Exception:  # noqa: BLE001  (a model fixed to its batch size: full batch)
                    if batch is inputs:
                        raise
    finally:
        restore_buffers(gm, saved)


def _once(model: nn.Module, gm: Any, graph: Any, inputs: tuple, cfg: AutoInitConfig,
          fixed: dict[int, float]) -> tuple[WeightPlan, dict[str, Any]]:
    gen = generator(cfg.seed) or torch.Generator().manual_seed(int(torch.randint(2**31, ())))
    plan = WeightPlan(cfg, gen, fixed)
    run = Run(cfg, plan, torch.Generator().manual_seed(int(gen.initial_seed()) + 1), gm, graph)
    return plan, propagate(run, inputs)


@register("autoinit", config=AutoInitConfig, description="analytic: propagate (mean, variance) through the traced "
          "graph, each layer's output variance set to sigma^2 (needs example_input)",
          paper="Bingham & Miikkulainen, AAAI 2023")
def autoinit(model: nn.Module, example_input: Any = None, *, return_estimates: bool = False,
             **settings: Any) -> Union[InitReport, tuple[InitReport, dict[str, Any]]]:
    """Initialize every Linear/Conv/Embedding weight of `model` with AutoInit, in place.

    Args:
        model: any `nn.Module` that `torch.fx` or `torch.export` can trace (else pass
            `leaf_modules=` and register maps for them); its mode (train/eval) decides whether
            dropout and batch statistics count. Left bitwise unchanged on any error.
        example_input: a tensor, or a tuple of positional inputs, of the shapes the model takes
            (its values matter only with `input_moments="measure"`). A `(inputs, targets)`
            batch is not unpacked: pass `batch[0]`.
        return_estimates: also return the predicted (mean, variance) of every graph node.
        **settings: fields of `AutoInitConfig`.

    Returns:
        an `InitReport` whose history has one entry per drawn weight (name, fan_in, input
        mean and variance, weight std, predicted output mean and variance); with
        `return_estimates=True`, `(report, estimates)`.
    """
    cfg = AutoInitConfig(**settings)
    cfg.validate()
    if example_input is None:
        raise ValueError("autoinit needs example_input=<a batch of inputs> to trace shapes; "
                         "with initlab.initialize pass example_input=batch[0]")
    inputs = as_inputs(example_input)
    with unchanged_on_error("autoinit"):
        gm = trace(model, list(cfg.leaf_modules) + list(module_types()), example_input=inputs,
                   autowrap=plain_functions(), tracer=cfg.tracer)
        graph = _graph_run(gm, inputs, signal_nodes(gm, inputs))
        plan, est = _once(model, gm, graph, inputs, cfg, {})
        if plan.asked:                     # tied embedding / output weights: drawn once, for
            plan, est = _once(model, gm, graph, inputs, cfg, plan.asked)   # the output layer
        missed = untouched(model, plan.done)
        if missed:
            warnings.warn(f"autoinit: layers never reached in the traced graph keep their "
                          f"weights: {', '.join(missed[:8])}{', ...' if len(missed) > 8 else ''}",
                          stacklevel=2)
        plan.commit()
    log.info("autoinit: %d weights drawn", len(plan.history))
    report = finish(model, "autoinit", settings=plain_settings(cfg), history=plan.history,
                    report=VarianceReport, target_variance=cfg.signal_variance)
    if return_estimates:
        return report, pooled_estimates(est)
    return report
