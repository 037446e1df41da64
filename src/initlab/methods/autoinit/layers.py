"""Moment maps of weighted layers: Linear, Conv1d/2d/3d (grouped, depthwise, any padding), the
functional forms (F.linear, F.conv*d, their ATen operators), a matmul with a parameter (x @ W,
addmm: Hugging Face's Conv1D) and Embedding.

Contract: each weight is drawn at the layer's first call (`WeightPlan`) with the paper's
Var(W) = sigma^2 / (fan_in * E[x^2]), E[x^2] over the inputs the weights actually read (zero
padding counts as zeros), its bias zeroed. The output's statistics are then computed from the
values drawn, unit by unit: for y_j = sum_i W_ji x_i + b_j with independent inputs,

    E y_j = sum_i W_ji mu_i + b_j,     Var y_j = sum_i W_ji^2 local_i + shared part,

where the shared part (constant over positions) adds up through the sum of a unit's weights
over the positions it reads. For convolutions this is done per class of output positions with
the same real taps (`geometry.py`). With `rescale` (the default), the drawn weight is scaled so
that this prediction is exactly sigma^2; with `centered`, a weight whose centered draw would
pass on less than a tenth of sigma^2 (its input is nearly constant) is drawn uncentered.
Skewness and kurtosis add up as cumulants (sum_i W_ji^3 k3_i, ...), so a sum of few inputs (a
depthwise convolution) keeps its law.
"""
from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import fx, nn

from .context import MapContext
from .geometry import ConvShape, Taps, conv_taps, dense
from .moments import Moments, cornish_fisher, law_cumulants
from .registry import register_moment_map

log = logging.getLogger(__name__)

MIN_CENTERED = 0.1  # least share of sigma^2 a centered draw must pass on (else uncentered)


@dataclass
class Features:
    """A weighted layer's input as rows x features: per-feature statistics (R, n), and whether
    the features share `shared` (they are positions of one channel) or not (channels)."""
    mean: torch.Tensor
    local: torch.Tensor
    shared: torch.Tensor
    k3: torch.Tensor
    k4: torch.Tensor
    coupled: bool


def _stat_block(x: Moments, sizes: list[int], k: Optional[int]) -> Callable[[torch.Tensor],
                                                                           torch.Tensor]:
    """A function turning a (C,) statistic into (R, n) rows (feature dim at position k of the
    channel dims `sizes`, or all rows alike when k is None)."""
    def rows(t: torch.Tensor) -> torch.Tensor:
        if k is None:
            return t.reshape(-1, 1)
        return t.reshape(sizes).movedim(k, -1).reshape(-1, sizes[k])
    return rows


def features(x: Moments, shape: tuple[int, ...], dim: int) -> tuple[Features, list[int],
                                                                     Optional[int]]:
    """x's statistics as rows x features along `dim` (the dim the layer sums over, of size n);
    also the channel sizes and the position of `dim` among x's channel dims (None if it is not
    one: then the n features are positions, alike and sharing `shared`)."""
    sizes = [shape[a] for a in x.axes]
    k = x.axes.index(dim) if dim in x.axes else None
    rows = _stat_block(x, sizes, k)
    k3, k4 = law_cumulants(x.law)
    sd = x.var.sqrt()
    if k3.numel() == 1 and x.channels > 1:
        k3, k4 = k3.expand(x.channels), k4.expand(x.channels)
    n = shape[dim]
    parts = [rows(t).expand(-1, n) for t in (x.mean, x.local, x.shared, k3 * sd ** 3,
                                               k4 * sd ** 4)]
    return Features(*parts, coupled=k is None), sizes, k


def arrange(stat: torch.Tensor, sizes: list[int], k: Optional[int], axes: tuple[int, ...],
            dim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Output rows x units (R, out) back to channels over the output's axes (`dim` joins them
    when it was not a channel dim)."""
    out = stat.shape[-1]
    if k is not None:
        rest = sizes[:k] + sizes[k + 1:]
        t = stat.reshape(*rest, out).movedim(-1, k)
        return t.reshape(-1), axes
    new = tuple(sorted(axes + (dim,)))
    t = stat.reshape(*sizes, out).movedim(-1, new.index(dim))
    return t.reshape(-1), new


def output_moments(f: Features, w: torch.Tensor, bias: Optional[torch.Tensor], taps: Taps
                   ) -> tuple[torch.Tensor, ...]:
    """Per row and unit (R, out): mean, var, shared, third and fourth cumulant of y = w * x.
    `w` is dense (out, n, T)."""
    w2 = w.pow(2)
    local = f.local @ (w2 * taps.seen).sum(2).T
    total = float(taps.counts.sum())
    mean = shared = sq = 0.0
    for mask, n in zip(taps.masks, taps.counts.tolist()):
        s = (w * mask).sum(2)                                        # (out, n): real taps here
        a = f.mean @ s.T                                             # (R, out)
        mean, sq = mean + n * a, sq + n * a * a
        if f.coupled:
            shared = shared + n * f.shared[:, :1] * s.sum(1).pow(2)
        else:
            shared = shared + n * (f.shared @ s.pow(2).T)
    mean, shared = mean / total, shared / total
    positional = (sq / total - mean ** 2).clamp_min(0.0)            # the mean over positions
    k3 = f.k3 @ w.pow(3).sum(2).T
    k4 = f.k4 @ w2.pow(2).sum(2).T
    b = 0.0 if bias is None else bias.detach().double().cpu()
    return mean + b, local + shared + positional, shared, k3, k4


def weighted(ctx: MapContext, name: str, weight: torch.Tensor, bias: Optional[torch.Tensor],
             x: Moments, dim: int, conv: Optional[ConvShape] = None, groups: int = 1,
             transposed: bool = False, shape: Optional[tuple[int, ...]] = None) -> Moments:
    """Draw (or read) a weighted layer's weight, stage it, zero its bias, and return the
    output's statistics. `dim`: the input dim summed over (a convolution's channel dim);
    `transposed`: the parameter is stored (in, out) (x @ W); `shape`: the input's shape (default:
    the node's first argument's)."""
    shape = shape or ctx.shape(ctx.raw_args[0])
    like = weight.T if transposed else weight
    plan = ctx.weights
    if plan.settled(weight):
        current = plan.value(weight).detach().double().cpu()
        w, y = read(ctx, name, current.T if transposed else current, bias, x, dim, conv,
                    groups, shape)
        var = y.pooled()[1]
        if var > 0:
            plan.ask(weight, name, float(w.pow(2).mean().sqrt()) *
                     math.sqrt(ctx.run.cfg.signal_variance / var))
        return y
    w, y = draw(ctx, name, like, None if bias is None else plan.value(bias) * 0, x, dim, conv,
                groups, shape)
    plan.stage(weight, w.T if transposed else w)
    plan.zero(bias)
    return y


def _prepare(x: Moments, dim: int, conv: Optional[ConvShape], shape: tuple[int, ...]
             ) -> tuple[Moments, Features, list[int], Optional[int], Taps]:
    if conv is not None and x.axes not in ((), (1,)):
        x = x.collapse()
    if conv is not None and x.axes == ():
        x = x.take(x.expand(shape[1]), (1,))
    f, sizes, k = features(x, shape, dim)
    taps = conv_taps(conv, tuple(shape[2:]), x.profile) if conv is not None else Taps.dense()
    return x, f, sizes, k, taps


def _outputs(x: Moments, f: Features, sizes: list[int], k: Optional[int], taps: Taps,
             w: torch.Tensor, bias: Optional[torch.Tensor], dim: int, conv: bool,
             groups: int) -> Moments:
    """The output Moments for the weight `w` ((out, in/groups, *kernel))."""
    d = dense(w, groups)
    stats = output_moments(f, d, bias, taps)
    if conv:
        stats, axes = [t.reshape(-1) for t in stats], (1,)
    else:
        axes = arrange(stats[0], sizes, k, x.axes, dim)[1]
        stats = [arrange(t, sizes, k, x.axes, dim)[0] for t in stats]
    law = None
    if x.law is not None:
        sd = stats[1].clamp_min(1e-300).sqrt()
        law = cornish_fisher(stats[3] / sd ** 3, stats[4] / sd ** 4)
    profile = _conv_profile(taps, d, f) if conv else x.profile
    if not conv and profile is not None and k is None and profile.dim() > dim - 1:
        profile = profile.mean(dim - 1, keepdim=True)
    return Moments(stats[0], stats[1], stats[2], axes, law, profile, x.scales)


def read(ctx: MapContext, name: str, w: torch.Tensor, bias: Optional[torch.Tensor],
         x: Moments, dim: int, conv: Optional[ConvShape], groups: int,
         shape: tuple[int, ...]) -> tuple[torch.Tensor, Moments]:
    """The output statistics of a layer whose weight `w` ((out, in/groups, *kernel)) is kept."""
    x, f, sizes, k, taps = _prepare(x, dim, conv, shape)
    b = None if bias is None else ctx.weights.value(bias)
    return w, _outputs(x, f, sizes, k, taps, w, b, dim, conv is not None, groups)


def draw(ctx: MapContext, name: str, like: torch.Tensor, bias: Optional[torch.Tensor],
         x: Moments, dim: int, conv: Optional[ConvShape], groups: int,
         shape: tuple[int, ...]) -> tuple[torch.Tensor, Moments]:
    """A new weight shaped like `like` ((out, in/groups, *kernel)) for input `x`, and the
    output's statistics; noted in the history (not staged). `bias`: the bias as it will be
    (zeros) or None."""
    x, f, sizes, k, taps = _prepare(x, dim, conv, shape)
    fan_in = like.shape[1] * math.prod(like.shape[2:])
    frac = taps.fraction
    seen = float(((f.local * float(taps.seen.mean())).mean(1) +
                  (f.shared + f.mean ** 2).mean(1) * frac).mean())
    if not seen > 0:
        raise ValueError(f"the input of layer '{name}' is predicted to be constant zero; "
                         "AutoInit cannot scale its weights. Is a layer before it dead (e.g. "
                         "a ReLU of a negative constant)?")
    cfg = ctx.run.cfg
    std = math.sqrt(cfg.signal_variance / (fan_in * seen))
    for centered in ((True, False) if cfg.centered else (False,)):
        try:
            w = ctx.weights.draw(like, std, groups, centered)
        except ValueError as e:
            raise ValueError(f"layer '{name}': {e}") from e
        y = _outputs(x, f, sizes, k, taps, w, bias, dim, conv is not None, groups)
        var = y.pooled()[1]
        if not centered or var >= MIN_CENTERED * cfg.signal_variance:
            break
        log.warning("autoinit: layer '%s' reads a nearly constant input; centered weights "
                    "would leave its output to the tiny differences between channels, so it "
                    "is drawn uncentered", name)
    mean_in, var_in = x.pooled()
    entry = ctx.weights.note(layer=name, fan_in=fan_in, input_mean=mean_in, input_var=var_in,
                             weight_std=std, centered=centered)
    if (cfg.rescale or centered) and var > 0:
        g = cfg.signal_variance / var
        w, std = w * math.sqrt(g), std * math.sqrt(g)
        y = y.with_(mean=y.mean * math.sqrt(g), var=y.var * g, shared=y.shared * g)
        entry["weight_std"] = std
    entry["output_mean"], entry["output_var"] = y.pooled()
    return w, y


def _conv_profile(taps: Taps, w: torch.Tensor, f: Features) -> Optional[torch.Tensor]:
    """The output's local-variance profile over its positions: each position reads the
    input's profile through its real taps, each tap weighted by its share of the variance."""
    if not taps.out_spatial:
        return None
    g = (w.pow(2) * f.local.mean(0).reshape(1, -1, 1)).sum((0, 1))        # (T,)
    prof = taps.profile_reads @ g
    if not float(prof.mean()) > 0:
        return None
    return (prof / prof.mean()).reshape(1, *taps.out_spatial)


# -- the maps -------------------------------------------------------------------------------------
def linear_module(ctx: MapContext) -> Moments:
    m = ctx.module
    x = ctx.first()
    return weighted(ctx, ctx.name, m.weight, m.bias, x, len(ctx.shape(ctx.raw_args[0])) - 1)


def conv_module(ctx: MapContext) -> Moments:
    m = ctx.module
    return weighted(ctx, ctx.name, m.weight, m.bias, ctx.first(), 1, ConvShape.of(m), m.groups)


def _param(ctx: MapContext, a: object) -> Optional[torch.Tensor]:
    """The model parameter a graph input names (a `get_attr` node), else None."""
    if isinstance(a, fx.Node) and a.op == "get_attr":
        v = ctx.run.attr(a)
        return v if isinstance(v, nn.Parameter) else None
    return None


def _param_name(a: fx.Node) -> str:
    return str(a.target).rpartition(".")[0] or str(a.target)


def linear_function(ctx: MapContext) -> object:
    """F.linear / aten.linear(x, weight, bias) with the weight a parameter."""
    w_node = ctx.raw_arg(1, "weight")
    weight = _param(ctx, w_node)
    if weight is None or not ctx.is_signal(ctx.raw_args[0]):
        return NotImplemented
    bias = _param(ctx, ctx.raw_arg(2, "bias"))
    x = ctx.args[0]
    return weighted(ctx, _param_name(w_node), weight, bias, x,
                    len(ctx.shape(ctx.raw_args[0])) - 1)


def conv_function(ctx: MapContext) -> object:
    """F.conv*d / aten.conv*d(x, weight, bias, stride, padding, dilation, groups)."""
    w_node = ctx.raw_arg(1, "weight")
    weight = _param(ctx, w_node)
    if weight is None or not ctx.is_signal(ctx.raw_args[0]):
        return NotImplemented
    bias = _param(ctx, ctx.raw_arg(2, "bias"))
    conv = ConvShape.functional(weight, ctx.value(ctx.raw_arg(3, "stride", 1)),
                                ctx.value(ctx.raw_arg(4, "padding", 0)),
                                ctx.value(ctx.raw_arg(5, "dilation", 1)))
    groups = int(ctx.value(ctx.raw_arg(6, "groups", 1)))
    return weighted(ctx, _param_name(w_node), weight, bias, ctx.args[0], 1, conv, groups)


def matmul_function(ctx: MapContext) -> object:
    """x @ W (torch.matmul, operator.matmul, aten.mm/matmul) and addmm(b, x, W) with W a 2-d
    parameter stored (in, out), as in Hugging Face's Conv1D; anything else is a product of
    signals (`pooling.matmul`)."""
    addmm = "addmm" in getattr(ctx.node.target, "__name__", str(ctx.node.target))
    i = 1 if addmm else 0
    x_node, w_node = ctx.raw_args[i], ctx.raw_args[i + 1]
    weight = _param(ctx, w_node)
    if weight is None or weight.dim() != 2 or not ctx.is_signal(x_node):
        from .pooling import matmul
        return matmul(ctx)
    bias = _param(ctx, ctx.raw_args[0]) if addmm else None
    return weighted(ctx, _param_name(w_node), weight, bias, ctx.args[i],
                    len(ctx.shape(x_node)) - 1, transposed=True)


def embedding_module(ctx: MapContext) -> Moments:
    """Rows of the table, every token equally likely: the statistics of its entries, per
    column (the embedding dim is the output's channel dim)."""
    m = ctx.module
    w = ctx.weights.embedding(ctx.name, m.weight, m.padding_idx).detach().double().cpu()
    ndim = len(ctx.out_shape)
    return Moments(w.mean(0), w.var(0, unbiased=False), 0.0, (ndim - 1,))


def embedding_function(ctx: MapContext) -> object:
    """F.embedding(ids, weight) / aten.embedding(weight, ids) with the weight a parameter."""
    aten = isinstance(ctx.node.target, torch._ops.OpOverload)
    w_node = ctx.raw_args[0 if aten else 1]
    weight = _param(ctx, w_node)
    if weight is None:
        return NotImplemented
    w = ctx.weights.embedding(_param_name(w_node), weight, None).detach().double().cpu()
    return Moments(w.mean(0), w.var(0, unbiased=False), 0.0, (len(ctx.out_shape) - 1,))


def _register(targets: tuple, fn: Callable) -> None:
    for t in targets:
        register_moment_map(t, fn, per_channel=True, keeps_profile=True)


_register((nn.Linear,), linear_module)
_register((nn.Conv1d, nn.Conv2d, nn.Conv3d), conv_module)
_register((nn.Embedding,), embedding_module)
_register((torch.nn.functional.linear,), linear_function)
_register((torch.nn.functional.conv1d, torch.nn.functional.conv2d,
           torch.nn.functional.conv3d), conv_function)
_register((torch.matmul, torch.mm, operator.matmul, "matmul", "mm", torch.addmm),
          matmul_function)
_register((torch.nn.functional.embedding,), embedding_function)
