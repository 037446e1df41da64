"""Moment maps of operations that mix positions or channels: average and max pooling (kernels,
adaptive, global means and sums), softmax, products of two signals, attention.

Contract:
- an average is computed by running the operation itself on the statistics maps: the mean
  of the output is the average of the means; of the variance, a channel's `shared` part stays
  whole and its local part is divided by the positions averaged (they are taken as
  uncorrelated beyond what `shared` says); channels averaged together are independent;
- max over k positions: shared + the max of k local values, whose law is the local law's
  quantiles at u^(1/k) (independent positions), from the window's average statistics;
- softmax and attention weights by Monte Carlo over i.i.d. normal logits (seeded);
- `attention_moments`: q k^T scaled, softmax over the keys each query may see (a causal flag or
  a boolean/additive mask, from its value on the example input), dropout, then the weighted
  average of the values, channel by channel of v.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .context import MapContext
from .elementwise import channel_law
from .laws import standardize, sum_law
from .registry import register_moment_map
from .scales import narrowed
from .statistics import Moments, constant


def _name(ctx: MapContext) -> str:
    if ctx.module is not None:
        return type(ctx.module).__name__.lower()
    t = ctx.node.target
    return str(getattr(t, "__name__", t)).split(".")[0].lower()


_MAX_TO_AVG: dict[Any, Callable[..., torch.Tensor]] = {
    nn.MaxPool1d: F.avg_pool1d, nn.MaxPool2d: F.avg_pool2d, nn.MaxPool3d: F.avg_pool3d,
    nn.AdaptiveMaxPool1d: F.adaptive_avg_pool1d, nn.AdaptiveMaxPool2d: F.adaptive_avg_pool2d,
    nn.AdaptiveMaxPool3d: F.adaptive_avg_pool3d,
}


def _averaging(ctx: MapContext, node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
    """The operation as an average of a map (1, *shape): itself for averages, the average
    pool of the same window for max pooling, sums divided by the count."""
    name = _name(ctx)
    m = ctx.module
    if m is not None:
        if type(m) in _MAX_TO_AVG:
            avg = _MAX_TO_AVG[type(m)]
            if "adaptive" in name:
                return lambda t: avg(t, m.output_size)
            return lambda t: avg(t, m.kernel_size, m.stride, m.padding)
        return lambda t: ctx.call(t)

    def run(t: torch.Tensor) -> torch.Tensor:
        args, kwargs = ctx.substituted({node: t})
        if "max_pool" in name:                      # (x, kernel, stride, padding, ...)
            dims = t.dim() - 2
            avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
            stride = args[2] if len(args) > 2 and args[2] else args[1]
            return avg(t, args[1], stride, args[3] if len(args) > 3 else 0)
        if "adaptive_max" in name:
            dims = t.dim() - 2
            return {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d,
                    3: F.adaptive_avg_pool3d}[dims](t, args[1])
        out = ctx.call(*args, **kwargs)
        if isinstance(out, tuple):                  # max with indices
            out = out[0]
        return out
    return run


def reduce(ctx: MapContext) -> Any:
    """Pooling (average or max, kernel or adaptive), x.mean(dims), x.sum(dims)."""
    node = next((a for a in ctx.node.all_input_nodes if ctx.is_signal(a)), None)
    x = ctx.run_moments(node) if node is not None else None
    if not isinstance(x, Moments):
        return NotImplemented
    shape, out = tuple(ctx.shape(node)[1:]), ctx.out_shape
    full = x.expand(shape)
    name = _name(ctx)
    summing = name == "sum"
    is_max = "max" in name
    if is_max and name in ("amax", "max") and ctx.module is None:
        return NotImplemented
    run = _averaging(ctx, node)
    nd = len(shape)
    chan_ids = torch.zeros(shape, dtype=torch.float64)
    for d in range(nd):
        if d - nd in x.channels:
            sizes = [1] * nd
            sizes[d] = shape[d]
            chan_ids = chan_ids + torch.arange(shape[d], dtype=torch.float64).reshape(sizes) * \
                (1 + chan_ids.max())
    n_in = math.prod(shape) if shape else 1
    n_out = math.prod(out[1:]) if len(out) > 1 else 1
    k = max(1, round(n_in / max(1, n_out)))                         # inputs per output
    ids_out = run(chan_ids.unsqueeze(0))[0]
    distinct_in = len(torch.unique(chan_ids))
    distinct_out = max(1, len(torch.unique(ids_out)))
    k_chan = max(1, round(distinct_in / distinct_out))               # channels per output
    k_pos = max(1, round(k / k_chan))
    avg = [run(t.unsqueeze(0))[0] for t in (full.mean, full.local, full.shared)]
    if summing:
        avg = [t / k for t in avg]
    mean, local, shared = avg[0], avg[1], avg[2]
    var = shared / k_chan + local / (k_chan * (1 if is_max else k_pos))
    shared_out = shared / k_chan
    scales = x.scales if is_max or x.sample_wide else narrowed(x.scales, k_pos)
    y = Moments(mean, var, shared_out, _channels_after(ids_out), None, scales, x.sample_wide)
    if is_max:
        y = _maximum(y, k_pos, channel_law(x))
    if summing:
        y = y.with_(mean=k * y.mean, var=k * k * y.var, shared=k * k * y.shared)
    return y.compact()


def _channels_after(ids: torch.Tensor) -> tuple[int, ...]:
    """Channel dims of the output: those along which the channel index varies."""
    nd = ids.dim()
    return tuple(d - nd for d in range(nd) if ids.shape[d] > 1 and
                 not bool((ids == ids.narrow(d, 0, 1)).all()))


def _maximum(x: Moments, k: int, law: Optional[torch.Tensor]) -> Moments:
    """Max over k independent positions: shared + max of k local values. The max's quantile
    at u is the law's at u^(1/k); the law's quantile function is interpolated from its
    particles linearly in z = Phi^-1(u) (exact for a normal law, tails extrapolated)."""
    if k <= 1:
        return x
    levels = 1024
    u = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
    z = torch.special.ndtri(u ** (1.0 / k))                      # (levels,)
    if law is None:
        top = z.reshape(1, -1)
    else:
        q = law.reshape(-1, law.shape[-1])
        kk = q.shape[-1]
        zq = torch.special.ndtri((torch.arange(kk, dtype=torch.float64) + 0.5) / kk)
        pos = torch.searchsorted(zq, z).clamp(1, kk - 1)
        lo, hi = zq[pos - 1], zq[pos]
        t = (z - lo) / (hi - lo)                                 # beyond the ends: linear
        top = q[:, pos - 1] * (1 - t) + q[:, pos] * t
    e, v = top.mean(-1), top.var(-1, unbiased=False)
    if law is not None:
        e, v = e.reshape(law.shape[:-1]), v.reshape(law.shape[:-1])
    else:
        e, v = e.reshape(()), v.reshape(())
    sd_l = x.local.sqrt()
    new_law = standardize(requantize_rows(top))
    if law is not None:
        new_law = new_law.reshape(*law.shape[:-1], -1)
    if float(x.shared.max()) > 0:
        new_law = sum_law(x.shared.mean().sqrt().reshape(1), new_law.reshape(-1, new_law.shape[-1]),
                          (x.local.mean() * v.mean()).sqrt().reshape(1), None)
    return x.with_(mean=x.mean + sd_l * e, var=x.shared + x.local * v, law=new_law)


def requantize_rows(top: torch.Tensor) -> torch.Tensor:
    """Quantile rows (R, 1024) to particles (R, PARTICLES): block means."""
    from .laws import PARTICLES
    return top.reshape(top.shape[0], PARTICLES, -1).mean(-1)


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
    mean, var = _softmax_mc(ctx, float(x.local), t, log)
    return Moments(mean, var)


def matmul(ctx: MapContext) -> Moments:
    """a @ b for two independent signals: each output sums k products of independent entries."""
    a, b = (m if isinstance(m, Moments) else constant(ctx.value(r))
            for m, r in zip(ctx.args[:2], ctx.raw_args[:2]))
    a, b = a.collapse(), b.collapse()
    k = ctx.shape(ctx.raw_args[0])[-1]
    return Moments(k * a.mean * b.mean, k * (a.second * b.second - (a.mean * b.mean) ** 2))


def key_counts(mask: Any, causal: bool, t_q: int, t_k: int) -> torch.Tensor:
    """How many keys each query may attend to (a 1-d tensor, one entry per query row)."""
    if causal:
        return torch.arange(1, t_q + 1).clamp(max=t_k) + max(0, t_k - t_q)
    if isinstance(mask, torch.Tensor):
        allowed = mask if mask.dtype == torch.bool else torch.isfinite(mask) & (mask > -1e4)
        return allowed.expand(*allowed.shape[:-2], t_q, t_k).reshape(-1, t_q, t_k).sum(-1)\
            .reshape(-1)
    return torch.full((1,), t_k)


def _weights(ctx: MapContext, var: float, t: int, dof: int, key_dof: int) -> tuple[float, float]:
    """c = E sum_j a_j^2 for softmax weights over t logits N(0, var) (each query's variance
    times chi^2_dof / dof), and with `key_dof` > 0, E sum_j a_j^2 s_j: key j and its value
    projected from one input of key_dof entries share its squared length s_j ~
    chi^2_key_dof / key_dof, which scales both the logit and the value (a long input gets a
    large weight and a large value)."""
    rows = max(16, ctx.run.cfg.mc_samples // t)
    z = ctx.normal(rows, t) * math.sqrt(max(var, 0.0))
    z = z * ctx.normal(rows, dof).pow(2).mean(1, keepdim=True).sqrt()
    s = ctx.normal(rows, t, key_dof).pow(2).mean(2) if key_dof > 0 else torch.ones(rows, t,
                                                                                 dtype=z.dtype)
    a = torch.softmax(z * s.sqrt(), -1)
    return float(a.pow(2).sum(-1).mean()), float((a.pow(2) * s).sum(-1).mean())


def attention_moments(ctx: MapContext, q: Moments, k: Moments, v: Moments, d: int,
                      counts: torch.Tensor, scale: float, dropout: float = 0.0,
                      keys: int = -2, key_dof: int = 0) -> Moments:
    """Attention of head size d, each query over `counts` keys; v's statistics averaged over
    its key dim `keys`. Along the keys only the parts of q . k that vary matter (softmax is
    shift-invariant): variance d E[q^2] local(k) scale^2, times chi^2_d / d per query. The
    weights a_j (sum 1) average the values: their shared part passes whole, the local part
    shrinks by c = E sum_j a_j^2 (`_weights`; with `key_dof`, keys and values that share an
    input of that many entries), and their mean over the keys is common to all queries.
    Inverted dropout p on the weights: sum_j a'_j has second moment 1 + c p / (1 - p), and
    sum_j a'_j^2 mean c / (1 - p). Channel by channel of v."""
    qc, kc = q.collapse(), k.collapse()
    logit = d * float(qc.second) * float(kc.local) * scale ** 2
    vm, vs, vl = v.mean, v.shared, v.local
    if vm.dim() >= -keys and vm.shape[keys] > 1:
        vm, vs, vl = (t.mean(keys, keepdim=True) for t in (vm, vs, vl))
    keep = 1.0 - dropout
    values, freq = torch.unique(counts, return_counts=True)
    second = shared = 0.0
    narrowing = 0.0
    for t, n in zip(values.tolist(), (freq / freq.sum()).tolist()):
        if t <= 0:
            continue
        c, c_local = _weights(ctx, logit, int(t), d, key_dof)
        second = second + n * ((1 + c * dropout / keep) * (vm ** 2 + vs) + c_local / keep * vl)
        shared = shared + n * (vs + vl / t)
        narrowing = narrowing + n * c
    # a query's output averages the values of ~1/c keys: their scales average
    scales = narrowed(v.scales, 1 / narrowing) if narrowing > 0 and not v.sample_wide \
        else v.scales
    return Moments(vm, second - vm ** 2, shared, v.channels, None, scales,
                   v.sample_wide).compact()


def sdpa(ctx: MapContext) -> Any:
    """F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)."""
    q, k, v = ctx.args[:3]
    if not all(isinstance(m, Moments) for m in (q, k, v)):
        return NotImplemented
    qs, ks = ctx.shape(ctx.raw_args[0]), ctx.shape(ctx.raw_args[1])
    d = qs[-1]
    mask = ctx.value(ctx.raw_arg(3, "attn_mask"))
    dropout = float(ctx.value(ctx.raw_arg(4, "dropout_p", 0.0)) or 0.0)
    causal = bool(ctx.value(ctx.raw_arg(5, "is_causal", False)))
    scale = ctx.value(ctx.raw_arg(6, "scale")) or 1 / math.sqrt(d)
    counts = key_counts(mask, causal, qs[-2], ks[-2])
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
          torch.mean, torch.sum, "mean", "sum")
for _t in _POOLS:
    register_moment_map(_t, reduce, per_channel=True)
for _t in (nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax,
           torch.log_softmax, "softmax", "log_softmax"):
    register_moment_map(_t, softmax)
register_moment_map(F.scaled_dot_product_attention, sdpa, per_channel=True)
for _t in (nn.Upsample, F.interpolate):
    register_moment_map(_t, upsample, per_channel=True)
