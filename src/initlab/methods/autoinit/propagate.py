"""The engine: moments node by node through the traced graph, drawing weights on the way.

Contract:
- Inputs: a float input gets the configured statistics (`input_moments`: standard normal by
  default, so that nothing of the example input but its shape is used); integer inputs (token
  ids, masks) are not signals.
- A node that no signal reaches (masks, positions, rotary tables, a parameter read on its own)
  is a constant: its value on the example input (`core.graph.run_graph`) gives its statistics,
  and maps may read it (`ctx.value`).
- Every other node goes to its map (`registry.find_map`). A chain of elementwise operations
  that all read one tensor is evaluated as one function of it (`elementwise.fused`). Maps not
  declared `per_channel` get their inputs pooled. A map that returns `NotImplemented` (a case it
  does not cover) counts as missing; a missing map passes its first input's statistics through,
  with one warning per operation. An exception in a map propagates with a note naming the
  node and its module.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
from torch import fx, nn
from torch.nn import functional as F

from ...core.graph import module_of, op_name
from .config import AutoInitConfig
from .context import MapContext, Run
from .elementwise import fused
from .layout import follow
from .registry import MapSpec, find_map
from .scales import chi_square_scales
from .statistics import Moments, fixed

#: Functions that read a parameter as a table (their output is a signal without a signal input).
_TABLES = {F.embedding, torch.ops.aten.embedding.default, torch.ops.aten.embedding}


def signal_nodes(gm: fx.GraphModule, inputs: tuple) -> set[fx.Node]:
    """Nodes a signal reaches: float inputs, modules with parameters, tables, and everything
    downstream of them."""
    found: set[fx.Node] = set()
    placeholders = iter(inputs)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            v = next(placeholders, None)
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                found.add(node)
        elif node.op in ("call_module", "call_function", "call_method"):
            if any(a in found for a in node.all_input_nodes) or node.target in _TABLES or (
                    node.op == "call_module" and
                    any(True for _ in module_of(gm, node).parameters())):
                found.add(node)
    return found


def input_moments(cfg: AutoInitConfig, x: Any) -> Optional[Moments]:
    """The statistics of a graph input: the configured ones, or with "measure" its own
    (mean and variance over all elements; for maps, the spread of the per-(sample, dim 1) means
    beyond what i.i.d. noise gives, as the shared part). Scale classes: those of a mean square
    over one position's elements (the last dim of features and tokens, the whole sample of an
    image)."""
    if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
        return None
    # a position: the last dim for features and tokens; an image's pixels are mixed by convs,
    # so its classes are the whole sample's
    wide = x.dim() >= 4
    n = max(1, x[0].numel()) if wide or x.dim() < 2 else x.shape[-1]
    scales = chi_square_scales(n)
    if cfg.input_moments != "measure":
        mean, var = (0.0, 1.0) if cfg.input_moments == "standard" else cfg.input_moments
        return Moments(float(mean), float(var), scales=scales, sample_wide=wide)
    v = x.detach().double().cpu()
    shared = 0.0
    if v.dim() >= 3:
        per = v.flatten(2)                                          # (N, C, positions)
        spread = float(per.mean(2).var(1, unbiased=False).mean())
        noise = float(per.var(2, unbiased=False).mean()) / per.shape[2]
        shared = max(0.0, spread - noise)
    return Moments(v.mean(), v.var(unbiased=False), shared, scales=scales, sample_wide=wide)


def propagate(run: Run, inputs: tuple) -> dict[str, Any]:
    """Moments of every node, in graph order (see the module docstring)."""
    est = run.estimates
    batch = next((x.shape[0] for x in inputs if isinstance(x, torch.Tensor) and x.dim() > 0), 0)
    batch = next((s[0] for s in run.graph.shapes.values() if isinstance(s, tuple) and s
                  and isinstance(s[0], int)), batch)
    roots: dict[fx.Node, fx.Node] = {}
    unknown: dict[str, list[str]] = {}
    placeholders = iter(inputs)
    for node in run.gm.graph.nodes:
        if node.op == "placeholder" or any(a.name in run.inputs_reach
                                           for a in node.all_input_nodes):
            run.inputs_reach.add(node.name)
        if node.op == "placeholder":
            est[node.name] = input_moments(run.cfg, next(placeholders, None))
        elif node.op == "get_attr":
            est[node.name] = fixed(run.attr(node), batch)
        elif node.op == "output":
            continue
        elif node.name in run.graph.values:
            est[node.name] = fixed(run.graph.values[node.name], batch)
        elif run.graph.shapes.get(node.name) is None:
            est[node.name] = None                      # not a tensor (x.size(0), ...)
        else:
            est[node.name] = _step(run, node, roots, unknown)
    for op, names in unknown.items():
        warnings.warn(f"autoinit: no moment map for {op} (nodes {', '.join(names[:5])}"
                      f"{', ...' if len(names) > 5 else ''}); its input statistics pass through "
                      "unchanged. Register one with initlab.register_moment_map.", stacklevel=4)
    return est


def _pooled(value: Any) -> Any:
    if isinstance(value, Moments):
        return value.collapse()
    if isinstance(value, tuple):
        return tuple(_pooled(v) for v in value)
    return value


def elementwise_root(run: Run, node: fx.Node, spec: Optional[MapSpec], signals: list[fx.Node],
          roots: dict[fx.Node, fx.Node]) -> Optional[fx.Node]:
    """The tensor this elementwise node is a function of, if all its signals share one."""
    if spec is None or not spec.elementwise or not signals:
        return None
    found = {roots.get(a, a) for a in signals}
    others = [a for a in run_inputs(node) if a not in signals]
    scalars = all(not isinstance(run.graph.values.get(a.name), torch.Tensor) or
                  run.graph.values[a.name].numel() == 1 for a in others)
    return found.pop() if len(found) == 1 and scalars else None


def run_inputs(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if a.op != "get_attr"]


def _step(run: Run, node: fx.Node, roots: dict[fx.Node, fx.Node],
          unknown: dict[str, list[str]]) -> Any:
    est = run.estimates
    module = module_of(run.gm, node) if node.op == "call_module" else None
    spec = find_map(node, module)
    pooled = spec is None or not spec.per_channel
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: (
        _pooled(est.get(n.name)) if pooled else est.get(n.name)))
    ctx = MapContext(node, module, args, kwargs, run)
    signals = [a for a in run_inputs(node) if ctx.is_signal(a)]
    root = elementwise_root(run, node, spec, signals, roots)
    if root is not None:
        roots[node] = root
    out: Any = NotImplemented
    try:
        if root is not None and len(set(signals)) > 1:
            out = fused(ctx, root)
        elif spec is not None:
            out = follow(ctx) if spec.fn is None else spec.fn(ctx)
    except Exception as e:
        if hasattr(e, "add_note"):
            where = f"module '{node.target}' ({type(module).__name__})" if module is not None \
                else f"node '{node.name}' ({op_name(node)})"
            e.add_note(f"in AutoInit's moment map for {where}")
        raise
    if out is NotImplemented:
        unknown.setdefault(op_name(node), []).append(node.name)
        found = ctx.tensor_inputs()
        out = found[0] if found else None
    return out


def untouched(model: nn.Module, done: set[int]) -> list[str]:
    """Linear/Conv/Embedding layers whose weight the trace never reached."""
    kinds = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)
    return [n for n, m in model.named_modules() if isinstance(m, kinds)
            and m.weight.requires_grad and id(m.weight) not in done]


def pooled_estimates(est: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """(mean, variance) of every node with statistics."""
    out = {}
    for k, v in est.items():
        if isinstance(v, Moments):
            mean, var = v.pooled()
            if math.isfinite(mean) and math.isfinite(var):
                out[k] = (mean, var)
    return out
