"""AutoInit moment maps for operations that mix positions: pooling and means (average: the
shared part stays, the local part shrinks; max: Monte Carlo), softmax (Monte Carlo), matrix
products, scaled-dot-product attention by composition, and constant padding.
"""
from __future__ import annotations

import math
import operator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import autoinit_shape as shapes
from . import autoinit_spatial as spatial
from .autoinit_maps import (
    CHANNEL_MAPS,
    MapContext,
    Moments,
    border,
    constant,
    mixture,
    moments,
    register_moment_map,
)


def _numel(shape: tuple) -> int:
    return math.prod(shape) if shape else 1


def _ratio(ctx: MapContext) -> int:
    """Input elements per output element of a reduction (the positions it averages)."""
    src, out = ctx.shape(ctx.raw_args[0]), ctx.out_shape
    if not isinstance(src, tuple) or not isinstance(out, tuple):
        return 1
    return max(1, round(_numel(src) / max(1, _numel(out))))


def average(x: Moments, k: int, factor: Any = 1.0) -> Moments:
    """Mean over k positions: the shared part stays, the local part shrinks by k (times
    `factor` for correlated positions, `autoinit_spatial.average_factor`)."""
    return x.like(x.mean, x.shared + x.local * factor / k, x.shared, keep_rho=False)


def maximum(ctx: MapContext, x: Moments, k: int) -> Moments:
    """Max over k positions = shared + max of k local values; the latter by Monte Carlo on
    standard normals, scaled by each sample's local std."""
    if k <= 1:
        return x
    top = ctx.normal(max(1024, ctx.mc_samples), k).amax(1)
    return x.like(x.mean + x.local.sqrt() * top.mean(), x.shared + x.local * top.var(), x.shared,
                  keep_rho=False)


def pool(ctx: MapContext) -> Moments:
    """Average/max pooling, adaptive or with a kernel, module or function; means and sums."""
    m, t = ctx.module, ctx.node.target
    adaptive = isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                              nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d))
    name = type(m).__name__ if m is not None else getattr(t, "__name__", str(t))
    kernel = None if adaptive or name in ("mean", "sum") or "adaptive" in name else \
        (m.kernel_size if m is not None else ctx.arg(1, "kernel_size"))
    if kernel is None:
        k = _ratio(ctx)
    else:
        k = math.prod(kernel) if isinstance(kernel, (tuple, list)) else \
            int(kernel) ** (len(ctx.out_shape) - 2)
    x, folded = _reduced(ctx, ctx.first(), name in ("mean", "sum"))
    if "max" in name.lower():
        return maximum(ctx, x, k)
    factor = _correlated(ctx, ctx.first(), kernel) if x.axis is not None else 1.0
    y = average(x, max(1, k // folded), factor)
    return y.like(k * y.mean, k * k * y.var, k * k * y.shared) if name == "sum" else y


def _correlated(ctx: MapContext, x: Moments, kernel: Any) -> Any:
    """How much more the local part of a mean over the window keeps than 1 / positions,
    per channel, from the spatial correlation of x: a pooling kernel's window, or the whole
    map for a global mean (1 for anything else, or without a correlation)."""
    if x.rho is None:
        return 1.0
    dims = x.rho.dim() - 1
    src, out = ctx.shape(ctx.raw_args[0]), ctx.out_shape
    if kernel is not None:
        window = tuple(kernel) if isinstance(kernel, (tuple, list)) else (int(kernel),) * dims
    elif isinstance(src, tuple) and _numel(src) == _numel(out) * _numel(src[-dims:]):
        window = tuple(src[-dims:])                    # every position of the map
    else:
        return 1.0
    return spatial.average_factor(x.rho, window) if len(window) == dims else 1.0


def _reduced(ctx: MapContext, x: Moments, over_dims: bool) -> tuple[Moments, int]:
    """x with its channel dim where it is after the reduction, and how many channels it has
    averaged already: pooling keeps every dim; a mean or sum over `dim` drops those dims
    (unless keepdim); over the channel dim itself it averages the channels here (independent:
    their variances over C^2, their mean offsets cancel)."""
    if x.axis is None or not over_dims:
        return x, 1
    shape = ctx.shape(ctx.raw_args[0])
    dims = ctx.arg(1, "dim")
    if dims is None or not isinstance(shape, tuple):
        return x.collapse(), 1
    dims = {d % len(shape) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    if x.axis in dims:
        c = x.channels
        shared = x.shared.mean(-1) / c
        return moments(x.mean.mean(-1), shared + x.local.mean(-1) / c, shared), c
    keep = ctx.arg(2, "keepdim", False)
    axis = x.axis - (0 if keep else sum(d < x.axis for d in dims))
    return Moments(x.mean, x.var, x.shared, axis), 1


def softmax(ctx: MapContext) -> Moments:
    """Softmax / log-softmax over a dim of size T, by Monte Carlo. A part shared along the dim
    cancels (softmax is shift-invariant), so samples carry the local variance only."""
    x, shape = ctx.first(), ctx.shape(ctx.raw_args[0])
    dim = ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim")
    t = shape[dim if dim is not None else -1]
    log = isinstance(ctx.module, nn.LogSoftmax) or "log" in str(ctx.node.target)
    return _softmax_mc(ctx, x.mean, x.local, t, log)


def _softmax_mc(ctx: MapContext, mean: torch.Tensor, var: torch.Tensor, t: int,
                log: bool = False, dof: int = 0) -> Moments:
    """Softmax over t i.i.d. N(mean, var) logits, per sample, by Monte Carlo. `dof` > 0: each
    row's variance is var * chi^2_dof / dof (a query's squared length over its dof entries)."""
    mu, sd = mean.reshape(-1, 1, 1), var.sqrt().reshape(-1, 1, 1)
    rows = max(16, ctx.mc_samples // t)
    z = ctx.normal(rows, t) * sd + mu                               # (S, R, t)
    if dof > 0:
        z = mu + (z - mu) * (ctx.normal(rows, dof).pow(2).mean(1, keepdim=True)).sqrt()
    y = torch.log_softmax(z, -1) if log else torch.softmax(z, -1)
    shape = torch.broadcast_shapes(mean.shape, var.shape)
    return moments(y.mean((1, 2)).reshape(shape), y.var((1, 2)).reshape(shape), 0.0)


def matmul_moments(a: Moments, b: Moments, k: int) -> Moments:
    """Sum of k products of independent entries."""
    return moments(k * a.mean * b.mean, k * (a.second * b.second - (a.mean * b.mean) ** 2), 0.0)


def matmul(ctx: MapContext) -> Moments:
    a, b = ctx.args[0], ctx.args[1]
    a = a if isinstance(a, Moments) else constant(a)
    b = b if isinstance(b, Moments) else constant(b)
    return matmul_moments(a, b, ctx.shape(ctx.raw_args[0])[-1])


def attention(ctx: MapContext) -> Moments:
    """F.scaled_dot_product_attention by composition (`attention_moments`). Masks are ignored."""
    q, k, v = ctx.args[:3]
    d, t = ctx.shape(ctx.raw_args[0])[-1], ctx.shape(ctx.raw_args[1])[-2]
    return attention_moments(ctx, q, k, v, d, t, ctx.kwargs.get("scale") or 1 / math.sqrt(d))


def attention_moments(ctx: MapContext, q: Moments, k: Moments, v: Moments, d: int, t: int,
                      scale: float, dropout: float = 0.0) -> Moments:
    """Attention of head size d over t keys. Along the keys, only the parts of the scores
    q_i . k_j that vary with j matter (softmax is shift-invariant): variance
    d * E[q^2] * local(k) * scale^2, times chi^2_d / d per query. The weights a_ij (sum 1, by
    Monte Carlo) average the values: their shared part passes whole, the local part shrinks by
    c = E[sum_j a_ij^2], and the values' mean over keys (local / t) is common to all queries.
    Inverted dropout p on the weights: sum_j a'_ij has second moment 1 + c p / (1 - p) and
    sum_j a'_ij^2 mean c / (1 - p)."""
    # a query's squared length over its d entries varies (chi^2_d / d): more concentrated rows
    a = _softmax_mc(ctx, torch.zeros_like(k.local), d * q.second * k.local * scale ** 2, t,
                    dof=d)
    c = t * a.second                                                 # E[sum_j a_ij^2]
    keep = 1.0 - dropout
    second = (1 + c * dropout / keep) * (v.mean ** 2 + v.shared) + c / keep * v.local
    # every query averages the same values: their mean over the keys is shared by all queries
    return moments(v.mean, second - v.mean ** 2, v.shared + v.local / t)


def pad(ctx: MapContext) -> Moments:
    """Constant padding: the input and the fill value, by element counts. Padding along
    spatial dims varies over positions (`border`); along the channels it is a per-channel
    offset (`mixture`)."""
    src, out = ctx.shape(ctx.raw_args[0]), ctx.out_shape
    frac = _numel(src) / max(1, _numel(out))
    m = ctx.module
    if m is not None:
        value, mode = getattr(m, "value", 0.0), "constant"
    else:
        value, mode = ctx.arg(3, "value", 0.0) or 0.0, ctx.arg(2, "mode", "constant")
    if mode != "constant":
        return ctx.first()
    widths = ctx.arg(1, "pad") if m is None else m.padding
    widths = list(widths) if isinstance(widths, (tuple, list)) else [widths] * 2 * (len(src) - 2)
    # pad = (last dim's before, after, the dim before it's, ...): which dims grow
    grown = {len(src) - 1 - i // 2 for i, w in enumerate(widths) if w}
    x = ctx.first()
    if grown and min(grown) >= 2:  # spatial padding only: the fill varies over positions
        return border(x, frac, float(value))
    if grown == {x.axis} and x.axis is not None:  # new channels, filled with the value
        i = 2 * (len(src) - 1 - x.axis)
        before, after = widths[i], widths[i + 1] if i + 1 < len(widths) else 0
        if before >= 0 and after >= 0:
            return _channels_padded(x, before, after, float(value))
    return mixture([x.collapse(), moments(float(value), 0.0)], [frac, 1 - frac])


def _channels_padded(x: Moments, before: int, after: int, value: float) -> Moments:
    """x with constant channels (variance 0) added before and after its own."""
    def padded(t: torch.Tensor, fill: float) -> torch.Tensor:
        t = t.reshape(-1, t.shape[-1])
        return torch.cat([t.new_full((t.shape[0], before), fill), t,
                          t.new_full((t.shape[0], after), fill)], -1)
    y = moments(padded(x.mean, value), padded(x.var, 0.0), padded(x.shared, 0.0), x.axis)
    if x.rho is not None:
        dims = x.rho.dim() - 1
        y = replace(y, rho=torch.cat([spatial.white(before, dims), x.rho,
                                      spatial.white(after, dims)]))
    if x.shape is not None:
        g = shapes.normal()
        y = replace(y, shape=torch.cat([g.expand(before, -1), x.shape.expand(x.channels, -1),
                                        g.expand(after, -1)]))
    return y


for _t in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
           nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
           nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
           F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
           F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
           F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.max_pool1d,
           torch.max_pool2d, torch.max_pool3d,
           torch.mean, torch.sum, "mean", "sum"):
    register_moment_map(_t, pool)
for _t in (nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax,
           torch.log_softmax, "softmax", "log_softmax"):
    register_moment_map(_t, softmax)
for _t in (torch.matmul, torch.bmm, "matmul", "bmm", operator.matmul):
    register_moment_map(_t, matmul)
register_moment_map(F.scaled_dot_product_attention, attention)
for _t in (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad2d, F.pad):
    register_moment_map(_t, pad)
CHANNEL_MAPS.update({pool, pad})
