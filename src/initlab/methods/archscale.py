"""Architecture-aware initialization and learning rates from the model's graph.

Chen, Wu, Wang & Hanin, "Principled Architecture-aware Scaling of Hyperparameters", ICLR 2024
(arXiv 2402.17440). The model is a DAG of Linear/Conv(+ReLU) edges and summing nodes:

- init (`archscale_init`): He variance divided by the number of tensors summed before the next
  nonlinearity, `Var(W) = gain^2 / (fan_in * d_in)`, biases 0;
- maximal learning rate (`archscale_lr`): `eta* ~ (sum_p L_p^3)^(-1/2) / q`, the sum over all
  input->output paths p of the graph, L_p the number of Linear/Conv layers on p, q the conv
  kernel size (1 for MLPs); calibrated on a base network: `eta = eta_base *
  (sum_p L_p^3 / sum_base L^3)^(-1/2) * q_base / q`, by default a one-hidden-layer network
  (one path of 2 layers, the same q).

Where initlab departs from the authors' scripts (fixed DAG encodings of NAS-Bench-201 cells):
the graph is any `torch.fx` trace of the model; paths run along every tensor data flow (sums,
concatenations, products, shape operations); with several kernel sizes q is the largest side.
"""
from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import fx, nn

from ..core.checks import positive, require
from ..core.finish import finish, plain_settings, unchanged_on_error
from ..core.graph import LeafSpec, module_of, trace
from ..core.report import DrawReport, InitReport
from ..core.rules import LAYERS, Staged, draw, generator
from ..registry import register

#: Operations that join tensors into one sum (the "node" of the paper's DAG).
SUMS = {operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, torch.sub, "sub"}
#: Operations that pass a branch through unchanged on its way to a sum (shape, scalar, dropout).
PASS_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
                "unsqueeze", "mul", "div"}
PASS_FUNCTIONS = {operator.getitem, operator.mul, operator.truediv, torch.flatten, torch.mul}
PASS_MODULES = (nn.Identity, nn.Flatten, nn.Dropout)
#: Values that are sizes, not tensors: no path goes through them.
SIZE_METHODS = {"size", "dim", "numel"}


@dataclass
class ArchScaleConfig:
    nonlinearity: str = "relu"            # the gain: torch.nn.init.calculate_gain(nonlinearity)
    distribution: str = "normal"          # "normal" or "uniform" (same variance)
    leaf_modules: Sequence[LeafSpec] = ()
    seed: Optional[int] = None

    def validate(self) -> None:
        torch.nn.init.calculate_gain(self.nonlinearity, 0.01)  # raises on an unknown name
        require(self.distribution in ("normal", "uniform"),
                f"distribution must be 'normal' or 'uniform', got {self.distribution!r}")


def _is_weighted(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(module_of(gm, node), LAYERS)


def _is_sum(node: fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and node.target in SUMS


def _operands(node: fx.Node) -> list[fx.Node]:
    """Input nodes with multiplicity (`x + x` has two operands: two paths)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def path_depths(model: nn.Module, leaf_modules: Sequence[LeafSpec] = ()) -> dict[int, int]:
    """Number of input->output paths of `model`'s graph with L parameterized (Linear/Conv)
    layers, for each L: {L: count}. Counted by dynamic programming over the graph, one
    histogram per node (the sum of its inputs' histograms, shifted by one at a weighted layer)."""
    gm = trace(model, leaf_modules)
    hist: dict[fx.Node, Counter] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            hist[node] = Counter({0: 1})
            continue
        if node.op == "get_attr" or (node.op == "call_method" and node.target in SIZE_METHODS) \
                or (node.op == "call_function" and node.target is getattr):
            continue  # parameters and sizes: no path starts or runs here
        merged: Counter = Counter()
        for a in _operands(node):
            merged.update(hist.get(a, Counter()))
        if not merged:
            continue
        hist[node] = Counter({k + 1: v for k, v in merged.items()}) if _is_weighted(gm, node) \
            else merged
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return dict(sorted(hist.get(out, Counter()).items()))


def kernel_size(model: nn.Module) -> int:
    """q: the largest side of any convolution kernel in `model` (1 without convolutions)."""
    sides = [max(m.kernel_size) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return max(sides, default=1)


def path_sum(model: nn.Module, leaf_modules: Sequence[LeafSpec] = ()) -> int:
    """sum over paths p of L_p^3."""
    return sum(count * depth ** 3 for depth, count in path_depths(model, leaf_modules).items())


def archscale_lr(model: nn.Module, base_lr: float, base_model: Optional[nn.Module] = None, *,
                 leaf_modules: Sequence[LeafSpec] = ()) -> float:
    """The architecture-aware maximal learning rate of `model`, from `base_lr`, the
    learning rate that works for `base_model` (default: a one-hidden-layer network with the same
    kernel size, whose one path has 2 layers)."""
    positive("base_lr", base_lr)
    total = path_sum(model, leaf_modules)
    if total == 0:
        raise ValueError("the model has no input->output path through a Linear/Conv layer; "
                         "archscale_lr needs at least one")
    base_total, base_q = (8, kernel_size(model)) if base_model is None else (
        path_sum(base_model, leaf_modules), kernel_size(base_model))
    if base_total == 0:
        raise ValueError("base_model has no input->output path through a Linear/Conv layer")
    return base_lr * math.sqrt(base_total / total) * base_q / kernel_size(model)


def _through(node: fx.Node, gm: fx.GraphModule) -> Optional[fx.Node]:
    """The single user of `node` if it just passes the tensor on, else None."""
    users = list(node.users)
    if len(users) != 1:
        return None
    u = users[0]
    if (u.op == "call_method" and u.target in PASS_METHODS) or \
            (u.op == "call_function" and u.target in PASS_FUNCTIONS) or \
            (u.op == "call_module" and isinstance(module_of(gm, u), PASS_MODULES)):
        return u
    return None


def in_degrees(gm: fx.GraphModule) -> dict[str, int]:
    """For each Linear/Conv (by module name): how many tensors are summed with its output
    before the next nonlinearity (1 if its output is not summed)."""
    def leaves(s: fx.Node) -> int:  # operands of a tree of sums, nested sums expanded
        count = 0
        for a in _operands(s):
            inner = _is_sum(a) and len(a.users) == 1
            count += leaves(a) if inner else 1
        return count

    out: dict[str, int] = {}
    for node in gm.graph.nodes:
        if not _is_weighted(gm, node):
            continue
        cur = node
        while (nxt := _through(cur, gm)) is not None:
            cur = nxt
        users = list(cur.users)
        if len(users) == 1 and _is_sum(users[0]):
            root = users[0]
            while len(root.users) == 1 and _is_sum(next(iter(root.users))):
                root = next(iter(root.users))
            out.setdefault(str(node.target), leaves(root))
        else:
            out.setdefault(str(node.target), 1)
    return out


@register("archscale", config=ArchScaleConfig,
          description="He init divided by the number of tensors summed at each "
          "node of the graph (in-degree)", paper="Chen, Wu, Wang & Hanin, ICLR 2024")
def archscale_init(model: nn.Module, **settings: Any) -> InitReport:
    """Initialize every Linear/Conv weight of `model` in place with Var = gain^2 / (fan_in *
    d_in), d_in from the traced graph (`in_degrees`); biases 0. Layers the trace does not reach
    keep their values. On any error the model is unchanged. Returns a `DrawReport` (per layer:
    fan-in, in-degree, the std drawn)."""
    cfg = ArchScaleConfig(**settings)
    cfg.validate()
    gain = torch.nn.init.calculate_gain(cfg.nonlinearity, 0.01)
    gen = generator(cfg.seed)
    staged, history = Staged(), []
    with unchanged_on_error("archscale"):
        gm = trace(model, cfg.leaf_modules)
        for name, d in in_degrees(gm).items():
            m = model.get_submodule(name)
            fan_in = m.weight.shape[1] * math.prod(m.weight.shape[2:])
            std = gain / math.sqrt(fan_in * d)
            if cfg.distribution == "normal":
                staged.set(m.weight, draw(m.weight, torch.nn.init.normal_, gen, std=std))
            else:
                a = std * math.sqrt(3)
                staged.set(m.weight, draw(m.weight, torch.nn.init.uniform_, gen, a=-a, b=a))
            staged.zero(m.bias)
            history.append(dict(layer=name, fan_in=fan_in, in_degree=d, weight_std=std))
        staged.commit("archscale")
    return finish(model, "archscale", settings=plain_settings(cfg), history=history,
                  report=DrawReport)
