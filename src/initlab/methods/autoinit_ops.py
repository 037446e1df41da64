"""AutoInit moment maps for elementwise functions, arithmetic, concatenation and shape operations
(Bingham & Miikkulainen 2023): activations by Gauss-Hermite quadrature, sums and products of
independent tensors, concatenation as a mixture, reshapes as the identity. See `autoinit_maps.py`
for `Moments`.
"""
from __future__ import annotations

import math
import operator
from dataclasses import replace
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import autoinit_shape as shapes
from . import autoinit_spatial as spatial
from .autoinit_maps import (
    CHANNEL_MAPS,
    MapContext,
    Moments,
    align,
    constant,
    mixture,
    moments,
    product,
    quadrature,
    register_moment_map,
)


# -- generic maps ---------------------------------------------------------------------------------
def elementwise(ctx: MapContext) -> Moments:
    """y = f(x) elementwise: Gauss-Hermite quadrature of f under x's normal approximation,
    corrected for x's shape (`autoinit_shape`); f(x)'s shape, and its spatial correlation from
    x's (`autoinit_spatial`)."""
    x = ctx.first()
    y = quadrature(ctx.evaluate, x, ctx.quadrature_points)
    mean, local, shared = x.channel_stats()
    y = replace(y, shape=shapes.applied(ctx.evaluate, x.shape, mean, (local + shared).sqrt()))
    if x.rho is None or y.axis is None:
        return replace(y, rho=None)
    _, y_local, y_shared = y.channel_stats()
    return replace(y, rho=spatial.elementwise(ctx.evaluate, mean, local, shared, x.rho,
                                              y_local, y_shared))


def register_elementwise(*targets: Union[type, str, Callable]) -> None:
    """Declare elementwise operations: their moments come from Gauss-Hermite quadrature."""
    for t in targets:
        register_moment_map(t, elementwise)


#: Shape operations that keep the elements' order (a channel dim keeps its channels).
_ORDER_KEEPING = {nn.Identity, nn.Flatten, nn.Unflatten, torch.flatten, torch.reshape,
                  torch.squeeze, torch.unsqueeze, torch.clone, "view", "reshape", "flatten",
                  "unflatten", "squeeze", "unsqueeze", "contiguous", "clone", "detach", "to",
                  "float", "double", "half", "type_as", "view_as"}


def identity(ctx: MapContext) -> Any:
    """Shape operations (reshape, permute, indexing, ...): the statistics do not change.
    Indexing a tuple of results picks that result's statistics. Per-channel statistics follow
    their channel dim through order-keeping reshapes; other shape operations pool them."""
    src = ctx.args[0] if ctx.args else None
    if isinstance(src, (tuple, list)) and ctx.node.target is operator.getitem:
        return src[ctx.args[1]]
    x = ctx.first()
    if x.axis is None:
        return x
    target = type(ctx.module) if ctx.module is not None else ctx.node.target
    before, after = ctx.shape(ctx.raw_args[0]), ctx.out_shape
    moved = _moved_axis(ctx, x.axis, len(before) if isinstance(before, tuple) else 0)
    if moved is not None:
        return replace(x, axis=moved)
    if ctx.node.target is operator.getitem:
        return _indexed(x, ctx.raw_args[1])
    if target in _ORDER_KEEPING and isinstance(before, tuple) and isinstance(after, tuple):
        lead = math.prod(before[:x.axis])          # elements before one channel index
        for axis in range(len(after)):
            if math.prod(after[:axis]) == lead and after[axis] == before[x.axis]:
                same_map = tuple(after[axis + 1:]) == tuple(before[x.axis + 1:])
                return replace(x, axis=axis, rho=x.rho if same_map else None)
    return x.collapse()


def _indexed(x: Moments, index: Any) -> Moments:
    """x[index] where the index slices the dims up to the channel dim and takes every channel:
    the channels stay. Strided slices of the dims after it thin out the spatial correlation
    (rho at offset d becomes rho at offset step * d). Any other index pools the channels."""
    index = index if isinstance(index, tuple) else (index,)
    head, rest = index[:x.axis + 1], index[x.axis + 1:]
    if not all(isinstance(i, slice) for i in head) or \
            (len(head) > x.axis and head[x.axis] != slice(None)):
        return x.collapse()
    if x.rho is None or not rest:
        return x
    dims = x.rho.dim() - 1
    if len(rest) > dims or not all(isinstance(i, slice) and (i.step is None or
                                   isinstance(i.step, int) and i.step > 0) for i in rest):
        return replace(x, rho=None)
    steps = [i.step or 1 for i in rest] + [1] * (dims - len(rest))
    e = spatial.offsets(dims) * torch.tensor(steps)                      # (D, dims)
    return replace(x, rho=spatial.lookup(x.rho, e).reshape(x.rho.shape))


def _moved_axis(ctx: MapContext, axis: int, ndim: int) -> Optional[int]:
    """Where permute / transpose put the channel dim (None for other operations)."""
    name = getattr(ctx.node.target, "__name__", str(ctx.node.target))
    rest = [a for a in ctx.raw_args[1:]]
    if name == "permute" and ndim:
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        dims = [int(d) % ndim for d in dims] if all(isinstance(d, int) for d in dims) else []
        return dims.index(axis) if len(dims) == ndim else None
    if name == "transpose" and ndim and len(rest) == 2 and all(isinstance(d, int) for d in rest):
        a, b = (int(d) % ndim for d in rest)
        return b if axis == a else a if axis == b else axis
    return None


def split(ctx: MapContext) -> Any:
    """chunk/split/unbind: every piece keeps the statistics (a tuple, one per piece)."""
    shape = ctx.out_shape
    n = len(shape) if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple) else 1
    return tuple(ctx.first() for _ in range(n))


def _operands(ctx: MapContext) -> tuple[Optional[Moments], Optional[Moments]]:
    a = ctx.args[0]
    b = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("other")
    return (a if isinstance(a, Moments) else constant(a),
            b if isinstance(b, Moments) else constant(b))


def _same_node(ctx: MapContext) -> bool:
    raw = ctx.raw_args
    return len(raw) > 1 and isinstance(raw[0], fx.Node) and raw[0] is raw[1]


def _sum(a: Moments, b: Moments, alpha: float) -> Moments:
    """a + alpha * b for independent a, b, channel by channel where the channels match."""
    both = align(a, b)
    if both is None:
        return _sum(a.collapse(), b.collapse(), alpha)
    (ma, va, sa), (mb, vb, sb), axis = both
    y = moments(ma + alpha * mb, va + alpha ** 2 * vb, sa + alpha ** 2 * sb, axis)
    y = replace(y, shape=shapes.combine(a.sd(), a.shape, abs(alpha) * b.sd(),
                                        shapes.scaled(b.shape, alpha)))
    rho = a.rho if a.rho is not None else b.rho
    if y.axis is None or rho is None:
        return y
    la, lb = a.channel_stats()[1], b.channel_stats()[1] * alpha ** 2
    return replace(y, rho=spatial.mix(la, a.rho, lb, b.rho, rho.dim() - 1))


def add(ctx: MapContext) -> Moments:
    a, b = _operands(ctx)
    alpha = ctx.kwargs.get("alpha", 1)
    if _same_node(ctx):  # x + x = 2x (fully correlated)
        return a.like((1 + alpha) * a.mean, (1 + alpha) ** 2 * a.var,
                      (1 + alpha) ** 2 * a.shared, shape=shapes.scaled(a.shape, 1 + alpha))
    if a is None or b is None:
        return a or b
    return _sum(a, b, alpha)


def sub(ctx: MapContext) -> Moments:
    a, b = _operands(ctx)
    if _same_node(ctx):
        return moments(0.0, 0.0)
    if a is None or b is None:
        return a or b
    return _sum(a, b, -1.0)


def mul(ctx: MapContext) -> Moments:
    a, b = _operands(ctx)
    if _same_node(ctx):
        return quadrature(lambda z: z * z, a, ctx.quadrature_points)
    if a is None or b is None:
        return a or b
    y = product(a, b)
    for x, c in ((a, b), (b, a)):  # a constant factor keeps the other's shape
        if c.is_constant() and x.shape is not None:
            return replace(y, shape=shapes.scaled(x.shape, float(c.mean)))
    return y


def div(ctx: MapContext) -> Moments:
    a, b = _operands(ctx)
    if b is not None and b.is_constant() and float(b.mean) != 0 and isinstance(ctx.args[0], Moments):
        return a.like(a.mean / b.mean, a.var / b.mean ** 2, a.shared / b.mean ** 2,
                      shape=shapes.scaled(a.shape, float(b.mean)))
    return elementwise(ctx)  # c / x: an elementwise function of x (raises if x / y)


def neg(ctx: MapContext) -> Moments:
    x = ctx.first()
    return x.like(-x.mean, x.var, x.shared, shape=shapes.scaled(x.shape, -1.0))


def cat(ctx: MapContext) -> Moments:
    """Concatenation along the channel dim joins the channels; along any other dim (and
    stacking) the parts are pooled into a mixture."""
    parts = ctx.arg(0, "tensors")
    nodes = ctx.raw_args[0] if ctx.raw_args else ctx.node.kwargs["tensors"]
    dim = ctx.arg(1, "dim", 0)
    stack = ctx.node.target is torch.stack
    sizes = [1 if stack else ctx.shape(n)[dim] for n in nodes]
    known = [(p, s) for p, s in zip(parts, sizes) if isinstance(p, Moments)]
    axis = dim % len(ctx.out_shape) if not stack and ctx.out_shape else None
    axes = {p.axis for p, _ in known} - {None}
    if len(known) == len(parts) and axes == {axis} and \
            all(p.channels in (1, s) for p, s in known):
        samples = max(t.shape[0] if t.dim() else 1 for p, _ in known for t in p.per_channel())
        stats = [[t.reshape(-1, t.shape[-1] if t.dim() else 1).expand(samples, s)
                  for t in p.per_channel()] for p, s in known]
        y = moments(*(torch.cat(ts, -1) for ts in zip(*stats)), axis=axis)
        if any(p.shape is not None for p, _ in known):
            y = replace(y, shape=torch.cat([shapes.particles(p.shape).expand(s, -1)
                                            for p, s in known]))
        rhos = [p.rho for p, _ in known if p.rho is not None]
        if not rhos or any(r.dim() != rhos[0].dim() for r in rhos):
            return y
        dims = rhos[0].dim() - 1
        return replace(y, rho=torch.cat([p.rho if p.rho is not None and p.rho.shape[0] == s
                                         else spatial.white(s, dims) for p, s in known]))
    return mixture([p.collapse() for p, _ in known], [float(s) for _, s in known])


register_elementwise(
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus, F.softsign, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.logsigmoid, torch.exp, torch.sin, torch.cos, torch.abs,
    torch.square, torch.erf, operator.pow, torch.pow, operator.abs,
    "relu", "tanh", "sigmoid", "exp", "abs", "square", "sin", "cos", "pow", "erf",
)
for _t in (operator.add, torch.add, "add", operator.iadd, "add_"):
    register_moment_map(_t, add)
for _t in (operator.sub, torch.sub, "sub", operator.isub, "sub_"):
    register_moment_map(_t, sub)
for _t in (operator.mul, torch.mul, "mul", operator.imul, "mul_"):
    register_moment_map(_t, mul)
for _t in (operator.truediv, torch.div, "div", operator.itruediv, "div_"):
    register_moment_map(_t, div)
for _t in (operator.neg, torch.neg, "neg"):
    register_moment_map(_t, neg)
for _t in (torch.cat, torch.concat, torch.stack):
    register_moment_map(_t, cat)
for _t in (torch.chunk, torch.split, torch.unbind, "chunk", "split", "unbind"):
    register_moment_map(_t, split)
for _t in (nn.Identity, nn.Flatten, nn.Unflatten, operator.getitem, torch.flatten, torch.reshape,
           torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, torch.roll, torch.flip,
           torch.clone, "view", "reshape", "flatten", "permute", "transpose", "contiguous",
           "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "t", "clone", "detach",
           "to", "float", "double", "half", "type_as", "narrow", "roll", "flip", "view_as",
           "unflatten", "movedim", torch.movedim):
    register_moment_map(_t, identity)
CHANNEL_MAPS.update({elementwise, identity, add, sub, mul, div, neg, cat})
