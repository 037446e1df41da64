"""The model's computation graph, for the analytic methods (AutoInit, architecture-aware scaling).

    gm = trace(model, leaf_modules=(MyBlock,), example_input=x)   # an fx.GraphModule
    run = run_graph(gm, x)                       # shapes of every node, values of some

Contract:
- The returned `GraphModule` holds the model's own submodules and parameters (not copies): a
  `call_module` node's target names the module in `model`, a `get_attr` node a parameter or
  buffer of `model` (or a constant of the trace).
- Two tracers. `torch.fx` symbolic tracing first: fast, and its nodes are the model's own calls
  (modules, torch functions, Tensor methods). It fails on data-dependent Python (and on most
  Hugging Face models). Then, given an example input, `torch.export` (non-strict): its nodes are
  ATen operators; each carries the stack of modules it ran in (`nn_module_stack`), and every
  call of a *leaf* module is folded back into one `call_module` node with the call's own inputs
  (the call signature is preserved for leaves outside `torch.nn`), so maps keyed by module type
  and `leaf_modules` work the same with both tracers. A module that cannot be folded (its call
  has several tensor inputs and no preserved signature, or outputs used before it ends) stays
  as its ATen operators.
- Leaves: the types and qualified names given, `DEFAULT_LEAVES`, and (fx) every `torch.nn`
  layer. `autowrap` functions (plain Python functions) are kept as single `call_function`
  nodes by fx instead of being traced into.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import fx, nn

from .export import LeafSpec, export_graph

DEFAULT_LEAVES: tuple[type, ...] = (nn.MultiheadAttention,)
TRACERS = ("auto", "fx", "export")


class TraceError(RuntimeError):
    """The model could not be traced; the message says how to make it traceable."""


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: Sequence[LeafSpec], autowrap: Sequence[Callable] = ()):
        super().__init__(autowrap_functions=tuple(autowrap))
        self.leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self.leaf_names = {n for n in leaves if isinstance(n, str)}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.leaf_types) or qualname in self.leaf_names:
            return True
        return super().is_leaf_module(m, qualname)


def as_inputs(example_input: Any) -> tuple[Any, ...]:
    """A tensor, or a tuple/list of positional inputs, as a tuple of positional inputs."""
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def trace(model: nn.Module, leaf_modules: Sequence[LeafSpec] = (),
          concrete_args: Optional[dict[str, Any]] = None, *, example_input: Any = None,
          autowrap: Sequence[Callable] = (), tracer: str = "auto") -> fx.GraphModule:
    """`model` as an `fx.GraphModule` whose submodules and parameters are `model`'s own.

    Args:
        leaf_modules: module types or qualified names kept whole (not traced into), in addition
            to `DEFAULT_LEAVES` (and, with fx, every `torch.nn` layer).
        concrete_args: (fx) forward arguments fixed to constants (e.g. `{"mask": None}`).
        example_input: a tensor or tuple of positional inputs; needed by `torch.export`.
        autowrap: plain Python functions fx keeps as single nodes.
        tracer: "fx", "export", or "auto" (fx, then export where fx fails and an example input
            is given).

    Raises:
        TraceError: naming what failed and how to make the model traceable.
    """
    bad = [x for x in leaf_modules if not isinstance(x, (type, str))]
    if bad:
        raise TypeError(f"leaf_modules takes module types or qualified names, got {bad[0]!r}")
    if tracer not in TRACERS:
        raise ValueError(f"tracer must be one of {', '.join(map(repr, TRACERS))}, got {tracer!r}")
    leaves = list(DEFAULT_LEAVES) + list(leaf_modules)
    fx_error: Optional[Exception] = None
    if tracer in ("auto", "fx"):
        try:
            graph = _LeafTracer(leaves, autowrap).trace(model, concrete_args=concrete_args)
            return fx.GraphModule(model, graph, type(model).__name__)
        except Exception as e:  # noqa: BLE001  (fx raises many kinds: TraceError, TypeError, ...)
            fx_error = e
    if tracer == "fx" or example_input is None:
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {type(fx_error).__name__}: {fx_error}"
            "\nSymbolic tracing fails on data-dependent control flow. Pass an example input so "
            "that torch.export can trace it, or keep the module that does it whole with "
            "leaf_modules=(ThatModuleType,) or leaf_modules=('its.qualified.name',) and register "
            "a moment map for it (initlab.register_moment_map).") from fx_error
    try:
        return export_graph(model, as_inputs(example_input), leaves)
    except Exception as e:  # noqa: BLE001
        fx_part = "" if fx_error is None else \
            f"torch.fx: {type(fx_error).__name__}: {str(fx_error)[:300]}\n"
        raise TraceError(
            f"neither torch.fx nor torch.export can trace {type(model).__name__}.\n{fx_part}"
            f"torch.export: {type(e).__name__}: {str(e)[:600]}\nMake the module that fails a "
            "leaf (leaf_modules=...) and register a moment map for it.") from e


# -- running the graph once ------------------------------------------------------------------------
@dataclass
class GraphRun:
    """One run of the graph on the example input: each node's output shape (a tuple of ints, a
    tuple of shapes for tuple outputs, None for non-tensors), the values `keep` asked for and
    every value that is not a tensor (sizes, flags)."""
    shapes: dict[str, Any]
    values: dict[str, Any]


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, keep: Callable[[fx.Node], bool]):
        super().__init__(gm)
        self.extra_traceback = False       # the model's own exceptions pass through unchanged
        self.keep = keep
        self.shapes: dict[str, Any] = {}
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n.name] = _shape_of(out)
        if self.keep(n) or (self.shapes[n.name] is None and n.op not in ("output",)):
            self.values[n.name] = out
        return out


def run_graph(gm: fx.GraphModule, example_input: Any,
              keep: Callable[[fx.Node], bool] = lambda n: False) -> GraphRun:
    """Run `example_input` (a tensor, or a tuple of positional inputs) through the graph once,
    without gradients, in the modules' current modes; record shapes, and the values of the nodes
    `keep` selects."""
    rec = _Recorder(gm, keep)
    with torch.no_grad():
        rec.run(*as_inputs(example_input))
    return GraphRun(rec.shapes, rec.values)


def tensor_shapes(gm: fx.GraphModule, example_input: Any) -> dict[str, Any]:
    """Each node's output shape on `example_input` (see `run_graph`)."""
    return run_graph(gm, example_input).shapes


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and value and \
            any(isinstance(v, (torch.Tensor, tuple, list)) for v in value):
        return tuple(_shape_of(v) for v in value)
    return None


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    """The module a `call_module` node calls (the model's own instance)."""
    return gm.get_submodule(str(node.target))


def op_name(node: fx.Node) -> str:
    """A readable name of what a node does: "nn.Linear", "torch.relu", "Tensor.mean", ..."""
    if node.op == "call_module":
        return "module " + type(node.graph.owning_module.get_submodule(str(node.target))).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        t = node.target
        if isinstance(t, torch._ops.OpOverload):
            return f"aten.{t.__name__}"
        mod = getattr(t, "__module__", None) or ""
        return f"{mod.replace('torch.nn.functional', 'F')}.{getattr(t, '__name__', repr(t))}"
    return f"{node.op} {node.target}"
