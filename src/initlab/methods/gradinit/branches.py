"""Which layers sit in a post-normalized residual branch, found by following one forward pass.

The warm start brings each layer's output to unit RMS, the target of LSUV (Mishkin & Matas,
ICLR 2016) for plain networks. In a post-normalized block `LN(x + f(x))` (Post-LN
Transformers) the stream `x` comes out of the previous normalization at unit RMS, so that
target makes the branch `f(x)` as large as the stream, and the branch's share of every
normalized sum is what makes Post-LN unstable (Liu et al., EMNLP 2020; Admin and DeepNet
rescale exactly this ratio). So the warm start never grows a layer found here
(`warm_start.py`). Where the sum is not normalized (a ResNet without BN, a Pre-LN block) the
stream grows with depth and a unit-RMS branch becomes a shrinking share of it: such branches
are left to the warm start.

How: a `TorchFunctionMode` gives every tensor of the pass the set of its origins, i.e. which
batch tensors (negative ids) and which of the given layers (their index) it was computed from;
a layer's forward hook adds its index to its output's set. At an addition of two tensors that
share an origin, `a + b`, the layers that feed one side only, `origins(a) ^ origins(b)`, form a
branch (for `x + f(x)` the layers of `f`); it counts when the sum itself is the input of a
normalization (layer, group, batch, instance or RMS norm). Parameters, buffers and constants
have no origin, so adding a bias or a positional table marks nothing, and two inputs summed
after separate towers share none. Only additions count; concatenation (DenseNet) does not. A
normalization written out by hand (mean and variance ops) is not recognized. Control flow is
followed as it ran on this batch.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ...core.batches import batch_tensors

ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__,
        torch.Tensor.__radd__, torch.Tensor.__iadd__}
NORMS = {F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm, F.batch_norm,
         torch.batch_norm, F.instance_norm, torch.instance_norm,
         *[f for f in (getattr(F, "rms_norm", None), getattr(torch, "rms_norm", None)) if f]}


class _ByTensor:
    """Values kept per live tensor of the pass (by id, checked through a weak reference, so a
    reused id of a freed tensor finds nothing)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, frozenset[int]]] = {}

    def get(self, t: torch.Tensor) -> frozenset[int]:
        entry = self._entries.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else frozenset()

    def put(self, t: torch.Tensor, value: frozenset[int]) -> None:
        self._entries[id(t)] = (weakref.ref(t), value)


class _Origins(TorchFunctionMode):
    """Origins of every tensor the pass computes; the layers on one side of each addition."""

    def __init__(self) -> None:
        super().__init__()
        self.origins, self.sums = _ByTensor(), _ByTensor()  # sums: a sum -> its branch
        self.branch: set[int] = set()

    def add(self, out: Any, origins: frozenset[int]) -> None:
        """Add `origins` to every tensor in `out`."""
        if origins:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.origins.put(t, self.origins.get(t) | origins)

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func in NORMS and inputs:  # a residual sum normalized: its branch counts
            self.branch |= self.sums.get(inputs[0])
        if func in ADDS and len(inputs) == 2 and isinstance(out, torch.Tensor):
            a, b = self.origins.get(inputs[0]), self.origins.get(inputs[1])
            if a & b:
                self.sums.put(out, frozenset(i for i in a ^ b if i >= 0))
        self.add(out, frozenset().union(*(self.origins.get(t) for t in inputs)))
        return out


def residual_branch_layers(modules: list[nn.Module], forward: Callable[[], Any],
                           batch: Any) -> set[int]:
    """Indices into `modules` of the layers in a post-normalized residual branch, from one run
    of `forward` (no gradient) on `batch`, whose tensors are the origins."""
    mode = _Origins()
    for i, t in enumerate(batch_tensors(batch)):
        mode.add(t, frozenset({-1 - i}))

    def tag(index: int) -> Callable:
        def hook(module: nn.Module, inputs: Any, out: Any) -> None:
            mode.add(out, frozenset({index}))
        return hook

    handles = [m.register_forward_hook(tag(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad(), mode:
            forward()
    finally:
        for h in handles:
            h.remove()
    return mode.branch
