"""The constraint step's shortcut: scale gradients of Linear/Conv weights without weight gradients.

A constraint step needs (J^T v)_i = d<g(alpha), v>/dalpha_i = <H v, w_i>, with v = dN/dg and H
the Hessian at p = alpha * w: a double backward. Taken with respect to p_i = alpha_i * w_i (the
authors' way), autograd forms all of H v, weight gradients included, and only then reduces each
block with w_i. For a convolution that is 9 convolutions per layer (forward 1, backward 2, double
backward 6: the double backward of PyTorch's convolution backward computes every gradient it
can, needed or not); a training step has 3.

A layer that is bilinear in (input, weight), Z = f(X, W) (Linear, Conv1d/2d/3d; bias added
after), reads W_i in exactly two places of the forward-and-backward graph: the forward
Z = f(X, W) and the input gradient gX = f^T(gZ, W) (the weight gradient g_i = f_W(X, gZ) does not
read W). Both are linear in W = alpha_i w_i, so dZ/dalpha_i = Z / alpha_i and
dgX/dalpha_i = gX / alpha_i, and with the adjoint identities:

    (J^T v)_i = ( <dZ', X> + <dgZ', gZ> ) / alpha_i,
    dZ' = f^T(d<g,v>/dZ, W)  (the input gradient the double backward computes anyway),
    dgZ' = f(d<g,v>/dgX, W)  (the gradient it passes back to gZ anyway),

with X and gZ tensors the graph already holds. So these layers run as `_Forward`, whose backward
builds gX through `_InputGrad`; both take alpha_i as an input and, in the double backward, return
exactly these terms as its gradient, while p_i is a plain leaf with no path to alpha. The double
backward then computes no weight gradient and holds no extra tensor: 7 convolutions per layer
instead of 9 (a layer whose input needs no gradient, e.g. the first, costs 5 on both routes).

It is used only where it is exact: the tensor is the `weight` of modules of exactly these types
(no subclass, no parametrization, no instance-level forward; convolutions with zero padding given
as numbers) and nothing else holds it; and, checked on the first pass that uses it, every use of
the tensor in the autograd graph is one of those modules' calls (a weight also read directly, by a
parent module or a regularizer in the loss, or a layer run under autocast, falls back to the plain
route).
"""
from __future__ import annotations

import contextlib
import logging
import types
from collections import Counter
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ...core.params import ParamSpec

log = logging.getLogger("initlab.methods.gradinit")

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _eligible(module: nn.Module) -> bool:
    if "forward" in vars(module):  # a forward set on the instance: not the standard one
        return False
    if type(module) is nn.Linear:
        return True
    return (type(module) in CONVS and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


class BilinearMap:
    """Z = f(X, W) of a Linear or (batched) Conv module, its transpose and weight gradient."""

    def __init__(self, module: nn.Module):
        self.conv = type(module) is not nn.Linear
        if self.conv:
            self.stride, self.padding = list(module.stride), list(module.padding)
            self.dilation, self.groups = list(module.dilation), module.groups

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if not self.conv:
            return F.linear(x, w)
        return torch.convolution(x, w, None, self.stride, self.padding, self.dilation,
                                          False, [0] * len(self.stride), self.groups)

    def transpose(self, gz: torch.Tensor, w: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        """f^T(gZ, W): the input gradient, of shape x_shape."""
        if not self.conv:
            return gz @ w  # (..., out) @ (out, in)
        extra = [x_shape[2 + d] - ((gz.shape[2 + d] - 1) * self.stride[d] - 2 * self.padding[d]
                                   + self.dilation[d] * (w.shape[2 + d] - 1) + 1)
                 for d in range(len(self.stride))]  # output_padding that restores x's size
        return torch.convolution(gz, w, None, self.stride, self.padding, self.dilation,
                                          True, extra, self.groups)

    def weight_grad(self, x: torch.Tensor, gz: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if not self.conv:
            return gz.reshape(-1, gz.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (out, in)
        return torch.ops.aten.convolution_backward.default(
            gz, x, w, None, self.stride, self.padding, self.dilation, False,
            [0] * len(self.stride), self.groups, [False, True, False])[1]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    wide = torch.promote_types(a.dtype, torch.float32)
    return torch.vdot(a.reshape(-1).to(wide), b.reshape(-1).to(wide))


class _Forward(torch.autograd.Function):
    """Z = f(X, W), with alpha_i an input whose gradient is <dZ', X> / alpha_i."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, a: torch.Tensor,
                op: BilinearMap) -> torch.Tensor:
        ctx.save_for_backward(x, w, a)
        ctx.op = op
        return op.forward(x, w)

    @staticmethod
    def backward(ctx, gz: torch.Tensor):
        x, w, a = ctx.saved_tensors
        op, need = ctx.op, ctx.needs_input_grad
        if torch.is_grad_enabled():  # the first backward (create_graph): gX and the weight's g
            gx = _InputGrad.apply(gz, w.detach(), a, op, x.shape) if need[0] else None
            return gx, op.weight_grad(x, gz, w) if need[1] else None, None, None
        # the double backward: gz = d<g, v>/dZ; p_i is not wanted (no path to alpha)
        gx = op.transpose(gz, w, x.shape)
        return gx if need[0] else None, None, (_dot(gx, x) / a).to(a.device), None


class _InputGrad(torch.autograd.Function):
    """gX = f^T(gZ, W) of the first backward, with alpha_i an input: <dgZ', gZ> / alpha_i."""

    @staticmethod
    def forward(ctx, gz: torch.Tensor, w: torch.Tensor, a: torch.Tensor, op: BilinearMap,
                x_shape: torch.Size) -> torch.Tensor:
        ctx.save_for_backward(gz, w, a)
        ctx.op = op
        return op.transpose(gz, w, x_shape)

    @staticmethod
    def backward(ctx, ggx: torch.Tensor):
        gz, w, a = ctx.saved_tensors
        u = ctx.op.forward(ggx, w)  # = dgZ', shaped like gZ
        return u, None, (_dot(u, gz) / a).to(a.device), None, None


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _shortcut_forward(a: torch.Tensor, op: BilinearMap, calls: Counter, i: int):
    """The forward a shortcut module runs during the pass: `_Forward`, then + bias."""
    def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if _autocast_on(x.device.type):  # mixed dtypes: the class's forward, and an uncounted
            return type(module).forward(module, x)  # call makes `check` drop the tensor
        calls[i] += 1
        if not op.conv:
            z = _Forward.apply(x, module.weight, a, op)
            return z if module.bias is None else z + module.bias
        batched = x.dim() == module.weight.dim()  # (N, C, ...) or unbatched (C, ...)
        z = _Forward.apply(x if batched else x.unsqueeze(0), module.weight, a, op)
        z = z if batched else z.squeeze(0)
        if module.bias is None:
            return z
        return z + module.bias.reshape(-1, *[1] * (module.weight.dim() - 2))
    return forward


class Shortcut:
    """Which tensors may take the shortcut, and the module forwards that apply it."""

    def __init__(self, model: nn.Module, specs: list[ParamSpec]):
        index = {id(s.param): i for i, s in enumerate(specs)}
        owners: dict[int, list[nn.Module]] = {}
        other: set[int] = set()
        for module in model.modules():
            for attr, p in module._parameters.items():
                i = index.get(id(p)) if p is not None else None
                if i is None:
                    continue
                if attr == "weight" and _eligible(module):
                    owners.setdefault(i, []).append(module)
                else:
                    other.add(i)
        self.owners = {i: ms for i, ms in owners.items() if i not in other}
        self.maps = {m: BilinearMap(m) for ms in self.owners.values() for m in ms}
        self.expected: Counter | None = None  # each tensor's calls per pass, once checked

    def usable(self, alpha: torch.Tensor) -> list[int]:
        """Tensors that take the shortcut at these scales (a zero scale cannot be divided by)."""
        return [i for i in sorted(self.owners) if alpha[i] != 0]

    @contextlib.contextmanager
    def running(self, a: torch.Tensor, fast: list[int]) -> Iterator[Counter]:
        """Within: the listed tensors' modules run through `_Forward`; yields their call counts."""
        calls: Counter = Counter()
        swapped: list[nn.Module] = []
        try:
            for i in fast:
                for module in self.owners[i]:
                    forward = _shortcut_forward(a[i], self.maps[module], calls, i)
                    module.forward = types.MethodType(forward, module)
                    swapped.append(module)
            yield calls
        finally:
            for module in swapped:
                del module.forward  # back to the class's forward

    def check(self, loss: torch.Tensor, leaves: dict[int, torch.Tensor], calls: Counter) -> list[int]:
        """Tensors that leave the shortcut for good (the caller redoes the pass without them).

        On the first pass, those whose uses in the graph of `loss` are not exactly their
        modules' calls (a walk over the graph); later, those whose call count differs from the
        first pass's (a forward that changes with the batch, autocast switched on)."""
        if self.expected is None:
            uses = _leaf_uses(loss, {id(t) for t in leaves.values()})
            bad = [i for i, t in leaves.items() if uses[id(t)] != calls[i] or calls[i] == 0]
            self.expected = Counter({i: calls[i] for i in leaves if i not in bad})
        else:
            bad = [i for i in leaves if calls[i] != self.expected[i]]
        for i in bad:
            log.info("gradinit: tensor %d is used outside its layer's forward; its constraint "
                     "gradient takes the plain route", i)
            del self.owners[i]
            self.expected.pop(i, None)
        return bad


def _leaf_uses(loss: torch.Tensor, ids: set[int]) -> Counter:
    """How many autograd edges lead to each leaf tensor in `ids` (one per op that reads it)."""
    uses: Counter = Counter()
    seen: set = set()
    stack = [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            var = getattr(nxt, "variable", None)  # AccumulateGrad: the leaf itself
            if var is not None:
                if id(var) in ids:
                    uses[id(var)] += 1
            elif nxt is not None:
                stack.append(nxt)
    return uses
