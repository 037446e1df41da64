"""Operations that only move, copy or select elements: reshape, view, permute, transpose,
flatten, squeeze, expand, indexing and slicing, split and chunk, nearest upsampling, dtype and
device casts, and their ATen operators.

Contract: such an operation does not change any element's statistics, only where it sits. The
engine follows the channels by running the operation itself on a tensor holding each element's
channel index (and on one holding the profile): the output's channel dims are the dims along
which the index varies, its channels those indices. Flattening a feature map into features
(channels x positions) thus gives every feature its own channel's statistics, and the profile
over positions is folded into them. The batch dim is taken to stay dim 0.
"""
from __future__ import annotations

import operator
from typing import Any, Optional

import torch
from torch import fx, nn

from .context import MapContext
from .moments import Moments
from .registry import register_moment_map


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
    if not isinstance(x, Moments) or not isinstance(shape, tuple):
        return x
    ids = _channel_ids(x, shape)
    prof = _profile_field(x, shape)
    out_ids, out_prof = (_run(ctx, node, t) for t in (ids, prof))
    if isinstance(out_ids, (tuple, list)):
        return tuple(_moments(x, a, b) for a, b in zip(out_ids, out_prof))
    return _moments(x, out_ids, out_prof)


def _channel_ids(x: Moments, shape: tuple[int, ...]) -> torch.Tensor:
    """(shape) float64: each element's channel index."""
    sizes = [1] * len(shape)
    for a in x.axes:
        sizes[a] = shape[a]
    ids = torch.arange(x.channels, dtype=torch.float64).reshape(sizes)
    return ids.expand(shape).contiguous()


def _profile_field(x: Moments, shape: tuple[int, ...]) -> torch.Tensor:
    if x.profile is None:
        return torch.ones(shape, dtype=torch.float64)
    return x.profile.reshape(1, *x.profile.shape).expand(shape).contiguous()


def _run(ctx: MapContext, node: fx.Node, t: torch.Tensor) -> Any:
    if ctx.module is not None:
        return ctx.call(t)
    args, kwargs = ctx.substituted({node: t})
    if _casts(ctx):
        return t
    return ctx.call(*args, **kwargs)


def _casts(ctx: MapContext) -> bool:
    """A dtype or device cast: kept as is (the indices stay float64)."""
    name = str(getattr(ctx.node.target, "__name__", ctx.node.target))
    return name.split(".")[0] in ("to", "type_as", "float", "double", "half", "bfloat16",
                                  "_to_copy", "type")


def _moments(x: Moments, ids: Any, prof: Any) -> Optional[Moments]:
    if not isinstance(ids, torch.Tensor) or ids.dim() == 0:
        return None if not isinstance(ids, torch.Tensor) else x.take(
            ids.reshape(1).round().long(), ())
    axes = tuple(d for d in range(1, ids.dim()) if not _constant_along(ids, d))
    index = ids[0]
    for d in sorted(set(range(1, ids.dim())) - set(axes), reverse=True):
        index = index.narrow(d - 1, 0, 1)
    y = x.take(index.round().long(), axes)
    p = prof[0]
    if bool((p == 1).all()):
        return y.with_(profile=None)
    if all(_constant_along(p.unsqueeze(0), d) for d in axes):
        for d in axes:
            p = p.narrow(d - 1, 0, 1)
        return y.with_(profile=p)
    return _fold(y, p, axes)


def _constant_along(t: torch.Tensor, d: int) -> bool:
    return bool((t == t.narrow(d, 0, 1)).all())


def _fold(y: Moments, p: torch.Tensor, axes: tuple[int, ...]) -> Moments:
    """Channels that now include positions: each gets its positions' profile as a factor on
    its local variance; what varies over the remaining positions stays the profile."""
    dims = [d - 1 for d in axes]
    rest = [d for d in range(p.dim()) if d not in dims]
    g = p.mean(dim=rest, keepdim=True) if rest else p
    factor = g.reshape(-1)
    if factor.numel() != y.channels:
        return y.with_(profile=None)
    local = y.local * factor
    profile = p / g
    profile = None if bool((profile - 1).abs().max() < 1e-12) else profile
    for d in dims:
        if profile is not None:
            profile = profile.mean(d, keepdim=True)
    return y.with_(var=local + y.shared, profile=profile)


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
