"""Moment maps of operations that mix positions or channels: average and max pooling (kernels,
adaptive, global means and sums), softmax, products of two signals, attention.

Contract:
- a mean over k positions keeps each channel's mean and `shared` part and divides its local
  part by k (positions are taken as uncorrelated beyond what `shared` says); over channels, the
  channels are independent (their variances add, over C^2);
- max over k positions: shared + the max of k local values, whose law is the local law's
  quantiles at u^(1/k) (independent positions);
- softmax and attention weights by Monte Carlo over i.i.d. normal logits (seeded);
- `attention`: q k^T scaled, softmax over the keys each query may see (a causal flag or a
  boolean/additive mask, from its value on the example input), dropout, then the weighted
  average of the values, channel by channel of v (`attention_moments`).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .context import MapContext
from .moments import Moments, constant, standardize, sum_law
from .registry import register_moment_map


def _reduce_dims(ctx: MapContext) -> tuple[set[int], bool]:
    """The dims a reduction or pooling averages over (non-batch), and whether it keeps them."""
    src, out = ctx.shape(ctx.raw_args[0]), ctx.out_shape
    name = _name(ctx)
    if name in ("mean", "sum", "amax", "max", "amin") and ctx.module is None:
        dims = ctx.value(ctx.raw_arg(1, "dim"))
        keep = bool(ctx.value(ctx.raw_arg(2, "keepdim", False)))
        if dims is None:
            return set(range(1, len(src))), keep
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        return {int(d) % len(src) for d in dims}, keep
    # pooling: the trailing spatial dims (as many as the kernel or output has)
    spatial = len(src) - 2 if len(src) > 2 else 1
    return set(range(len(src) - spatial, len(src))), True


def _name(ctx: MapContext) -> str:
    if ctx.module is not None:
        return type(ctx.module).__name__.lower()
    t = ctx.node.target
    return str(getattr(t, "__name__", t)).split(".")[0].lower()


def _window(ctx: MapContext, dims: set[int]) -> int:
    """Input positions per output position along `dims`."""
    src, out = ctx.shape(ctx.raw_args[0]), ctx.out_shape
    inner = math.prod(src[d] for d in dims)
    kept = math.prod(out[d] for d in dims) if len(out) == len(src) else 1
    return max(1, round(inner / max(1, kept)))


def _remaining_axes(axes: tuple[int, ...], dims: set[int], keep: bool) -> tuple[int, ...]:
    if keep:
        return tuple(a for a in axes if a not in dims)
    return tuple(a - sum(d < a for d in dims) for a in axes if a not in dims)


def reduce(ctx: MapContext) -> Any:
    """Pooling (average or max, kernel or adaptive), x.mean(dims), x.sum(dims)."""
    x, src = ctx.first(), ctx.shape(ctx.raw_args[0])
    dims, keep = _reduce_dims(ctx)
    name = _name(ctx)
    is_max = "max" in name
    chan = [d for d in dims if d in x.axes]
    if chan:                                   # over channels: independent, pooled within
        if is_max:
            return NotImplemented
        x = _over_channels(x, src, chan)
    positions = {d for d in dims if d not in chan}
    k = _window(ctx, positions) if positions else 1
    y = _maximum(x, k) if is_max else x.with_(var=x.shared + x.local / k, law=None)
    if name == "sum":
        n = math.prod(src[d] for d in dims)
        y = y.with_(mean=n * y.mean, var=n * n * y.var, shared=n * n * y.shared)
    profile = None
    if y.profile is not None and keep and not chan:
        profile = y.profile
        for d in dims:
            profile = profile.mean(d - 1, keepdim=True)
        profile = None if bool((profile == 1).all()) else profile
    return y.with_(axes=_remaining_axes(y.axes, dims, keep), profile=profile)


def _over_channels(x: Moments, shape: tuple[int, ...], chan: list[int]) -> Moments:
    """The mean over the channel dims `chan`: per remaining channel, mean of the means,
    variance sum / C^2 (independent channels), shared likewise."""
    sizes = [shape[a] for a in x.axes]
    ks = [x.axes.index(d) for d in chan]
    c = math.prod(sizes[k] for k in ks)

    def fold(t: torch.Tensor, power: int) -> torch.Tensor:
        t = t.reshape(sizes)
        return t.sum(dim=ks).reshape(-1) / c ** power
    rest = tuple(a for a in x.axes if a not in chan)
    return Moments(fold(x.mean, 1), fold(x.var, 2), fold(x.shared, 2), rest)


def _maximum(x: Moments, k: int) -> Moments:
    """Max over k independent positions of each channel: shared + max of k local values."""
    if k <= 1:
        return x
    q = x.particles()                                        # local law taken as x's law
    kk = q.shape[-1]
    u = ((torch.arange(kk, dtype=torch.float64) + 0.5) / kk) ** (1.0 / k)
    idx = (u * kk - 0.5).clamp(0, kk - 1)
    lo, hi = idx.floor().long(), idx.ceil().long()
    frac = idx - lo
    top = q[:, lo] * (1 - frac) + q[:, hi] * frac            # quantiles of the max, (C, K)
    e, v = top.mean(-1), top.var(-1, unbiased=False)
    sd_l = x.local.sqrt()
    law = standardize(top)
    if float(x.shared.max()) > 0:
        law = sum_law(x.shared.sqrt(), None, sd_l * v.sqrt(), law)
    return Moments(x.mean + sd_l * e, x.shared + x.local * v, x.shared, x.axes, law)


# -- softmax, products, attention -----------------------------------------------------------------
def _softmax_mc(ctx: MapContext, var: float, t: int, log: bool = False, dof: int = 0
                ) -> tuple[float, float]:
    """Mean and variance of softmax weights over t i.i.d. N(0, var) logits. `dof` > 0: each
    row's variance is var * chi^2_dof / dof (a query's squared length over its dof entries)."""
    rows = max(16, ctx.run.cfg.mc_samples // t)
    z = ctx.normal(rows, t) * math.sqrt(max(var, 0.0))
    if dof > 0:
        z = z * ctx.normal(rows, dof).pow(2).mean(1, keepdim=True).sqrt()
    y = torch.log_softmax(z, -1) if log else torch.softmax(z, -1)
    return float(y.mean()), float(y.var(unbiased=False))


def softmax(ctx: MapContext) -> Moments:
    """Softmax / log-softmax over a dim of size t: logits i.i.d. with x's local variance (a
    part shared along the dim cancels)."""
    x, shape = ctx.first().collapse(), ctx.shape(ctx.raw_args[0])
    dim = ctx.module.dim if ctx.module is not None else ctx.value(ctx.raw_arg(1, "dim"))
    t = shape[dim if dim is not None else -1]
    log = isinstance(ctx.module, nn.LogSoftmax) or "log" in _name(ctx)
    mean, var = _softmax_mc(ctx, float(x.local[0]), t, log)
    return Moments(mean, var)


def matmul(ctx: MapContext) -> Moments:
    """a @ b for two independent signals: each output sums k products of independent entries."""
    a, b = (m if isinstance(m, Moments) else constant(ctx.value(r))
            for m, r in zip(ctx.args[:2], ctx.raw_args[:2]))
    a, b = a.collapse(), b.collapse()
    k = ctx.shape(ctx.raw_args[0])[-1]
    return Moments(k * a.mean * b.mean, k * (a.second * b.second - (a.mean * b.mean) ** 2))


def key_counts(ctx: MapContext, mask: Any, causal: bool, t_q: int, t_k: int) -> torch.Tensor:
    """How many keys each query may attend to (a 1-d tensor, one entry per query row)."""
    if causal:
        return torch.arange(1, t_q + 1).clamp(max=t_k) + max(0, t_k - t_q)
    if isinstance(mask, torch.Tensor):
        allowed = mask if mask.dtype == torch.bool else torch.isfinite(mask) & (mask > -1e4)
        return allowed.expand(*allowed.shape[:-2], t_q, t_k).reshape(-1, t_q, t_k).sum(-1)\
            .reshape(-1)
    return torch.full((1,), t_k)


def attention_moments(ctx: MapContext, q: Moments, k: Moments, v: Moments, d: int,
                      counts: torch.Tensor, scale: float, dropout: float = 0.0) -> Moments:
    """Attention of head size d, each query over `counts` keys. Along the keys only the parts
    of q . k that vary matter (softmax is shift-invariant): variance d E[q^2] local(k) scale^2,
    times chi^2_d / d per query. The weights a_j (sum 1) average the values: their shared part
    passes whole, the local part shrinks by c = E sum_j a_j^2, and their mean over the keys is
    common to all queries. Inverted dropout p on the weights: sum_j a'_j has second moment
    1 + c p / (1 - p), sum_j a'_j^2 mean c / (1 - p). Channel by channel of v."""
    qc, kc = q.collapse(), k.collapse()
    logit = d * float(qc.second[0]) * float(kc.local[0]) * scale ** 2
    keep = 1.0 - dropout
    values, freq = torch.unique(counts, return_counts=True)
    second = shared = 0.0
    for t, n in zip(values.tolist(), (freq / freq.sum()).tolist()):
        if t <= 0:
            continue
        m, var = _softmax_mc(ctx, logit, int(t), dof=d)
        c = t * (var + m * m)                                    # E sum_j a_j^2
        second = second + n * ((1 + c * dropout / keep) * (v.mean ** 2 + v.shared) +
                               c / keep * v.local)
        shared = shared + n * (v.shared + v.local / t)
    return Moments(v.mean, second - v.mean ** 2, shared, v.axes)


def sdpa(ctx: MapContext) -> Moments:
    """F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)."""
    q, k, v = ctx.args[:3]
    if not all(isinstance(m, Moments) for m in (q, k, v)):
        return NotImplemented
    qs, ks = ctx.shape(ctx.raw_args[0]), ctx.shape(ctx.raw_args[1])
    d = qs[-1]
    mask = ctx.value(ctx.raw_arg(3, "attn_mask"))
    dropout = float(ctx.value(ctx.raw_arg(4, "dropout_p", 0.0)) or 0.0)
    causal = bool(ctx.value(ctx.raw_arg(5, "is_causal", False)))
    scale = ctx.value(ctx.raw_arg(6, "scale")) or ctx.kwargs.get("scale") or 1 / math.sqrt(d)
    counts = key_counts(ctx, mask, causal, qs[-2], ks[-2])
    return attention_moments(ctx, q, k, v, d, counts, float(scale), dropout)


def upsample(ctx: MapContext) -> Any:
    """Nearest upsampling copies values: a layout operation. Other modes: no map."""
    mode = ctx.module.mode if ctx.module is not None else ctx.value(ctx.raw_arg(3, "mode",
                                                                              "nearest"))
    if mode != "nearest":
        return NotImplemented
    from .layout import follow
    return follow(ctx)


_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
          F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
          F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
          F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
          torch.max_pool1d, torch.max_pool2d, torch.max_pool3d, torch.avg_pool1d,
          torch.mean, torch.sum, torch.amax, "mean", "sum", "amax")
for _t in _POOLS:
    register_moment_map(_t, reduce, per_channel=True, keeps_profile=True)
for _t in (nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax,
           torch.log_softmax, "softmax", "log_softmax"):
    register_moment_map(_t, softmax)
register_moment_map(F.scaled_dot_product_attention, sdpa, per_channel=True)
for _t in (nn.Upsample, F.interpolate):
    register_moment_map(_t, upsample, per_channel=True)
