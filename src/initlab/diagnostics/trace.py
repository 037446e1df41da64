"""Residual sums found by tracing, for networks whose branches are not marked.

`SumRecorder(model)` traces the model with `torch.fx` (leaves: modules without children,
`nn.MultiheadAttention` and torch's Transformer layers); where the model does not trace
(data-dependent control flow), each child is tried instead, recursively. In a traced graph an
addition `a + b` of two computed values of one shape is a residual sum when both depend on the
same input and, counting only the nodes each operand does not share with the other, one side
passes through more parameterized modules than the other: that side is the branch, the other
the skip (`x + f(x)`, `relu(shortcut(x) + conv(conv(x)))`). While `active`, each traced
module's graph is run again, without gradients and with `mute` on, on the inputs the module
received in the real forward, and both operands of every sum are measured.
"""
from __future__ import annotations

import logging
import operator
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
from torch import nn

from .record import Sums, first_tensor
from .transformer import TORCH_LAYERS

log = logging.getLogger(__name__)
ADDS = {operator.add, operator.iadd, torch.add}


class LeafTracer(fx.Tracer):
    """Leaves: attention, torch's Transformer layers (their sublayers are measured by hooks, see
    transformer.py) and modules without children."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return (isinstance(m, (nn.MultiheadAttention, *TORCH_LAYERS))
                or next(m.children(), None) is None)


def _traced(module: nn.Module) -> Optional[fx.GraphModule]:
    try:
        return fx.GraphModule(module, LeafTracer().trace(module))
    except Exception:  # any failure to trace means: try the children
        return None


def residual_sums(gm: fx.GraphModule, prefix: str = "",
                  branch_modules: Optional[set[str]] = None) -> dict[fx.Node, tuple[str, int]]:
    """{add node: (block name, index of the branch operand)} for the residual sums of `gm`;
    the modules called on branch sides are added to `branch_modules`."""
    modules = dict(gm.named_modules())
    ancestors: dict[fx.Node, int] = {}        # bit i set: node i is an ancestor (or the node)
    weighted = 0                              # bits of calls of modules that hold parameters
    inputs = 0                                # bits of the placeholders
    found: dict[fx.Node, tuple[str, int]] = {}
    per_block: dict[str, int] = {}
    nodes = list(gm.graph.nodes)
    for i, n in enumerate(nodes):
        ancestors[n] = (1 << i) | _union(ancestors[a] for a in n.all_input_nodes)
        if n.op == "call_module" and next(modules[n.target].parameters(), None) is not None:
            weighted |= 1 << i
        if n.op == "placeholder":
            inputs |= 1 << i
        is_add = ((n.op == "call_function" and n.target in ADDS)
                  or (n.op == "call_method" and n.target in ("add", "add_")))
        if not is_add or len(n.args) < 2 or not all(isinstance(a, fx.Node) for a in n.args[:2]):
            continue
        a, b = n.args[:2]
        if not ancestors[a] & ancestors[b] & inputs:  # both sides must carry the input's signal
            continue
        wa = bin(ancestors[a] & ~ancestors[b] & weighted).count("1")
        wb = bin(ancestors[b] & ~ancestors[a] & weighted).count("1")
        if wa == wb:
            continue
        stack = n.meta.get("nn_module_stack") or {}
        block = next(reversed(stack), "") if stack else ""
        block = ".".join(p for p in (prefix.rstrip("."), block) if p) or "(model)"
        k = per_block[block] = per_block.get(block, 0) + 1
        found[n] = (block if k == 1 else f"{block} (sum {k})", 1 if wb > wa else 0)
        if branch_modules is not None:
            only = ancestors[b] & ~ancestors[a] if wb > wa else ancestors[a] & ~ancestors[b]
            branch_modules |= {".".join(p for p in (prefix, str(m.target)) if p)
                               for j, m in enumerate(nodes[:i]) if only >> j & 1
                               and m.op == "call_module"}
    return found


def _union(bits: Any) -> int:
    out = 0
    for b in bits:
        out |= b
    return out


class _Measure(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, sums: dict, sink: dict[str, tuple[Sums, Sums]]):
        super().__init__(gm)
        self.sums, self.sink = sums, sink

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.sums:
            key, branch = self.sums[n]
            a, b = (self.env[x] for x in n.args[:2])
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
                bs, ss = self.sink.setdefault(key, (Sums(), Sums()))
                bs.add((a, b)[branch])
                ss.add((b, a)[branch])
        return out


def _bind(gm: fx.GraphModule, args: tuple, kwargs: dict) -> list[Any]:
    """Positional values for the graph's placeholders from a call's args, kwargs and defaults."""
    values = []
    for i, p in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        if i < len(args):
            values.append(args[i])
        elif p.target in kwargs:
            values.append(kwargs[p.target])
        else:
            values.append(p.args[0] if p.args else None)
    return values


class SumRecorder:
    def __init__(self, model: nn.Module, mute: Callable[[bool], None]):
        self.active = True
        self.branches: dict[str, tuple[Sums, Sums]] = {}
        self.branch_modules: set[str] = set()
        self._mute = mute
        self._handles: list[Any] = []
        self._visit(model, "")

    def _visit(self, module: nn.Module, name: str) -> None:
        if next(module.children(), None) is None or isinstance(module, nn.MultiheadAttention):
            return
        gm = None if isinstance(module, TORCH_LAYERS) else _traced(module)
        if gm is None:
            for child_name, child in module.named_children():
                self._visit(child, f"{name}.{child_name}" if name else child_name)
            return
        sums = residual_sums(gm, name, self.branch_modules)
        if sums:
            self._handles.append(module.register_forward_hook(self._hook(gm, sums),
                                                              with_kwargs=True))

    def _hook(self, gm: fx.GraphModule, sums: dict):
        def hook(m: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if not self.active or first_tensor(output) is None:
                return
            self._mute(True)
            try:
                with torch.no_grad():
                    _Measure(gm, sums, self.branches).run(*_bind(gm, args, kwargs))
            except Exception as e:  # a trace that does not rerun: no sums from it, no failure
                log.debug("traced sums of %s not measured: %s", type(m).__name__, e)
            finally:
                self._mute(False)
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
