"""Moment maps of weighted layers: Linear, Conv1d/2d/3d (grouped, depthwise, any padding), the
functional forms (F.linear, F.conv*d, their ATen operators), a matmul with a parameter (x @ W,
addmm: Hugging Face's Conv1D) and Embedding.

Contract: each weight is drawn at the layer's first call (`WeightPlan`) with the paper's
Var(W) = sigma^2 / (fan_in * E[x^2]), E[x^2] over the inputs the weights actually read (zero
padding counts as zeros), its bias zeroed. The output's statistics are then computed from the
values drawn, element by element: for y_j = sum_i W_ji x_i + b_j with independent inputs,

    E y_j = sum_i W_ji mu_i + b_j,     Var y_j = sum_i W_ji^2 local_i + shared part,

where the shared part (constant over positions) adds up through the sum of a unit's weights
over the positions it reads. A convolution does this by running itself on the statistics maps
(`geometry.ConvCall`), so every output position gets its own mean and variance, zero padding
included. With `rescale` (the default), the drawn weight is scaled so that the predicted output
variance is exactly sigma^2; with `centered`, a weight whose centered draw would pass on less
than a tenth of sigma^2 (its input is nearly constant) is drawn uncentered. Skewness and
kurtosis add up as cumulants (sum_i W_ji^3 k3_i, ...), so a sum of few inputs (a depthwise
convolution) keeps its law.
"""
from __future__ import annotations

import logging
import math
import operator
from typing import Callable, Optional

import torch
from torch import fx, nn

from .context import MapContext
from .elementwise import channel_law
from .geometry import ConvCall, dense
from .laws import cornish_fisher, law_cumulants
from .pooling import matmul
from .registry import register_moment_map
from .scales import narrowed, spread
from .statistics import Moments, fixed

log = logging.getLogger(__name__)

MIN_CENTERED = 0.1  # least share of sigma^2 a centered draw must pass on (else uncentered)


def _padded(t: torch.Tensor, nd: int) -> torch.Tensor:
    return t.reshape((1,) * (nd - t.dim()) + tuple(t.shape))


def _law_of(x: Moments, y_var: torch.Tensor, k3: torch.Tensor, k4: torch.Tensor,
            channels: tuple[int, ...]) -> Optional[torch.Tensor]:
    """The output's law per channel from its third and fourth cumulants (Cornish-Fisher)."""
    if x.law is None:
        return None
    nd = y_var.dim()
    var, k3, k4 = (_padded(t, nd) for t in (y_var, k3, k4))
    for d in range(nd):
        if d - nd not in channels and var.shape[d] > 1:
            var, k3, k4 = (t.mean(d, keepdim=True) for t in (var, k3, k4))
    sd = var.clamp_min(1e-300).sqrt()
    return cornish_fisher(k3 / sd ** 3, k4 / sd ** 4)


def linear_outputs(x: Moments, shape: tuple[int, ...], w: torch.Tensor,
                   b: Optional[torch.Tensor]) -> Moments:
    """y = x W^T + b over the last dim, element by element: mean x W^T + b, local variance
    local W^2^T; the shared part through W^2 if the last dim is a channel dim, else (its n
    entries are positions sharing one common part) through (sqrt(shared) W^T)^2."""
    n, nd = shape[-1], len(shape)

    def last(t: torch.Tensor) -> torch.Tensor:
        t = _padded(t, nd)
        return t.expand(*t.shape[:-1], n)
    w2 = w * w
    mean = last(x.mean) @ w.T + (0.0 if b is None else b.detach().double().cpu())
    local = last(x.local) @ w2.T
    shared = last(x.shared) @ w2.T if -1 in x.channels else (last(x.shared).sqrt() @ w.T) ** 2
    channels = tuple(set(x.channels) | {-1})
    law = None
    if x.law is not None:
        skew, kurt = law_cumulants(channel_law(x))
        sd = x.var.sqrt()
        law = _law_of(x, local + shared, last(skew * sd ** 3) @ (w2 * w).T,
                      last(kurt * sd ** 4) @ (w2 * w2).T, channels)
    return Moments(mean, local + shared, shared, channels, law, x.scales,
                   x.sample_wide).compact()


def conv_outputs(x: Moments, shape: tuple[int, ...], conv: ConvCall, w: torch.Tensor,
                 b: Optional[torch.Tensor]) -> Moments:
    """A convolution on the statistics maps: the mean through the layer itself (zero padding
    and all), the local variance through W^2, the shared part through the squared sums of the
    weights over the taps; per output channel, cumulants through W^3 and W^4."""
    full = x.expand(shape)
    f32 = torch.float32                    # statistics need no more; float64 convs are slow

    def run(t: torch.Tensor, k: torch.Tensor, groups: Optional[int] = None) -> torch.Tensor:
        return conv(t.unsqueeze(0).to(f32), k.to(f32), None, groups)[0].double()
    mean = run(full.mean, w)
    if b is not None:
        mean = mean + b.detach().double().cpu().reshape(-1, *([1] * (len(shape) - 1)))
    local = run(full.local, w * w)
    shared = torch.zeros_like(local)
    if bool((full.shared > 0).any()):
        # a channel's shared part enters through the sum of a unit's weights over the taps it
        # reads: (sum_t W_jct)^2 inside; spread evenly over the taps, so that near a border a
        # unit gets the share of its real taps (unbiased over the weights' signs)
        taps = math.prod(w.shape[2:])
        sums = w.flatten(2).sum(2, keepdim=True).pow(2) / taps
        shared = run(full.shared, sums.expand(-1, -1, taps).reshape(w.shape))
    channels = (-len(shape),)
    law = None
    if x.law is not None:
        skew, kurt = law_cumulants(channel_law(x))
        sd = full.var.sqrt().flatten(1).mean(1)                              # (C,)
        skew = _padded(skew, len(shape)).expand(shape).flatten(1).mean(1)
        kurt = _padded(kurt, len(shape)).expand(shape).flatten(1).mean(1)
        wd = dense(w, conv.groups).flatten(2)
        k3 = (wd ** 3).sum(2) @ (skew * sd ** 3)
        k4 = (wd ** 4).sum(2) @ (kurt * sd ** 4)
        tail = (1,) * (len(shape) - 1)
        law = _law_of(x, (local + shared).flatten(1).mean(1).reshape(-1, *tail),
                      k3.reshape(-1, *tail), k4.reshape(-1, *tail), channels)
    # a unit reads a patch of positions: their scales average (independent positions)
    scales = x.scales if x.sample_wide else narrowed(x.scales, math.prod(w.shape[2:]))
    return Moments(mean, local + shared, shared, channels, law, scales,
                   x.sample_wide).compact()


def seen_second(x: Moments, shape: tuple[int, ...], conv: Optional[ConvCall],
                kernel: tuple[int, ...]) -> float:
    """E[x^2] over the inputs the weights read: all of x for a Linear; for a convolution,
    each output position's taps, zero padding counting as zeros."""
    if conv is None:
        return float(x.second.mean())
    second = x.expand(shape).second.mean(0)                                 # over channels
    taps = math.prod(kernel)
    return float(conv.ones(second.reshape(1, 1, *second.shape), kernel).mean()) / taps


def weighted(ctx: MapContext, name: str, weight: torch.Tensor, bias: Optional[torch.Tensor],
             x: Moments, conv: Optional[ConvCall] = None, transposed: bool = False,
             shape: Optional[tuple[int, ...]] = None) -> Moments:
    """Draw (or read) a weighted layer's weight, stage it, zero its bias, and return the
    output's statistics. `conv`: the convolution's geometry (None: a Linear over the last dim);
    `transposed`: the parameter is stored (in, out) (x @ W); `shape`: the input's per-sample
    shape (default: the node's first argument's)."""
    shape = shape or tuple(ctx.shape(ctx.raw_args[0])[1:])
    plan = ctx.weights
    if plan.settled(weight):
        current = plan.value(weight).detach().double().cpu()
        w = current.T if transposed else current
        y = outputs(x, shape, conv, w, None if bias is None else plan.value(bias))
        var = y.pooled()[1]
        if var > 0:
            plan.ask(weight, name, float(w.pow(2).mean().sqrt()) *
                     math.sqrt(ctx.run.cfg.signal_variance / var))
        return y
    w, y = draw(ctx, name, weight.T if transposed else weight, x, shape, conv,
                bias is not None)
    plan.stage(weight, w.T if transposed else w)
    plan.zero(bias)
    return y


def outputs(x: Moments, shape: tuple[int, ...], conv: Optional[ConvCall], w: torch.Tensor,
            b: Optional[torch.Tensor], orthogonal: bool = False) -> Moments:
    y = linear_outputs(x, shape, w, b) if conv is None else conv_outputs(x, shape, conv, w, b)
    positions = math.prod(shape[1:]) if conv is not None else math.prod(shape[:-1])
    return y.with_(scales=spread(y.scales, layer_noise(y, w, orthogonal,
                                                       positions if y.sample_wide else 1)))


def layer_noise(y: Moments, w: torch.Tensor, orthogonal: bool, positions: int = 1) -> float:
    """Relative variance of one position's (with per-sample classes: one sample's) mean square
    over a layer's output units, given its input: units with i.i.d. weights are independent
    normals around their own means (2 / units, with the means' share); orthonormal rows only
    fluctuate by the part of the input they do not keep (none for a square layer)."""
    out, fan_in = w.shape[0], w[0].numel()
    second = float(y.second.mean())
    if not second > 0:
        return 0.0
    tau = 2 * float((y.var ** 2 + 2 * y.mean ** 2 * y.var).mean()) / (
        second ** 2 * out * positions)
    return tau * max(0.0, 1 - out / fan_in) if orthogonal else tau


def draw(ctx: MapContext, name: str, like: torch.Tensor, x: Moments, shape: tuple[int, ...],
         conv: Optional[ConvCall], has_bias: bool = False) -> tuple[torch.Tensor, Moments]:
    """A new weight shaped like `like` ((out, in/groups, *kernel)) for input `x`, and the
    output's statistics (bias zero); noted in the history, not staged."""
    fan_in = like.shape[1] * math.prod(like.shape[2:])
    seen = seen_second(x, shape, conv, tuple(like.shape[2:]))
    if not seen > 0:
        raise ValueError(f"the input of layer '{name}' is predicted to be constant zero; "
                         "AutoInit cannot scale its weights. Is a layer before it dead (e.g. "
                         "a ReLU of a negative constant)?")
    cfg = ctx.run.cfg
    std = math.sqrt(cfg.signal_variance / (fan_in * seen))
    groups = 1 if conv is None else conv.groups
    for centered in ((True, False) if cfg.centered else (False,)):
        try:
            w = ctx.weights.draw(like, std, groups, centered)
        except ValueError as e:
            raise ValueError(f"layer '{name}': {e}") from e
        y = outputs(x, shape, conv, w, None, cfg.distribution.endswith("orthogonal"))
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


# -- the maps -------------------------------------------------------------------------------------
def linear_module(ctx: MapContext) -> Moments:
    m = ctx.module
    return weighted(ctx, ctx.name, m.weight, m.bias, ctx.first())


def conv_module(ctx: MapContext) -> Moments:
    m = ctx.module
    return weighted(ctx, ctx.name, m.weight, m.bias, ctx.first(), ConvCall.of(m))


def _param(ctx: MapContext, a: object) -> Optional[torch.Tensor]:
    """The model parameter a graph input names (a `get_attr` node), else None."""
    if isinstance(a, fx.Node) and a.op == "get_attr":
        v = ctx.run.attr(a)
        return v if isinstance(v, nn.Parameter) else None
    return None


def _param_name(a: fx.Node) -> str:
    return str(a.target).rpartition(".")[0] or str(a.target)


def _weight_and_bias(ctx: MapContext) -> Optional[tuple[fx.Node, torch.Tensor, Optional[torch.Tensor]]]:
    """(weight node, weight, bias) of a functional linear/conv call on the signal whose weight is
    a parameter; None otherwise."""
    w_node = ctx.raw_arg(1, "weight")
    weight = _param(ctx, w_node)
    if weight is None or not ctx.is_signal(ctx.raw_args[0]):
        return None
    return w_node, weight, _param(ctx, ctx.raw_arg(2, "bias"))


def linear_function(ctx: MapContext) -> object:
    """F.linear / aten.linear(x, weight, bias) with the weight a parameter."""
    found = _weight_and_bias(ctx)
    if found is None:
        return NotImplemented
    w_node, weight, bias = found
    return weighted(ctx, _param_name(w_node), weight, bias, ctx.args[0])


def conv_function(ctx: MapContext) -> object:
    """F.conv*d / aten.conv*d(x, weight, bias, stride, padding, dilation, groups)."""
    found = _weight_and_bias(ctx)
    if found is None:
        return NotImplemented
    w_node, weight, bias = found
    conv = ConvCall.functional(weight, ctx.value(ctx.raw_arg(3, "stride", 1)),
                               ctx.value(ctx.raw_arg(4, "padding", 0)),
                               ctx.value(ctx.raw_arg(5, "dilation", 1)),
                               int(ctx.value(ctx.raw_arg(6, "groups", 1))))
    return weighted(ctx, _param_name(w_node), weight, bias, ctx.args[0], conv)


def matmul_function(ctx: MapContext) -> object:
    """x @ W (torch.matmul, operator.matmul, aten.mm/matmul) and addmm(b, x, W) with W a 2-d
    parameter stored (in, out), as in Hugging Face's Conv1D; anything else is a product of
    signals (`pooling.matmul`)."""
    addmm = "addmm" in getattr(ctx.node.target, "__name__", str(ctx.node.target))
    i = 1 if addmm else 0
    x_node, w_node = ctx.raw_args[i], ctx.raw_args[i + 1]
    weight = _param(ctx, w_node)
    if weight is None or weight.dim() != 2 or not ctx.is_signal(x_node):
        return matmul(ctx)
    bias = _param(ctx, ctx.raw_args[0]) if addmm else None
    return weighted(ctx, _param_name(w_node), weight, bias, ctx.args[i], transposed=True,
                    shape=tuple(ctx.shape(x_node)[1:]))


def table_rows(ctx: MapContext, w: torch.Tensor, ids: object) -> Moments:
    """An embedding's output: for ids the model computes itself (positions, token types: not
    derived from its inputs), the rows they pick, element by element; for ids from the inputs,
    every token equally likely: the statistics of the table's entries per column."""
    w = w.detach().double().cpu()
    if isinstance(ids, fx.Node) and not ctx.from_inputs(ids):
        value = ctx.value(ids)
        if isinstance(value, torch.Tensor):
            rows = w[value.long()]
            found = fixed(rows, ctx.shape(ctx.raw_args[0])[0] if len(ctx.out_shape) ==
                          rows.dim() else 0)
            if found is not None:
                return found.with_(channels=(-1,))
    return Moments(w.mean(0), w.var(0, unbiased=False), 0.0, (-1,))


def embedding_module(ctx: MapContext) -> Moments:
    m = ctx.module
    w = ctx.weights.embedding(ctx.name, m.weight, m.padding_idx)
    return table_rows(ctx, w, ctx.raw_args[0])


def embedding_function(ctx: MapContext) -> object:
    """F.embedding(ids, weight) / aten.embedding(weight, ids) with the weight a parameter."""
    aten = isinstance(ctx.node.target, torch._ops.OpOverload)
    w_node = ctx.raw_args[0 if aten else 1]
    weight = _param(ctx, w_node)
    if weight is None:
        return NotImplemented
    w = ctx.weights.embedding(_param_name(w_node), weight, None)
    return table_rows(ctx, w, ctx.raw_args[1 if aten else 0])


def _register(targets: tuple, fn: Callable[[MapContext], object]) -> None:
    for t in targets:
        register_moment_map(t, fn, per_channel=True)


_register((nn.Linear,), linear_module)
_register((nn.Conv1d, nn.Conv2d, nn.Conv3d), conv_module)
_register((nn.Embedding,), embedding_module)
_register((torch.nn.functional.linear,), linear_function)
_register((torch.nn.functional.conv1d, torch.nn.functional.conv2d,
           torch.nn.functional.conv3d), conv_function)
_register((torch.matmul, torch.mm, operator.matmul, "matmul", "mm", torch.addmm),
          matmul_function)
_register((torch.nn.functional.embedding,), embedding_function)
