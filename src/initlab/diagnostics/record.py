"""Forward hooks that measure a model while it runs, never changing it.

`Recorder(model)` watches, for every forward of `model` while it is `active`:
- each layer's output (leaf modules, and `nn.MultiheadAttention` as one layer, since its output
  projection is not called as a module): running sums of x, x^2 and the squared deviation from
  the batch mean over all elements, so that RMS, mean and spread cover every batch. A module
  called k times per forward gives k entries ("act", "act#2", ...), in order of first call;
- for weighted layers (those owning a parameter of dim >= 2), the same sums of their input, or
  that it was not a floating-point signal (an Embedding's ids), for the gains by depth;
- residual connections: for each `initlab.ResidualSum` (`multiplier * x + f_x`), RMS of f_x
  against RMS of `multiplier * x`; for each marked branch (`initlab.mark_residual_branch`), RMS
  of `scale * branch(x)` against RMS of the branch's input x, the skip it is added to.

Sums stay on the model's device as float64 tensors; nothing is read back until `finish()`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..core.residual import ResidualSum, residual_branches

PASS_THROUGH = (nn.Identity, nn.modules.dropout._DropoutNd, nn.Flatten, nn.Unflatten)


def first_tensor(value: Any) -> Optional[torch.Tensor]:
    """The tensor itself, or the first tensor of a tuple/list output (MultiheadAttention)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


class Sums:
    """Running sums of a signal in float64 on its device: count, sum, sum of squares, and the
    sum of squared deviations from the mean over the first dimension (the batch)."""

    def __init__(self) -> None:
        self.n = self.n_dev = 0
        self.s1: Any = 0.0
        self.s2: Any = 0.0
        self.dev: Any = 0.0

    def add(self, t: torch.Tensor) -> None:
        # Two passes over t, accumulating in float64: the column sums over the batch and the
        # sum of squares; the squared deviations follow as sum x^2 - sum_j (col_j)^2 / B.
        v = t.detach()
        squares = torch.linalg.vector_norm(v, dtype=torch.float64).square()
        self.n += v.numel()
        self.s2 = self.s2 + squares
        if v.dim() >= 1 and v.shape[0] > 1:
            cols = v.sum(dim=0, dtype=torch.float64)
            self.s1 = self.s1 + cols.sum()
            self.n_dev += v.numel()
            self.dev = self.dev + squares - cols.square().sum() / v.shape[0]
        else:
            self.s1 = self.s1 + v.sum(dtype=torch.float64)

    @property
    def rms(self) -> float:
        return math.sqrt(float(self.s2) / self.n) if self.n else math.nan

    @property
    def mean(self) -> float:
        return float(self.s1) / self.n if self.n else math.nan

    @property
    def spread(self) -> float:
        """RMS of the deviation from the batch mean: the part of the signal that depends on
        the input (a layer whose output is its bias has RMS but no spread)."""
        return math.sqrt(max(float(self.dev), 0.0) / self.n_dev) if self.n_dev else math.nan


@dataclass
class Entry:
    name: str
    kind: str
    weighted: bool
    out: Sums = field(default_factory=Sums)
    inp: Sums = field(default_factory=Sums)      # weighted layers only
    float_input: bool = True


def is_weighted(module: nn.Module) -> bool:
    return any(p is not None and p.dim() >= 2 for p in module._parameters.values())


def watched_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules (and MultiheadAttention as a whole), without the pass-through kinds."""
    inside_attention = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention)
                        for c in m.modules() if c is not m}
    return [(name or "(model)", m) for name, m in model.named_modules()
            if id(m) not in inside_attention and not isinstance(m, PASS_THROUGH)
            and (isinstance(m, nn.MultiheadAttention) or next(m.children(), None) is None)]


class Recorder:
    def __init__(self, model: nn.Module):
        self.active = True
        self.entries: dict[str, Entry] = {}
        self.branches: dict[str, tuple[Sums, Sums]] = {}
        self.branch_modules: set[str] = set()   # layers inside marked branches and sums' branches
        self._calls: dict[str, int] = {}
        self.sources: dict[str, str] = {}       # residual name -> "marked" or "sum"
        self._handles = [model.register_forward_pre_hook(lambda m, a: self._calls.clear())]
        for name, m in watched_layers(model):
            self._handles.append(m.register_forward_hook(self._layer_hook(name, m)))
        names = {id(m): n for n, m in model.named_modules()}
        for b in residual_branches(model):
            self._handles.append(b.branch.register_forward_hook(self._branch_hook(b.name, b.scale)))
            self.branch_modules |= {names[id(m)] for m in b.branch.modules()}
        for name, m in model.named_modules():
            if isinstance(m, ResidualSum):
                self._handles.append(m.register_forward_hook(self._sum_hook(name)))
                self.branch_modules |= {names[id(c)] for f in m.branch for c in f.modules()
                                        if id(c) in names}

    @property
    def has_residuals(self) -> bool:
        """Marked branches or ResidualSum modules: no need to trace for sums."""
        return bool(self.sources)

    def _layer_hook(self, name: str, module: nn.Module):
        kind, weighted = type(module).__name__, is_weighted(module)

        def hook(m: nn.Module, args: tuple, output: Any) -> None:
            out = first_tensor(output)
            if not self.active or out is None or not out.is_floating_point():
                return
            k = self._calls.get(name, 0) + 1
            self._calls[name] = k
            key = name if k == 1 else f"{name}#{k}"
            x = first_tensor(args)
            float_input = x is not None and x.is_floating_point()
            entry = self.entries.get(key)
            if entry is None:
                entry = self.entries[key] = Entry(key, kind, weighted, float_input=float_input)
            entry.out.add(out)
            if weighted and float_input:
                entry.inp.add(x)
        return hook

    def _branch_hook(self, name: str, scale: Optional[torch.Tensor]):
        def hook(m: nn.Module, args: tuple, output: Any) -> None:
            x, out = first_tensor(args), first_tensor(output)
            if not self.active or x is None or out is None:
                return
            branch, skip = self.branches.setdefault(name, (Sums(), Sums()))
            branch.add(out * scale.detach() if scale is not None else out)
            skip.add(x)
        self.sources[name] = "marked"
        return hook

    def _sum_hook(self, name: str):
        def hook(m: ResidualSum, args: tuple, output: Any) -> None:
            if not self.active or len(args) < 2:
                return
            branch, skip = self.branches.setdefault(name, (Sums(), Sums()))
            branch.add(args[1])
            skip.add(args[0] * m.multiplier)
        self.sources[name] = "sum"
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
