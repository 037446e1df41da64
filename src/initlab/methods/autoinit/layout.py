"""Operations that only move, copy or select elements: reshape, view, permute, transpose,
flatten, squeeze, expand, indexing and slicing, split and chunk, nearest upsampling, dtype and
device casts, and their ATen operators.

Contract: such an operation does not change any element's statistics, only where it sits, so
the engine runs the operation itself on the statistics (expanded to the input's full shape) and
on a tensor of channel indices: the output's channel dims are those along which the index
varies, and each output element keeps the statistics (and the law) of the element it came from.
Flattening a feature map into features thus gives every feature its own channel's and
position's statistics. The batch dim is dim 0; an operation that merges it with other dims
(`view(B * T, d)`) gets the mixture of the statistics over the merged dim.
"""
from __future__ import annotations

import operator
from typing import Any, Optional

import torch
from torch import fx, nn

from .context import MapContext
from .elementwise import channel_law
from .registry import register_moment_map
from .statistics import Moments


def _signal(ctx: MapContext) -> Optional[fx.Node]:
    return next((a for a in ctx.node.all_input_nodes if ctx.is_signal(a)), None)


def follow(ctx: MapContext) -> Any:
    """The statistics of a layout operation's output(s) (see the module docstring)."""
    if ctx.node.target is operator.getitem and isinstance(ctx.args[0], (tuple, list)):
        return ctx.args[0][ctx.value(ctx.raw_args[1])]      # one result of a tuple
    node = _signal(ctx)
    if node is None:
        return None
    x = ctx.run_moments(node)
    shape = ctx.shape(node)
    if not isinstance(x, Moments) or not isinstance(shape, tuple) or not shape:
        return x
    if _casts(ctx):
        return x
    full = x.expand(tuple(shape[1:]))
    law_rows, ids = _channel_ids(x, tuple(shape[1:]))
    fields = [full.mean, full.var, full.shared, ids]
    outs = [_run(ctx, node, t.unsqueeze(0).expand(shape).contiguous()) for t in fields]
    batch = shape[0]
    if isinstance(outs[0], (tuple, list)):
        return tuple(_moments(x, batch, law_rows, *parts) for parts in zip(*outs))
    return _moments(x, batch, law_rows, *outs)


def _channel_ids(x: Moments, shape: tuple[int, ...]) -> tuple[Optional[torch.Tensor],
                                                             torch.Tensor]:
    """The law as rows (one per channel) and each element's row index, (shape) float64;
    without a law, each element's channel index."""
    nd = len(shape)
    sizes = [shape[d] if d - nd in x.channels else 1 for d in range(nd)]
    n = 1
    for s in sizes:
        n *= s
    ids = torch.arange(n, dtype=torch.float64).reshape(sizes).expand(shape)
    if x.law is None:
        return None, ids
    law = x.law.reshape((1,) * (nd + 1 - x.law.dim()) + tuple(x.law.shape))
    rows = law.expand(*sizes, -1).reshape(n, -1)
    return rows, ids


def _run(ctx: MapContext, node: fx.Node, t: torch.Tensor) -> Any:
    if ctx.module is not None:
        return ctx.call(t)
    args, kwargs = ctx.substituted({node: t})
    return ctx.call(*args, **kwargs)


def _casts(ctx: MapContext) -> bool:
    """A dtype or device cast: the statistics stay as they are."""
    name = str(getattr(ctx.node.target, "__name__", ctx.node.target))
    return name.split(".")[0] in ("to", "type_as", "float", "double", "half", "bfloat16",
                                  "_to_copy", "type")


def _moments(x: Moments, batch: int, law_rows: Optional[torch.Tensor], mean: Any, var: Any,
             shared: Any, ids: Any) -> Optional[Moments]:
    if not isinstance(mean, torch.Tensor):
        return None
    if mean.dim() == 0:
        return Moments(mean, var, shared, (), None, x.scales, x.sample_wide)
    if mean.shape[0] == batch:
        mean, var, shared, ids = (t[0] for t in (mean, var, shared, ids))
    else:              # batch merged into dim 0: a mixture over it (means' spread to the variance)
        m = mean.mean(0)
        var, shared = (var + mean ** 2).mean(0) - m ** 2, shared.mean(0)
        mean, ids = m, ids[0]
    nd = ids.dim()
    channels = tuple(d - nd for d in range(nd) if not _flat(ids, d))
    law = None
    if law_rows is not None:
        index = ids
        for d in range(nd):
            if d - nd not in channels:
                index = index.narrow(d, 0, 1)
        law = law_rows[index.round().long()]
    return Moments(mean, var, shared, channels, law, x.scales, x.sample_wide).compact()


def _flat(t: torch.Tensor, d: int) -> bool:
    return bool((t == t.narrow(d, 0, 1)).all())


def pad(ctx: MapContext) -> Any:
    """F.pad / constant-padding modules: the padding's elements are the fill value (variance
    0); reflect, replicate and circular padding copy elements (a layout operation)."""
    m = ctx.module
    mode = "constant" if m is None or isinstance(m, nn.modules.padding._ConstantPadNd) else "copy"
    if m is None:
        mode = ctx.value(ctx.raw_arg(2, "mode", "constant")) or "constant"
    if mode != "constant":
        return follow(ctx)
    value = float(getattr(m, "value", 0.0) if m is not None else
                  ctx.value(ctx.raw_arg(3, "value", 0.0)) or 0.0)
    node = _signal(ctx)
    x = ctx.run_moments(node)
    shape = ctx.shape(node)
    if not isinstance(x, Moments):
        return None
    widths = m.padding if m is not None else ctx.value(ctx.raw_arg(1, "pad"))
    full = x.expand(tuple(shape[1:]))

    def padded(t: torch.Tensor, fill: float) -> torch.Tensor:
        return torch.nn.functional.pad(t.unsqueeze(0), list(widths), value=fill)[0]
    law = None
    if x.law is not None:
        law = channel_law(x)
    nd = len(shape) - 1
    grown = {nd - 1 - i // 2 for i, w in enumerate(widths) if w}     # per-sample dims padded
    channels = tuple(c for c in x.channels if c + nd not in grown)
    if law is not None and any(c + nd in grown for c in x.channels):
        law = None                           # new channels without a law: pooled shape lost
    return Moments(padded(full.mean, value), padded(full.var, 0.0), padded(full.shared, 0.0),
                   channels + tuple(c for c in x.channels if c + nd in grown), law,
                   x.scales, x.sample_wide).compact()


LAYOUT = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle,
    operator.getitem, torch.flatten, torch.reshape, torch.permute, torch.transpose,
    torch.squeeze, torch.unsqueeze, torch.roll, torch.flip, torch.clone, torch.movedim,
    torch.narrow, torch.select, torch.chunk, torch.split, torch.unbind, torch.t,
    torch.nn.functional.pixel_shuffle,
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
    "unsqueeze", "expand", "expand_as", "repeat", "t", "clone", "detach", "to", "float",
    "double", "half", "type_as", "narrow", "roll", "flip", "view_as", "unflatten", "movedim",
    "select", "chunk", "split", "unbind", "repeat_interleave",
)
for _t in LAYOUT:
    register_moment_map(_t, None, layout=True, per_channel=True)
for _t in (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d,
           nn.ZeroPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
           nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d,
           nn.CircularPad2d, nn.CircularPad3d, torch.nn.functional.pad):
    register_moment_map(_t, pad, per_channel=True)
