"""The constraint step's shortcut: scale gradients of Linear/Conv weights without weight gradients.

A constraint step needs (J^T v)_i = d<g(alpha), v>/dalpha_i = <H v, w_i>, with v = dN/dg and H
the Hessian at p = alpha * w: a double backward. Taken with respect to p_i = alpha_i * w_i (the
authors' way), autograd forms all of H v, weight gradients included, and only then reduces each
block with w_i. For a convolution that is 9 convolutions per layer (forward 1, backward 2, double
backward 6: the double backward of PyTorch's convolution backward computes every gradient it
can, needed or not); a training step has 3.

For a layer that is bilinear in (input, weight), Z = f(X, W) (Linear, Conv1d/2d/3d, bias added
after), W_i enters the forward-and-backward graph in exactly two places: the forward Z = f(X, W)
and the backward's input gradient gX = f^T(gZ, W) (the weight gradient g_i = f_W(X, gZ) does not
read W). Both are linear in W, so the reduction with w_i = W_i / alpha_i needs no weight gradient:

    (J^T v)_i = ( <d<g, v>/dZ, Z> + <d<g, v>/dgX, gX> ) / alpha_i,

summed over the layer's calls. The search runs these modules through `_Conv` / `_Linear`, which
record Z (forward) and gX (first backward) on a `Tape`; the double backward is then asked for
the gradients with respect to those recorded tensors (and alpha, for the other tensors), never
for p_i. Their backward takes gX from the *detached* weight (a forward op whose own backward
computes only what is needed) and the weight gradient only while grad mode is on (the first
backward, taken with create_graph, not the double backward): 7 convolutions per layer instead of 9.
The tape holds one extra activation per layer until the step ends.

It is used only where it is exact: the tensor is the `weight` of modules of exactly these types
(no subclass, no parametrization, no instance-level forward; convolutions with zero padding given
as numbers) and nothing else holds it; and, checked on the first pass that uses it, every use of
the tensor in the autograd graph is one of those modules' calls (a weight also read directly, by a
parent module or a regularizer in the loss, falls back to the plain route).
"""
from __future__ import annotations

import contextlib
import logging
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..core.params import ParamSpec

log = logging.getLogger("initlab.methods.gradinit")

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Tape:
    """What the shortcut layers recorded in one pass: (tensor index, Z) and (tensor index, gX)."""
    outputs: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    input_grads: list[tuple[int, torch.Tensor]] = field(default_factory=list)


def _eligible(module: nn.Module) -> bool:
    if "forward" in vars(module):  # a forward set on the instance: not the standard one
        return False
    if type(module) is nn.Linear:
        return True
    return (type(module) in CONVS and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


class _Linear(torch.autograd.Function):
    """x @ w.T (no bias); records gX on the tape during the first backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, tape: Tape, i: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.tape, ctx.i = tape, i
        return F.linear(x, w)

    @staticmethod
    def backward(ctx, gz: torch.Tensor):
        x, w = ctx.saved_tensors
        first = torch.is_grad_enabled()  # the first backward (create_graph), not the double one
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = gz @ w.detach()  # (..., out) @ (out, in)
            if first:
                ctx.tape.input_grads.append((ctx.i, gx))
        if ctx.needs_input_grad[1] and first:
            gw = gz.reshape(-1, gz.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (out, in)
        return gx, gw, None, None


class _Conv(torch.autograd.Function):
    """conv(x, w) (no bias, batched); records gX on the tape during the first backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, conv: nn.Module, tape: Tape,
                i: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.tape, ctx.i = tape, i
        ctx.conf = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        stride, padding, dilation, groups = ctx.conf
        return torch.ops.aten.convolution(x, w, None, stride, padding, dilation, False,
                                          [0] * len(stride), groups)

    @staticmethod
    def backward(ctx, gz: torch.Tensor):
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        first = torch.is_grad_enabled()
        gx = gw = None
        if ctx.needs_input_grad[0]:  # a transposed convolution; output_padding restores x's size
            extra = [x.shape[2 + d] - ((gz.shape[2 + d] - 1) * stride[d] - 2 * padding[d]
                                       + dilation[d] * (w.shape[2 + d] - 1) + 1)
                     for d in range(len(stride))]
            gx = torch.ops.aten.convolution(gz, w.detach(), None, stride, padding, dilation,
                                            True, extra, groups)
            if first:
                ctx.tape.input_grads.append((ctx.i, gx))
        if ctx.needs_input_grad[1] and first:
            gw = torch.ops.aten.convolution_backward(
                gz, x, w, None, stride, padding, dilation, False, [0] * len(stride), groups,
                [False, True, False])[1]
        return gx, gw, None, None, None


def _shortcut_forward(tape: Tape, i: int):
    """The forward a shortcut module runs during the pass: f(x, W) on the tape, then + b."""
    def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if type(module) is nn.Linear:
            z, bias = _Linear.apply(x, module.weight, tape, i), module.bias
        else:
            batched = x.dim() == module.weight.dim()  # (N, C, ...) or unbatched (C, ...)
            z = _Conv.apply(x if batched else x.unsqueeze(0), module.weight, module, tape, i)
            z = z if batched else z.squeeze(0)
            bias = None if module.bias is None else \
                module.bias.reshape(-1, *[1] * (module.weight.dim() - 2))
        tape.outputs.append((i, z))
        # a new tensor either way: an in-place op downstream (ReLU(inplace=True)) must not
        # change the recorded z
        return z.clone() if bias is None else z + bias
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
        self.checked = False  # the graph check below runs on the first pass that uses them

    def usable(self, alpha: torch.Tensor) -> list[int]:
        """Tensors that take the shortcut at these scales (a zero scale cannot be divided by)."""
        return [i for i in sorted(self.owners) if alpha[i] != 0]

    @contextlib.contextmanager
    def recording(self, fast: list[int]) -> Iterator[Tape]:
        """Within: the listed tensors' modules run through `_Conv`/`_Linear` onto the tape."""
        tape, swapped = Tape(), []
        try:
            for i in fast:
                for module in self.owners[i]:
                    module.forward = types.MethodType(_shortcut_forward(tape, i), module)
                    swapped.append(module)
            yield tape
        finally:
            for module in swapped:
                del module.forward  # back to the class's forward

    def check(self, loss: torch.Tensor, leaves: dict[int, torch.Tensor], tape: Tape) -> list[int]:
        """Tensors whose uses in the graph of `loss` are not exactly their modules' calls; they
        leave the shortcut for good. Checked once per search (the graph's shape does not change)."""
        self.checked = True
        calls = Counter(i for i, _ in tape.outputs)
        uses = _leaf_uses(loss, {id(t) for t in leaves.values()})
        bad = [i for i, t in leaves.items() if uses[id(t)] != calls[i] or calls[i] == 0]
        for i in bad:
            log.info("gradinit: tensor %d is used outside its layer's forward; its constraint "
                     "gradient takes the plain route", i)
            del self.owners[i]
        return bad


def scale_vjp(tape: Tape, grads: list, alpha: torch.Tensor, da: torch.Tensor) -> None:
    """Add (<dZ, Z> + <dgX, gX>) / alpha_i to da[i]; `grads` match tape.outputs + input_grads."""
    recorded = tape.outputs + tape.input_grads
    wide = lambda x: x.reshape(-1).to(torch.promote_types(x.dtype, torch.float32))  # noqa: E731
    terms = [(i, torch.vdot(wide(d), wide(t.detach())).to(torch.float64))
             for (i, t), d in zip(recorded, grads) if d is not None]
    if terms:
        idx = torch.tensor([i for i, _ in terms])
        da.index_add_(0, idx, torch.stack([x for _, x in terms]).cpu() / alpha[idx])


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
