"""AutoInit moment maps for layers: weighted (Linear, Conv, Embedding, F.linear / F.conv*d),
normalization, dropout. See `autoinit_maps.py` for `Moments` and the registry.

Weighted layers ask `ctx.layers.weight(...)` for their weight: AutoInit draws it there with
Var(W) = sigma^2 / (fan_in * E[x^2]) (SPEC §4) and zeroes the bias; a layer it does not
initialize (already drawn, or a second call of a shared layer) gives its current value. Either
way the output statistics are computed from the actual weights: unit by unit for Linear layers
(`linear_moments`), and for convolutions also class of positions by class (`autoinit_conv.py`).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .autoinit_conv import ConvArgs, conv_input, conv_moments
from .autoinit_maps import (
    MapContext,
    Moments,
    constant,
    moments,
    register_moment_map,
)


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


def weighted_layer(ctx: MapContext) -> Moments:
    m = ctx.module
    geometry = m if isinstance(m, nn.modules.conv._ConvNd) else None
    return _weighted(ctx, str(ctx.node.target), m.weight, m.bias, geometry,
                     getattr(m, "groups", 1))


def _weighted(ctx: MapContext, name: str, weight: torch.Tensor, bias: Optional[torch.Tensor],
              geometry: Any, groups: int) -> Moments:
    """Draw (or read) the weight, then the output statistics from its values: convolutions
    position class by position class (`autoinit_conv.py`), Linear layers unit by unit."""
    x = ctx.first()
    seen, reads = conv_input(ctx, geometry, x) if geometry is not None else (x, None)
    w = ctx.layers.weight(name, weight, bias, seen, groups)
    b = None if bias is None else ctx.layers.value(bias)
    y = linear_moments(x, w, b) if geometry is None else \
        conv_moments(ctx, geometry, x, reads, w, b)
    y = ctx.layers.rescale(name, weight, y)
    return ctx.layers.output(name, sample_scales(ctx, seen, y))


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


def functional_layer(ctx: MapContext) -> Moments:
    """F.linear / F.conv*d(x, weight, bias, ...) with the weight a parameter of the model."""
    raw_w = ctx.raw_args[1]
    if not (isinstance(raw_w, fx.Node) and raw_w.op == "get_attr"):
        raise TypeError("the weight is not a parameter")  # -> treated as an unknown op
    weight = ctx.layers.attr(raw_w)
    bias_node = ctx.raw_args[2] if len(ctx.raw_args) > 2 else ctx.node.kwargs.get("bias")
    bias = ctx.layers.attr(bias_node) if isinstance(bias_node, fx.Node) else None
    name = str(raw_w.target).rpartition(".")[0]
    if ctx.node.target is F.linear:
        return _weighted(ctx, name, weight, bias, None, 1)
    return _weighted(ctx, name, weight, bias, ConvArgs(weight, ctx), int(ctx.arg(6, "groups", 1)))


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
