"""What a moment map sees of one graph node: `MapContext`, and the run it belongs to: `Run`.

Contract: `ctx.args` / `ctx.kwargs` are the node's arguments with every input node replaced by
its `Moments` (a constant tensor by the `Moments` of its values; None for values without
statistics, such as integer tensors); `ctx.raw_args` keeps the graph nodes, `ctx.value(a)` gives
a constant input's actual value on the example input, `ctx.shape(a)` any input's shape.
Weighted layers draw their weights through `ctx.weights` (a `WeightPlan`): nothing is written to
the model until every layer has been computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import fx, nn

from ...core.graph import GraphRun
from .statistics import Moments

if TYPE_CHECKING:
    from .config import AutoInitConfig
    from .weights import WeightPlan


@dataclass
class Run:
    """The state of one AutoInit call that maps may use: settings, the weights being drawn,
    the random generator (Monte Carlo), the traced graph and its run on the example input."""
    cfg: "AutoInitConfig"
    weights: "WeightPlan"
    generator: torch.Generator
    gm: fx.GraphModule
    graph: GraphRun
    estimates: dict[str, Any] = field(default_factory=dict)   # node name -> Moments so far

    def attr(self, node: fx.Node) -> Any:
        """The object a `get_attr` node names (the model's own parameter or buffer)."""
        obj: Any = self.gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj


@dataclass
class MapContext:
    """One node, its inputs' statistics, and the run (see the module docstring)."""
    node: fx.Node
    module: Optional[nn.Module]
    args: tuple
    kwargs: dict
    run: Run

    @property
    def weights(self) -> "WeightPlan":
        return self.run.weights

    @property
    def raw_args(self) -> tuple:
        return self.node.args

    @property
    def name(self) -> str:
        """The module's qualified name for a module call, else the node's name."""
        return str(self.node.target) if self.module is not None else self.node.name

    @property
    def out_shape(self) -> Any:
        return self.run.graph.shapes.get(self.node.name)

    @property
    def quadrature_points(self) -> int:
        return self.run.cfg.quadrature_points

    def shape(self, a: Any) -> Any:
        return self.run.graph.shapes.get(a.name) if isinstance(a, fx.Node) else None

    def value(self, a: Any) -> Any:
        """A constant input's value on the example input (a parameter's current value, a
        Python constant as it is); None for signals."""
        if isinstance(a, fx.Node):
            if a.op == "get_attr":
                v = self.run.attr(a)
                return self.weights.value(v) if isinstance(v, torch.Tensor) else v
            return self.run.graph.values.get(a.name)
        return a

    def run_moments(self, node: fx.Node) -> Any:
        """The statistics computed for an earlier node (unpooled)."""
        return self.run.estimates.get(node.name)

    def tensor_inputs(self) -> list[Moments]:
        flat: list[Any] = []
        fx.node.map_aggregate((self.args, self.kwargs), flat.append)
        return [m for m in flat if isinstance(m, Moments)]

    def first(self) -> Moments:
        """The Moments of the first tensor input."""
        found = self.tensor_inputs()
        if not found:
            raise ValueError(f"node {self.node.name} has no input with known statistics")
        return found[0]

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        """Argument i (positional) or `name` (keyword), as substituted."""
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)

    def raw_arg(self, i: int, name: str, default: Any = None) -> Any:
        if len(self.node.args) > i:
            return self.node.args[i]
        return self.node.kwargs.get(name, default)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Run this node's operation (module, Tensor method or function) on these arguments."""
        if self.module is not None:
            return self.module(*args, **kwargs)
        if self.node.op == "call_method":
            return getattr(args[0], str(self.node.target))(*args[1:], **kwargs)
        return self.node.target(*args, **kwargs)

    def substituted(self, replace: dict[fx.Node, Any]) -> tuple[tuple, dict]:
        """The node's args and kwargs with the nodes in `replace` replaced and every other
        input node by its value (constants)."""
        def sub(n: fx.Node) -> Any:
            return replace[n] if n in replace else self.value(n)
        return fx.node.map_arg((self.node.args, self.node.kwargs), sub)

    def evaluate(self, z: torch.Tensor) -> torch.Tensor:
        """This node's operation with its (first) signal input replaced by `z` (float64),
        other inputs at their values: an elementwise function of one tensor."""
        signal = next(a for a in self.node.all_input_nodes if self.is_signal(a))
        if self.module is not None:
            p = next(self.module.parameters(), None)
            dtype = p.dtype if p is not None and p.is_floating_point() else torch.float64
            return self.call(z.to(dtype)).double()
        args, kwargs = self.substituted({signal: z})
        return self.call(*args, **kwargs).double()

    def is_signal(self, a: Any) -> bool:
        """Whether input `a` is a signal (statistics, no fixed value)."""
        return isinstance(a, fx.Node) and a.op != "get_attr" and \
            a.name not in self.run.graph.values

    def normal(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.run.generator, dtype=torch.float64)
