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

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

#: A leaf given by module type (any instance) or by qualified name ("blocks.3.attn").
LeafSpec = Union[type, str]

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


# -- torch.export, folded back onto the model's modules -------------------------------------------
def _is_leaf(m: nn.Module, fqn: str, leaves: Sequence[LeafSpec]) -> bool:
    return any(isinstance(m, t) for t in leaves if isinstance(t, type)) or fqn in leaves


def _needs_signature(m: nn.Module) -> bool:
    """Leaves whose call signature export must keep: anything but a one-input torch.nn layer."""
    return isinstance(m, nn.MultiheadAttention) or not type(m).__module__.startswith("torch.nn")


def export_graph(model: nn.Module, inputs: tuple[Any, ...],
                 leaves: Sequence[LeafSpec]) -> fx.GraphModule:
    """`model` traced by `torch.export` (non-strict), leaf calls folded into `call_module`
    nodes, parameters and buffers as `get_attr` nodes. A forward taking `use_cache` (Hugging
    Face) is traced with `use_cache=False`: the cache is no part of the computation."""
    kwargs = {"use_cache": False} if "use_cache" in _parameters(model) else {}
    named = dict(model.named_modules())
    keep = tuple(n for n, m in named.items() if n and _is_leaf(m, n, leaves) and _needs_signature(m))
    try:
        ep = torch.export.export(model, inputs, kwargs, strict=False,
                                 preserve_module_call_signature=keep)
    except Exception:  # noqa: BLE001  (some modules cannot keep their signature: fold fewer)
        if not keep:
            raise
        ep = torch.export.export(model, inputs, kwargs, strict=False)
    return _fold(model, ep, named, leaves)


def _parameters(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


@dataclass
class _Region:
    """The nodes of one call of a leaf module in an exported graph."""
    fqn: str
    nodes: list[fx.Node] = field(default_factory=list)


def _regions(ep: Any, named: dict[str, nn.Module], leaves: Sequence[LeafSpec]
             ) -> dict[str, _Region]:
    """Each leaf call (by its `nn_module_stack` key), outermost leaf first: its nodes."""
    out: dict[str, _Region] = {}
    for node in ep.graph.nodes:
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            fqn = _fqn(path)
            m = named.get(fqn)
            if m is not None and fqn and _is_leaf(m, fqn, leaves):
                out.setdefault(key, _Region(fqn)).nodes.append(node)
                break
    return out


def _fqn(path: str) -> str:
    """The module's qualified name from an `nn_module_stack` path ("L['self'].h[0]" or "h.0")."""
    p = path.replace("L['self']", "").replace("L__self__", "").replace("][", ".")
    p = p.replace("[", ".").replace("]", "").replace("'", "").replace('"', "")
    return p.strip("._")


def _fold(model: nn.Module, ep: Any, named: dict[str, nn.Module],
          leaves: Sequence[LeafSpec]) -> fx.GraphModule:
    sig = ep.graph_signature
    attr_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
               **sig.inputs_to_lifted_tensor_constants}
    constant_inputs = {s.arg.name: s.arg.value for s in sig.input_specs
                       if type(s.arg).__name__ == "ConstantArgument"}   # e.g. use_cache=False
    calls = {e.fqn: e.signature for e in ep.module_call_graph if e.signature is not None}
    order = {n: i for i, n in enumerate(ep.graph.nodes)}
    folds: dict[fx.Node, tuple[_Region, list[fx.Node]]] = {}   # last node of region -> outputs
    skip: set[fx.Node] = set()
    for region in _regions(ep, named, leaves).values():
        inside = set(region.nodes)
        outputs = [n for n in region.nodes if any(u not in inside for u in n.users)]
        last = max(region.nodes, key=order.__getitem__)
        users_after = all(order[u] > order[last] for o in outputs for u in o.users
                          if u not in inside)
        if outputs and users_after and _foldable(region, outputs, inside, attr_of, calls):
            folds[last] = (region, outputs)
            skip |= inside
    g = fx.Graph()
    env: dict[fx.Node, Any] = {}
    root: dict[str, Any] = {}
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in constant_inputs:
            env[node] = constant_inputs[node.name]
        elif node.op == "placeholder":
            if node.name in attr_of:
                target = attr_of[node.name]
                root[target] = ep.constants[target] if target in ep.constants else \
                    _attr(model, target)
                env[node] = g.get_attr(target)
            else:
                env[node] = g.placeholder(node.name)
            env[node].meta = dict(node.meta)
        elif node in folds:
            region, outputs = folds[node]
            root[region.fqn] = named[region.fqn]
            env.update(_fold_call(g, region, outputs, env, calls, attr_of))
        elif node not in skip:
            env[node] = g.node_copy(node, lambda n: env[n])
    gm = fx.GraphModule(root, g, type(model).__name__)
    return gm


def _attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _external_inputs(region: _Region, inside: set[fx.Node], attr_of: dict[str, str]
                     ) -> list[fx.Node]:
    found: list[fx.Node] = []
    for n in region.nodes:
        for a in n.all_input_nodes:
            if a not in inside and a.name not in attr_of and a not in found:
                found.append(a)
    return found


def _foldable(region: _Region, outputs: list[fx.Node], inside: set[fx.Node],
              attr_of: dict[str, str], calls: dict[str, Any]) -> bool:
    if region.fqn in calls:
        return True
    return len(outputs) == 1 and len(_external_inputs(region, inside, attr_of)) == 1


def _fold_call(g: fx.Graph, region: _Region, outputs: list[fx.Node], env: dict[fx.Node, fx.Node],
               calls: dict[str, Any], attr_of: dict[str, str]) -> dict[fx.Node, fx.Node]:
    """One `call_module` node for the region; its outputs by `getitem` where there are several."""
    inside = set(region.nodes)
    signature = calls.get(region.fqn)
    by_name = {n.name: n for n in region.nodes}
    for n in _external_inputs(region, inside, attr_of):
        by_name[n.name] = n
    if signature is None:
        (x,) = _external_inputs(region, inside, attr_of)
        call = g.call_module(region.fqn, (env[x],))
        call.meta = dict(outputs[0].meta)
        return {outputs[0]: call}
    leaves = [_argument(a, by_name, env) for a in signature.inputs]
    args, kwargs = pytree.tree_unflatten(leaves, signature.in_spec)
    call = g.call_module(region.fqn, tuple(args), dict(kwargs))
    outs = [getattr(a, "name", None) for a in signature.outputs]
    mapped: dict[fx.Node, fx.Node] = {}
    if len(outs) == 1 and signature.out_spec.num_leaves == 1:
        for o in outputs:
            if o.name == outs[0]:
                call.meta = dict(o.meta)
                mapped[o] = call
        return mapped
    structure = pytree.tree_unflatten(list(range(len(outs))), signature.out_spec)
    for o in outputs:
        if o.name in outs:
            path = _path_to(structure, outs.index(o.name))
            node = call
            for i in path:
                node = g.call_function(_getitem, (node, i))
            node.meta = dict(o.meta)
            mapped[o] = node
    return mapped


def _getitem(x: Any, i: Any) -> Any:
    return x[i]


def _path_to(structure: Any, leaf: int) -> list[Any]:
    if structure == leaf and isinstance(structure, int):
        return []
    items = structure.items() if isinstance(structure, dict) else enumerate(structure) \
        if isinstance(structure, (list, tuple)) else []
    for k, v in items:
        try:
            return [k] + _path_to(v, leaf)
        except LookupError:
            continue
    raise LookupError(leaf)


def _argument(a: Any, by_name: dict[str, fx.Node], env: dict[fx.Node, fx.Node]) -> Any:
    name = getattr(a, "name", None)
    if name is not None and name in by_name:
        return env[by_name[name]]
    return getattr(a, "value", None)


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
