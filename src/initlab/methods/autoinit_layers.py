"""AutoInit moment maps for layers: weighted (Linear, Conv, Embedding, F.linear / F.conv*d),
normalization, dropout. See `autoinit_maps.py` for `Moments` and the registry.

Weighted layers ask `ctx.layers.weight(...)` for their weight: AutoInit draws it there with
Var(W) = sigma^2 / (fan_in * E[x^2]) and zeroes the bias; a layer it does not
initialize (already drawn, or a second call of a shared layer) gives its current value. Either
way the output statistics are computed from the actual weights: unit by unit for Linear layers
(`linear_moments`), and for convolutions also class of positions by class (`autoinit_conv.py`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import autoinit_gauss as gauss
from .autoinit_conv import ConvArgs, channel_rows, conv_input, conv_moments, dense
from .autoinit_maps import (
    CHANNEL_MAPS,
    MapContext,
    Moments,
    constant,
    moments,
    register_moment_map,
)


def linear_moments(x: Moments, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   groups: int = 1, axis: Optional[int] = None) -> Moments:
    """y_j = sum_i W_ji x_i + b_j (Linear; Conv with i running over in-channels x kernel taps),
    unit by unit: (S, out) statistics, `axis` the output's channel dim (None: pooled).

    E y_j = sum_c mu_c sum_taps W_jc + b_j; Var y_j = sum_c local_c sum_taps W_jc^2 +
    sum_c shared_c (sum_taps W_jc)^2 (the shared part repeats across one channel's taps).
    """
    w = dense(weight, groups)
    mu, loc, sh = channel_rows(x, w.shape[1])                        # (S, in) each
    a = w.sum(2)                                                     # (out, in)
    mean = mu @ a.T + (0.0 if bias is None else bias.detach().double().cpu())
    shared = sh @ a.pow(2).T
    y = moments(mean, loc @ w.pow(2).sum(2).T + shared, shared, -1 if axis is None else axis)
    return y.collapse() if axis is None else y      # no channel dim to name: pooled


def _channel_axis(shape: Any, linear: bool, dims: int) -> Optional[int]:
    """The channel dim of a layer's input or output: last for Linear, before the spatial dims
    for a convolution."""
    if not isinstance(shape, tuple) or not shape or not isinstance(shape[0], int):
        return None
    return len(shape) - 1 if linear else len(shape) - 1 - dims


def weighted_layer(ctx: MapContext) -> Moments:
    m = ctx.module
    geometry = m if isinstance(m, nn.modules.conv._ConvNd) else None
    return _weighted(ctx, str(ctx.node.target), m.weight, m.bias, geometry,
                     getattr(m, "groups", 1))


def _weighted(ctx: MapContext, name: str, weight: torch.Tensor, bias: Optional[torch.Tensor],
              geometry: Any, groups: int) -> Moments:
    """Draw (or read) the weight, then the output statistics from its values, unit by unit:
    convolutions position class by position class (`autoinit_conv.py`)."""
    x = ctx.first()
    dims = 0 if geometry is None else len(geometry.kernel_size)
    if x.axis != _channel_axis(ctx.shape(ctx.raw_args[0]), geometry is None, dims) or \
            x.channels not in (1, weight.shape[1] * groups):
        x = x.collapse()                       # channels along another dim: pool them
    seen, reads = conv_input(ctx, geometry, x) if geometry is not None else (x, None)
    w = ctx.layers.weight(name, weight, bias, seen, groups)
    b = None if bias is None else ctx.layers.value(bias)
    axis = _channel_axis(ctx.out_shape, geometry is None, dims)

    def outputs(w: torch.Tensor) -> Moments:
        return linear_moments(x, w, b, groups, axis) if geometry is None else \
            conv_moments(ctx, geometry, x, reads, w, b, groups, axis)
    y = outputs(w)
    if ctx.layers.centering_lost(name, y):
        w = ctx.layers.uncentered(name, weight, seen, groups)
        y = outputs(w)
    exact = gauss.layer(ctx, ctx.raw_args[0], _forward(ctx, geometry, w, b))
    if exact is not None:
        y = _channels_from(ctx.layers.joint, ctx.node.name, y)
    y = ctx.layers.rescale(name, weight, y, ctx.node.name, exact)
    return ctx.layers.output(name, sample_scales(ctx, seen, y))


def _channels_from(joint: Any, name: str, y: Moments) -> Moments:
    """y with each channel's mean and variance, averaged over samples, taken from the full
    covariance; each sample keeps its own deviation from them (`sample_scales`), and the
    shared part its proportion."""
    found = joint.channel_stats(name)
    if found is None or y.axis is None or found[0].numel() != y.channels:
        return y
    m, v = (t.double() for t in found)
    mean, var = y.mean.reshape(-1, y.channels), y.var.reshape(-1, y.channels)
    avg = var.mean(0)
    ratio = torch.where(avg > 0, v / avg.clamp_min(1e-300), torch.ones_like(avg))
    return y.like((mean + (m - mean.mean(0))).reshape(y.mean.shape),
                  (var * ratio).reshape(y.var.shape), y.shared * ratio.reshape(-1))


def _forward(ctx: MapContext, geometry: Any, w: torch.Tensor, b: Optional[torch.Tensor]
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer as a function of its input (in the input's dtype), with the weight `w`
    (drawn, not yet in the model) and bias `b`: for the full covariance (`autoinit_gauss`)."""
    w = w.detach().double().cpu()
    b = None if b is None else b.detach().double().cpu()

    def cast(t: Optional[torch.Tensor], v: torch.Tensor) -> Optional[torch.Tensor]:
        return None if t is None else t.to(v.dtype)
    if geometry is None:
        return lambda v: F.linear(v, w.to(v.dtype), cast(b, v))
    if isinstance(geometry, nn.modules.conv._ConvNd):
        return lambda v: geometry._conv_forward(v, w.to(v.dtype), cast(b, v))
    args = list(ctx.raw_args)

    def functional(v: torch.Tensor) -> torch.Tensor:
        a = [v, w.to(v.dtype), cast(b, v)] + args[3:]
        kwargs = {k: val for k, val in ctx.node.kwargs.items() if k != "bias"}
        return ctx.node.target(*a, **kwargs)
    return functional


def sample_scales(ctx: MapContext, x: Moments, y: Moments) -> Moments:
    """A layer that sums over its input scales each sample by that sample's own mean square,
    which over n elements fluctuates around E[x^2] with relative variance kappa / n (kappa from
    the normal 4th moment). Drawn per sample: activations like SiLU or GELU are convex in the
    scale, so this spread raises the next layers' variance (Jensen)."""
    n = math.prod(ctx.shape(ctx.raw_args[0])[1:])
    samples = y.var.shape[0] if y.var.dim() == (2 if y.axis is not None else 1) else 1
    if samples <= 1 or n <= 1:
        return y
    x = x.collapse()
    fourth = 3 * x.var ** 2 + 6 * x.mean ** 2 * x.var + x.mean ** 4
    kappa = (fourth / x.second.clamp_min(1e-300) ** 2 - 1).clamp_min(0.0)
    g = (1 + (kappa / n).sqrt() * ctx.normal(samples)).clamp_min(0.05)
    g = g.reshape(-1, 1) if y.axis is not None else g
    return y.like(y.mean * g.sqrt(), y.var * g, y.shared * g)


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


def channel_affine(x: Moments, a: torch.Tensor, b: Optional[torch.Tensor],
                   axis: Optional[int]) -> Moments:
    """y_c = a_c x_c + b_c per channel (or per element of a LayerNorm's shape): per channel
    along `axis` when the sizes match, else pooled (the spread of b_c and a_c mu to shared)."""
    a = a.detach().double().cpu().reshape(-1)
    b = torch.zeros_like(a) if b is None else b.detach().double().cpu().reshape(-1)
    if axis is not None and (x.axis in (None, axis)) and x.channels in (1, a.numel()):
        mean, var, shared = x.per_channel()
        return moments(mean * a + b, var * a ** 2, shared * a ** 2, axis)
    x = x.collapse()
    mean_c = x.mean.reshape(-1, 1) * a + b                           # (S, C)
    spread = mean_c.var(-1, unbiased=False).reshape(x.mean.shape)
    a2 = a.pow(2).mean()
    return moments(mean_c.mean(-1).reshape(x.mean.shape), a2 * x.var + spread,
                   a2 * x.shared + spread)


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm,
          nn.GroupNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def norm_layer(ctx: MapContext) -> Moments:
    """Batch norm with batch statistics: each channel of each sample minus the channel's batch
    mean, over its batch std. Eval-mode batch norm with running statistics: the per-channel
    affine map they define. Layer/group/instance norm: every sample to (0, 1); RMSNorm: to
    second moment 1. Then weight and bias. The shared fraction of each sample's variance is
    kept."""
    m, x = ctx.module, ctx.first()
    shape = ctx.out_shape
    ndim = len(shape) if isinstance(shape, tuple) else 0
    batch_norm = isinstance(m, nn.modules.batchnorm._BatchNorm)
    per_last = isinstance(m, nn.LayerNorm) or hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm)
    axis = None if ndim < 2 else ndim - 1 if per_last else 1
    weight = getattr(m, "weight", None)
    if axis is not None and weight is not None and weight.numel() != shape[axis]:
        axis = None                            # an affine over several dims: pooled
    running = getattr(m, "running_mean", None)
    if running is not None and not m.training:
        a = (m.running_var.double().cpu() + m.eps).rsqrt()
        y = channel_affine(x, a, -running.double().cpu() * a, axis)
    elif batch_norm:
        if x.axis != axis:
            x = x.collapse()
        mean = x.mean.mean(0) if x.mean.dim() else x.mean            # per channel over samples
        var = (x.second.mean(0) if x.mean.dim() else x.second) - mean ** 2
        scale = torch.where(var > 0, var.clamp_min(1e-300).rsqrt(), torch.zeros_like(var))
        y = x.like((x.mean - mean) * scale, x.var * scale ** 2, x.shared * scale ** 2)
    else:
        x = x.collapse()
        frac = torch.where(x.var > 0, x.shared / x.var.clamp_min(1e-300),
                           torch.zeros_like(x.var))
        if hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm):
            mean = x.mean / x.second.clamp_min(1e-300).sqrt()
            y = moments(mean, 1 - mean ** 2, frac * (1 - mean ** 2))
        else:
            y = moments(torch.zeros_like(x.var), torch.ones_like(x.var), frac)
    if weight is None:
        return y
    bias = getattr(m, "bias", None)
    return channel_affine(y, ctx.layers.value(weight), None if bias is None else
                          ctx.layers.value(bias), axis)


def dropout_moments(x: Moments, p: float, channelwise: bool) -> Moments:
    """Inverted dropout: x * m / (1 - p), m ~ Bernoulli(1 - p): E unchanged, E[y^2] = E[x^2]/(1-p).
    Elementwise masks average out over positions (shared unchanged); channel masks do not."""
    if p >= 1:
        return moments(0.0, 0.0)
    var = x.second / (1 - p) - x.mean ** 2
    shared = (x.shared + x.mean ** 2) / (1 - p) - x.mean ** 2 if channelwise else x.shared
    return x.like(x.mean, var, shared, keep_rho=False)


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
CHANNEL_MAPS.update({weighted_layer, functional_layer, norm_layer, dropout_module,
                     dropout_function})
