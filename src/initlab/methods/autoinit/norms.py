"""Moment maps of normalization layers and dropout.

Contract:
- Layer / group norm: each sample standardized over the normalized dims; a channel c of those
  dims keeps its offset from their mean, mean (mu_c - mu) / s and variance var_c / s^2, s^2
  the variance over them (channels weighted equally); then the affine map. RMSNorm divides by
  the root mean square instead. Instance norm: every channel to mean 0, variance 1.
- Batch norm in training mode: each channel to mean 0, variance 1 over the batch; in eval mode
  the affine map its running statistics define.
- Inverted dropout p (training mode): the mean stays, E[y^2] = E[x^2] / (1 - p); an elementwise
  mask averages out over positions (shared unchanged), a channel mask (Dropout2d) does not.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .context import MapContext
from .moments import Moments
from .registry import register_moment_map

_RMS = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()


def _affine(y: Moments, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
            sizes: list[int], n_dims: int) -> Moments:
    """y * weight + bias, weight/bias over the last `n_dims` channel dims (sizes)."""
    if weight is None and bias is None:
        return y
    c = y.channels
    tail = int(torch.tensor(sizes[len(sizes) - n_dims:]).prod()) if n_dims else 1
    a = torch.ones(tail, dtype=torch.float64) if weight is None else \
        weight.detach().double().cpu().reshape(-1)
    b = torch.zeros(tail, dtype=torch.float64) if bias is None else \
        bias.detach().double().cpu().reshape(-1)
    if a.numel() != tail or c % tail:
        return y
    a, b = a.repeat(c // tail), b.repeat(c // tail)
    return y.with_(mean=y.mean * a + b, var=y.var * a * a, shared=y.shared * a * a,
                   law=y.law if bool((a > 0).all()) else None)


def standardized(x: Moments, shape: tuple[int, ...], dims: list[int], rms: bool) -> Moments:
    """Each sample standardized over `dims` (the channel dims among them keep their spread)."""
    chan = [d for d in dims if d in x.axes]
    if [d for d in x.axes if d not in dims]:
        x = x.collapse()        # channels outside the normalized dims: pooled (rare)
        chan = []
    if not chan:
        x = x.collapse()
    mean = x.mean.mean()
    second = x.second.mean()
    scale2 = second if rms else second - mean ** 2
    if not float(scale2) > 0:
        return Moments(0.0, 0.0, 0.0, x.axes)
    center = 0.0 if rms else mean
    s = scale2.sqrt()
    # the part of a channel shared over positions, relative to its variance, is kept
    return Moments((x.mean - center) / s, x.var / scale2, x.shared / scale2, x.axes, x.law,
                   x.profile)


def layer_norm(ctx: MapContext) -> Any:
    """nn.LayerNorm / RMSNorm / GroupNorm / InstanceNorm, and F.layer_norm."""
    m, x = ctx.module, ctx.first()
    shape = ctx.shape(ctx.raw_args[0])
    nd = len(shape)
    rms = bool(_RMS) and isinstance(m, _RMS)
    if isinstance(m, (nn.LayerNorm,) + _RMS) or m is None:
        normalized = m.normalized_shape if m is not None else \
            ctx.value(ctx.raw_arg(1, "normalized_shape"))
        k = len(tuple(normalized))
        dims = list(range(nd - k, nd))
        weight = None if m is None else m.weight
        bias = None if m is None else getattr(m, "bias", None)
        if m is None:
            weight = ctx.value(ctx.raw_arg(2, "weight"))
            bias = ctx.value(ctx.raw_arg(3, "bias"))
        y = standardized(x, shape, dims, rms)
        sizes = [shape[a] for a in y.axes]
        n_aff = len([a for a in y.axes if a in dims])
        return _affine(y, _value(ctx, weight), _value(ctx, bias), sizes, n_aff)
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):     # each (sample, channel)
        y = Moments(torch.zeros(shape[1]), torch.ones(shape[1]), 0.0, (1,))
    else:                        # group norm: per sample over its channels and positions
        y = standardized(x, shape, list(range(1, nd)), False)
        if y.axes != (1,):
            y = y.collapse().take(torch.zeros(shape[1], dtype=torch.long), (1,))
    return _affine(y, _value(ctx, getattr(m, "weight", None)),
                   _value(ctx, getattr(m, "bias", None)), [shape[1]], 1)


def _value(ctx: MapContext, t: Any) -> Optional[torch.Tensor]:
    return ctx.weights.value(t) if isinstance(t, torch.Tensor) else None


def batch_norm(ctx: MapContext) -> Moments:
    m, x = ctx.module, ctx.first()
    shape = ctx.shape(ctx.raw_args[0])
    if x.axes != (1,):
        x = x.collapse().take(torch.zeros(shape[1], dtype=torch.long), (1,))
    if m.training or not m.track_running_stats:
        scale2 = x.var
        s = torch.where(scale2 > 0, scale2.clamp_min(1e-300).rsqrt(), torch.zeros_like(scale2))
        y = Moments(torch.zeros_like(x.mean), x.var * s * s, x.shared * s * s, (1,), x.law,
                    x.profile)
    else:
        a = (m.running_var.double().cpu() + m.eps).rsqrt()
        y = x.with_(mean=(x.mean - m.running_mean.double().cpu()) * a, var=x.var * a * a,
                    shared=x.shared * a * a)
    return _affine(y, _value(ctx, m.weight), _value(ctx, m.bias), [shape[1]], 1)


def dropout_moments(x: Moments, p: float, channelwise: bool) -> Moments:
    if p >= 1:
        return Moments(0.0, 0.0, 0.0, x.axes)
    var = x.second / (1 - p) - x.mean ** 2
    shared = (x.shared + x.mean ** 2) / (1 - p) - x.mean ** 2 if channelwise else x.shared
    return x.with_(var=var, shared=shared, law=None)


def dropout(ctx: MapContext) -> Moments:
    """Dropout modules and F.dropout*/aten.dropout(x, p, train)."""
    m = ctx.module
    if m is not None:
        if not m.training or isinstance(m, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
            return ctx.first()
        return dropout_moments(ctx.first(), m.p, not isinstance(m, nn.Dropout))
    if not ctx.value(ctx.raw_arg(2, "training", ctx.raw_arg(2, "train", True))):
        return ctx.first()
    name = str(getattr(ctx.node.target, "__name__", ""))
    return dropout_moments(ctx.first(), float(ctx.value(ctx.raw_arg(1, "p", 0.5))),
                           name.split(".")[0] in ("dropout1d", "dropout2d", "dropout3d",
                                                  "feature_dropout"))


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm) + _RMS
for _t in _NORMS + (F.layer_norm,):
    register_moment_map(_t, layer_norm, per_channel=True, keeps_profile=True)
register_moment_map(nn.modules.batchnorm._BatchNorm, batch_norm, per_channel=True, keeps_profile=True)
for _t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
           nn.FeatureAlphaDropout, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
    register_moment_map(_t, dropout, per_channel=True, keeps_profile=True)
