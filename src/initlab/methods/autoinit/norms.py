"""Moment maps of normalization layers and dropout.

Contract:
- Layer / group / instance norm and RMSNorm: each sample standardized over the normalized
  elements: an element keeps its offset from their mean, (mu - mean) / s and variance var / s^2,
  s^2 the mean square of the deviations (RMSNorm: the mean square itself); then the affine map.
  The normalized elements are: the trailing `normalized_shape` (layer norm, RMSNorm), a group of
  channels and all positions (group norm), one channel's positions (instance norm). Samples no
  longer differ in scale afterwards.
- Batch norm in training mode: each channel to mean 0, variance 1 over the batch and positions
  (a position near a border keeps its offset); in eval mode the affine map its running
  statistics define.
- Inverted dropout p (training mode): the mean stays, E[y^2] = E[x^2] / (1 - p); an elementwise
  mask averages out over positions (shared unchanged), a channel mask (Dropout2d) does not.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .context import MapContext
from .registry import register_moment_map
from .statistics import Moments

_RMS = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()


def _value(ctx: MapContext, t: Any) -> Optional[torch.Tensor]:
    if isinstance(t, torch.Tensor):
        return ctx.weights.value(t).detach().double().cpu()
    return None


def _affine(y: Moments, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
            tail: int) -> Moments:
    """y * weight + bias, both broadcast over the last dims (or (C, 1, ...) for `tail` > 0:
    over channel dim -tail)."""
    if weight is None and bias is None:
        return y
    def shaped(t: Optional[torch.Tensor], fill: float) -> torch.Tensor:
        if t is None:
            return torch.full((), fill, dtype=torch.float64)
        return t.reshape(-1, *([1] * (tail - 1))) if tail > 0 else t
    a, b = shaped(weight, 1.0), shaped(bias, 0.0)
    law = y.law if bool((a > 0).all()) else None
    channels = y.channels + ((-tail,) if tail > 0 else tuple(range(-a.dim(), 0)))
    return Moments(y.mean * a + b, y.var * a * a, y.shared * a * a, channels, law,
                   y.scales).compact()


def standardized(x: Moments, shape: tuple[int, ...], dims: list[int], rms: bool,
                 groups: int = 1) -> Moments:
    """Each sample standardized over the per-sample `dims` (in `groups` along dim 0)."""
    full = x.expand(shape)
    mean, second = full.mean, full.second
    if groups > 1:
        split = (groups, shape[0] // groups) + tuple(shape[1:])
        mean, second = mean.reshape(split), second.reshape(split)
        dims = [1] + [d + 1 for d in dims if d > 0]
    center = mean.mean(dim=dims, keepdim=True)
    square = second.mean(dim=dims, keepdim=True)
    scale2 = square if rms else square - center ** 2
    scale2 = scale2.clamp_min(1e-300)
    out_mean = (mean if rms else mean - center) / scale2.sqrt()
    if groups > 1:
        out_mean, scale2 = out_mean.reshape(shape), scale2.expand(split).reshape(shape)
    return Moments(out_mean, full.var / scale2, full.shared / scale2, x.channels, x.law,
                   None).compact()


def layer_norm(ctx: MapContext) -> Any:
    """nn.LayerNorm / RMSNorm / GroupNorm / InstanceNorm, and F.layer_norm."""
    m, x = ctx.module, ctx.first()
    shape = tuple(ctx.shape(ctx.raw_args[0])[1:])
    nd = len(shape)
    if m is None or isinstance(m, (nn.LayerNorm,) + _RMS):
        normalized = ctx.value(ctx.raw_arg(1, "normalized_shape")) if m is None \
            else m.normalized_shape
        k = len(tuple(normalized))
        y = standardized(x, shape, list(range(nd - k, nd)), bool(_RMS) and isinstance(m, _RMS))
        if m is None:
            return _affine(y, _value(ctx, ctx.value(ctx.raw_arg(2, "weight"))),
                           _value(ctx, ctx.value(ctx.raw_arg(3, "bias"))), 0)
        return _affine(y, _value(ctx, getattr(m, "weight", None)),
                       _value(ctx, getattr(m, "bias", None)), 0)
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        y = standardized(x, shape, list(range(1, nd)), False)
    else:
        y = standardized(x, shape, list(range(0, nd)), False, m.num_groups)
    y = y.with_(channels=tuple(set(y.channels) | {-nd}))
    return _affine(y, _value(ctx, getattr(m, "weight", None)),
                   _value(ctx, getattr(m, "bias", None)), nd)


def batch_norm(ctx: MapContext) -> Moments:
    m, x = ctx.module, ctx.first()
    shape = tuple(ctx.shape(ctx.raw_args[0])[1:])
    nd = len(shape)
    full = x.expand(shape)
    tail = (1,) * (nd - 1)
    if m.training or not m.track_running_stats:
        pos = list(range(1, nd))
        center = full.mean.mean(dim=pos, keepdim=True) if pos else full.mean
        square = full.second.mean(dim=pos, keepdim=True) if pos else full.second
        scale2 = (square - center ** 2).clamp_min(1e-300)
    else:
        center = m.running_mean.double().cpu().reshape(-1, *tail)
        scale2 = (m.running_var.double().cpu() + m.eps).reshape(-1, *tail)
    y = Moments((full.mean - center) / scale2.sqrt(), full.var / scale2, full.shared / scale2,
                tuple(set(x.channels) | {-nd}), x.law, x.scales)
    return _affine(y.compact(), _value(ctx, m.weight), _value(ctx, m.bias), nd)


def dropout_moments(x: Moments, p: float, channelwise: bool) -> Moments:
    if p >= 1:
        return Moments(0.0, 0.0, 0.0, x.channels)
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
    register_moment_map(_t, layer_norm, per_channel=True)
register_moment_map(nn.modules.batchnorm._BatchNorm, batch_norm, per_channel=True)
for _t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
           nn.FeatureAlphaDropout, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
    register_moment_map(_t, dropout, per_channel=True)
