"""`torch.export` graphs folded back onto the model's own modules (for `core.graph.trace`).

Contract: `export_graph(model, inputs, leaves)` traces `model` with `torch.export` (non-strict)
and returns an `fx.GraphModule` whose `call_module` nodes are the model's own leaf modules, each
call with its own inputs (the call signature preserved by export for leaves outside `torch.nn`;
a `torch.nn` leaf must have one tensor input and one output), and whose parameters and buffers
are `get_attr` nodes naming the model's own tensors. Every other node is an ATen operator.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

#: A leaf given by module type (any instance) or by qualified name ("blocks.3.attn").
LeafSpec = Union[type, str]


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
