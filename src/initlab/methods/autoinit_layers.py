"""AutoInit moment maps for layers: weighted (Linear, Conv, Embedding, F.linear / F.conv*d),
normalization, dropout. See `autoinit_maps.py` for `Moments` and the registry.

Weighted layers ask `ctx.layers.weight(...)` for their weight: AutoInit draws it there with
Var(W) = sigma^2 / (fan_in * E[x^2]) (SPEC §4) and zeroes the bias; a layer it does not
initialize (already drawn, or a second call of a shared layer) gives its current value. Either
way the output statistics are computed from the actual weights, unit by unit (`linear_moments`).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .autoinit_maps import (
    MapContext,
    Moments,
    constant,
    find_map,
    mixture,
    moments,
    register_moment_map,
)
from .autoinit_ops import elementwise, identity


def linear_moments(x: Moments, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Moments:
    """y_j = sum_i W_ji x_i + b_j (Linear; Conv with i running over in-channels x kernel taps).

    Per output unit j: E y_j = mu * sum W_j + b_j; Var y_j = local * sum W_j^2 + shared *
    sum_c (sum_taps W_jc)^2 (the shared part repeats across one channel's taps). The spread of
    E y_j over units is a per-channel offset: it adds to var and to shared.
    """
    w = weight.detach().double().cpu()
    w = w.reshape(w.shape[0], w.shape[1], -1)                        # (out, in/groups, taps)
    s1, s2, sk = w.sum((1, 2)), w.pow(2).sum((1, 2)).mean(), w.sum(2).pow(2).sum(1).mean()
    mean_j = x.mean.reshape(-1, 1) * s1                              # (S, out)
    if bias is not None:
        mean_j = mean_j + bias.detach().double().cpu()
    spread = mean_j.var(-1, unbiased=False).reshape(x.mean.shape)  # per-unit offsets
    mean = mean_j.mean(-1).reshape(x.mean.shape)
    return moments(mean, x.local * s2 + x.shared * sk + spread, x.shared * sk + spread)


def _taps(size: int, k: int, stride: int, pad: int, dilation: int,
          only: Optional[int] = None) -> torch.Tensor:
    """(out, size) 0/1 matrix: which input positions each output position's taps land on
    (`only`: just that tap)."""
    out = (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    a = torch.zeros(max(out, 1), size, dtype=torch.float64)
    for o in range(out):
        for j in range(k) if only is None else (only,):
            i = o * stride - pad + j * dilation
            if 0 <= i < size:
                a[o, i] += 1
    return a


def padded(x: Moments, fraction: float) -> Moments:
    """The input as a conv sees it: a fraction of real values, the rest zero padding."""
    return x if fraction >= 1.0 else mixture([x, moments(0.0, 0.0)], [fraction, 1 - fraction])


#: Maps through which a position profile of the second moment carries over unchanged.
_PROFILE_KEEPS = {elementwise, identity}


def _profile_source(ctx: MapContext, node: fx.Node) -> fx.Node:
    """Walk back from a conv's input through elementwise and shape operations."""
    while node.op in ("call_module", "call_function", "call_method"):
        module = ctx.layers.module(node) if node.op == "call_module" else None
        if find_map(node, module) not in _PROFILE_KEEPS or len(node.all_input_nodes) != 1:
            break
        node = node.all_input_nodes[0]
    return node


def conv_fraction(ctx: MapContext, m: Any) -> float:
    """E[x^2] over the taps a zero-padded conv actually reads, relative to the input's mean.

    Near borders some taps read zeros, and across a stack of convs the second moment takes a
    profile over positions (lower near the borders). The profile is tracked per spatial dim
    (`ctx.layers.profiles`): out = taps @ profile, so a deep stack converges to the dominant
    eigenvector instead of losing the border fraction again at every layer. A delta-orthogonal
    weight reads its centre tap only (`autoinit_draws.py`)."""
    shape = ctx.shape(ctx.raw_args[0])
    if m.padding_mode != "zeros" or shape is None:
        return 1.0
    sizes = shape[-len(m.kernel_size):]
    before = ctx.layers.profiles.get(_profile_source(ctx, ctx.raw_args[0]).name)
    centre = ctx.layers.cfg.distribution == "delta-orthogonal"
    frac, after = 1.0, []
    for i, size in enumerate(sizes):
        k, d = m.kernel_size[i], m.dilation[i]
        p = 0 if m.padding == "valid" else d * (k - 1) // 2 if m.padding == "same" else m.padding[i]
        prof = before[i] if before is not None and len(before[i]) == size else \
            torch.ones(size, dtype=torch.float64)
        reach = _taps(size, k, m.stride[i], p, d, k // 2 if centre else None) @ prof  # (out,)
        frac *= float(reach.mean()) / (1 if centre else k)
        after.append(reach / reach.mean().clamp_min(1e-300))
    ctx.layers.profiles[ctx.node.name] = after
    return frac


def weighted_layer(ctx: MapContext) -> Moments:
    m = ctx.module
    x = ctx.first()
    if isinstance(m, nn.modules.conv._ConvNd):
        x = padded(x, conv_fraction(ctx, m))
    name = str(ctx.node.target)
    w = ctx.layers.weight(name, m.weight, m.bias, x, getattr(m, "groups", 1))
    y = linear_moments(x, w, None if m.bias is None else ctx.layers.value(m.bias))
    y = ctx.layers.rescale(name, m.weight, y)
    return ctx.layers.output(name, sample_scales(ctx, x, y))


def sample_scales(ctx: MapContext, x: Moments, y: Moments) -> Moments:
    """A layer that sums over its input scales each sample by that sample's own mean square,
    which over n elements fluctuates around E[x^2] with relative variance kappa / n (kappa from
    the normal 4th moment). Drawn per sample: activations like SiLU or GELU are convex in the
    scale, so this spread raises the next layers' variance (Jensen)."""
    n = math.prod(ctx.shape(ctx.raw_args[0])[1:])
    if y.var.numel() <= 1 or n <= 1:
        return y
    fourth = 3 * x.var ** 2 + 6 * x.mean ** 2 * x.var + x.mean ** 4
    kappa = (fourth / x.second.clamp_min(1e-300) ** 2 - 1).clamp_min(0.0)
    g = (1 + (kappa / n).sqrt() * ctx.normal(y.var.numel())).clamp_min(0.05)
    return moments(y.mean * g.sqrt(), y.var * g, y.shared * g)


class _ConvArgs:
    """The geometry of a functional convolution, shaped like a Conv module's attributes."""
    padding_mode = "zeros"

    def __init__(self, weight: torch.Tensor, ctx: MapContext):
        dims = weight.dim() - 2

        def tup(v: object) -> tuple:
            return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.dilation = tup(ctx.arg(3, "stride", 1)), tup(ctx.arg(5, "dilation", 1))
        pad = ctx.arg(4, "padding", 0)
        self.padding = pad if isinstance(pad, str) else tup(pad)


def functional_layer(ctx: MapContext) -> Moments:
    """F.linear / F.conv*d(x, weight, bias, ...) with the weight a parameter of the model."""
    raw_w = ctx.raw_args[1]
    if not (isinstance(raw_w, fx.Node) and raw_w.op == "get_attr"):
        raise TypeError("the weight is not a parameter")  # -> treated as an unknown op
    weight = ctx.layers.attr(raw_w)
    bias_node = ctx.raw_args[2] if len(ctx.raw_args) > 2 else ctx.node.kwargs.get("bias")
    bias = ctx.layers.attr(bias_node) if isinstance(bias_node, fx.Node) else None
    x = ctx.first()
    if ctx.node.target is not F.linear:
        x = padded(x, conv_fraction(ctx, _ConvArgs(weight, ctx)))
    name = str(raw_w.target).rpartition(".")[0]
    groups = 1 if ctx.node.target is F.linear else int(ctx.arg(6, "groups", 1))
    w = ctx.layers.weight(name, weight, bias, x, groups)
    y = linear_moments(x, w, None if bias is None else ctx.layers.value(bias))
    y = ctx.layers.rescale(name, weight, y)
    return ctx.layers.output(name, sample_scales(ctx, x, y))


def embedding(ctx: MapContext) -> Moments:
    """Rows of the table, each token equally likely: the moments of its entries."""
    name = str(ctx.node.target)
    return ctx.layers.output(name, constant(ctx.layers.embedding(name, ctx.module)))


def channel_affine(x: Moments, a: torch.Tensor, b: Optional[torch.Tensor]) -> Moments:
    """y_c = a_c x + b_c per channel (or per element of a LayerNorm's shape), pooled."""
    a = a.detach().double().cpu().reshape(-1)
    b = torch.zeros_like(a) if b is None else b.detach().double().cpu().reshape(-1)
    mean_c = x.mean.reshape(-1, 1) * a + b                           # (S, C)
    spread = mean_c.var(-1, unbiased=False).reshape(x.mean.shape)
    a2 = a.pow(2).mean()
    return moments(mean_c.mean(-1).reshape(x.mean.shape), a2 * x.var + spread,
                   a2 * x.shared + spread)


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm,
          nn.GroupNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def norm_layer(ctx: MapContext) -> Moments:
    """Batch norm with batch statistics: each sample minus the batch mean, over the batch std.
    Eval-mode batch norm with running statistics: the per-channel affine map they define.
    Layer/group/instance norm: every sample to (0, 1); RMSNorm: to second moment 1. Then
    weight and bias. The shared fraction of each sample's variance is kept."""
    m, x = ctx.module, ctx.first()
    frac = torch.where(x.var > 0, x.shared / x.var.clamp_min(1e-300), torch.zeros_like(x.var))
    running = getattr(m, "running_mean", None)
    if running is not None and not m.training:
        a = (m.running_var.double().cpu() + m.eps).rsqrt()
        y = channel_affine(x, a, -running.double().cpu() * a)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        mean, var = x.pooled()
        scale = 1 / math.sqrt(var) if var > 0 else 0.0
        y = moments((x.mean - mean) * scale, x.var * scale ** 2, x.shared * scale ** 2)
    elif hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm):
        mean = x.mean / x.second.clamp_min(1e-300).sqrt()
        y = moments(mean, 1 - mean ** 2, frac * (1 - mean ** 2))
    else:
        y = moments(torch.zeros_like(x.var), torch.ones_like(x.var), frac)
    weight = getattr(m, "weight", None)
    if weight is None:
        return y
    bias = getattr(m, "bias", None)
    return channel_affine(y, ctx.layers.value(weight), None if bias is None else
                          ctx.layers.value(bias))


def dropout_moments(x: Moments, p: float, channelwise: bool) -> Moments:
    """Inverted dropout: x * m / (1 - p), m ~ Bernoulli(1 - p): E unchanged, E[y^2] = E[x^2]/(1-p).
    Elementwise masks average out over positions (shared unchanged); channel masks do not."""
    if p >= 1:
        return moments(0.0, 0.0)
    var = x.second / (1 - p) - x.mean ** 2
    shared = (x.shared + x.mean ** 2) / (1 - p) - x.mean ** 2 if channelwise else x.shared
    return moments(x.mean, var, shared)


def dropout_module(ctx: MapContext) -> Moments:
    m = ctx.module
    if not m.training or isinstance(m, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
        return ctx.first()
    return dropout_moments(ctx.first(), m.p, not isinstance(m, nn.Dropout))


def dropout_function(ctx: MapContext) -> Moments:
    if not ctx.arg(2, "training", True):
        return ctx.first()
    channelwise = ctx.node.target is not F.dropout
    return dropout_moments(ctx.first(), float(ctx.arg(1, "p", 0.5)), channelwise)


for _t in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_moment_map(_t, weighted_layer)
for _t in (F.linear, F.conv1d, F.conv2d, F.conv3d):
    register_moment_map(_t, functional_layer)
register_moment_map(nn.Embedding, embedding)
for _t in _NORMS:
    register_moment_map(_t, norm_layer)
for _t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
           nn.FeatureAlphaDropout):
    register_moment_map(_t, dropout_module)
for _t in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
    register_moment_map(_t, dropout_function)
