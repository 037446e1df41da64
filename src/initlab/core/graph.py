"""The model's computation graph, from `torch.fx` symbolic tracing, for the analytic methods.

    gm = trace(model, leaf_modules=(MyBlock,))        # an fx.GraphModule sharing model's modules
    shapes = tensor_shapes(gm, example_input)         # node name -> output shape (or None)

The traced `GraphModule` holds the model's own submodules and parameters (not copies), so a
`call_module` node's target names the module in `model` itself. Tracing runs the model's Python
once with proxies: data-dependent control flow (`if x.sum() > 0`, loops over `x.shape[0]` used as
a value, checks inside `nn.TransformerEncoderLayer` or `nn.MultiheadAttention`) cannot be traced.
Such modules can be made *leaves*, kept whole as one `call_module` node; `nn.MultiheadAttention`
is a leaf by default.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

#: A leaf given by module type (any instance) or by qualified name ("blocks.3.attn").
LeafSpec = Union[type, str]

DEFAULT_LEAVES: tuple[type, ...] = (nn.MultiheadAttention,)


class TraceError(RuntimeError):
    """The model could not be traced symbolically; the message says how to make it traceable."""


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: Sequence[LeafSpec]):
        super().__init__()
        self.leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self.leaf_names = {n for n in leaves if isinstance(n, str)}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.leaf_types) or qualname in self.leaf_names:
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaf_modules: Sequence[LeafSpec] = (),
          concrete_args: dict[str, Any] | None = None) -> fx.GraphModule:
    """`model` as an `fx.GraphModule` whose submodules and parameters are `model`'s own.

    Args:
        leaf_modules: module types or qualified names kept whole (not traced into), in addition
            to torch's own leaves (every `torch.nn` layer) and `DEFAULT_LEAVES`.
        concrete_args: forward arguments fixed to constants while tracing (e.g. `{"mask": None}`).

    Raises:
        TraceError: naming the failing module where fx says it, and suggesting `leaf_modules`.
    """
    bad = [x for x in leaf_modules if not isinstance(x, (type, str))]
    if bad:
        raise TypeError(f"leaf_modules takes module types or qualified names, got {bad[0]!r}")
    tracer = _LeafTracer(list(DEFAULT_LEAVES) + list(leaf_modules))
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as e:  # noqa: BLE001  (fx raises many kinds: TraceError, TypeError, ...)
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {e}\n"
            "Symbolic tracing fails on data-dependent control flow. Keep the module that does it "
            "whole with leaf_modules=(ThatModuleType,) or leaf_modules=('its.qualified.name',), "
            "and register a moment map for it if it changes the signal's statistics "
            "(initlab.register_moment_map)."
        ) from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _as_tuple(example_input: Any) -> tuple[Any, ...]:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def tensor_shapes(gm: fx.GraphModule, example_input: Any) -> dict[str, Any]:
    """Run `example_input` (a tensor, or a tuple of positional inputs) through the graph once,
    without gradients, and return each node's output shape: a `torch.Size`, a tuple of them for
    tuple outputs, or None for non-tensor values. Modes are the model's own (no change)."""
    with torch.no_grad():
        ShapeProp(gm).propagate(*_as_tuple(example_input))
    out: dict[str, Any] = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        out[node.name] = _shape_of(meta)
    return out


def _shape_of(meta: Any) -> Any:
    if meta is None:
        return None
    if hasattr(meta, "shape"):
        return tuple(meta.shape)
    if isinstance(meta, (tuple, list)):
        return tuple(_shape_of(m) for m in meta)
    if isinstance(meta, dict):
        return None
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
        mod = getattr(t, "__module__", None) or ""
        return f"{mod.replace('torch.nn.functional', 'F')}.{getattr(t, '__name__', repr(t))}"
    return f"{node.op} {node.target}"
