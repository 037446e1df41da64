"""Moment maps of arithmetic on independent operands and of concatenation.

Contract: `add`, `sub`, `mul`, `div`, `neg` for independent operands (one may be a constant;
operands that are functions of one tensor are fused before, `elementwise.fused`): means and
second moments combine exactly (products: E[(ab)^2] = E a^2 E b^2), element by element with
broadcasting; laws of sums by all pairs of particles; the scale classes of the same positions
combine in order. `cat`: the parts' statistics joined along the same dim.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Optional

import torch
from torch import fx

from .context import MapContext
from .elementwise import apply, channel_law, elementwise, position_elements
from .laws import is_normal, normal_particles, sum_law
from .registry import register_moment_map
from .scales import mixed_scales
from .statistics import Moments, constant


def _operand(ctx: MapContext, i: int, name: str) -> Optional[Moments]:
    a = ctx.arg(i, name)
    if isinstance(a, Moments) or a is None:
        return a
    return constant(a)


def _channel_sd(x: Moments, like: torch.Tensor) -> torch.Tensor:
    """x's standard deviation averaged over positions, shaped like a per-channel law minus K."""
    sd = x.var.sqrt()
    shape = like.shape[:-1]
    sd = sd.reshape((1,) * (len(shape) - sd.dim()) + tuple(sd.shape)) if sd.dim() < len(shape) \
        else sd
    for d in range(sd.dim()):
        if d < len(shape) and shape[d] == 1 and sd.shape[d] > 1:
            sd = sd.mean(d, keepdim=True)
    return sd


def total(a: Moments, b: Moments, alpha: float = 1.0) -> Moments:
    """a + alpha * b for independent a, b."""
    law = None
    if a.law is not None or b.law is not None:
        la, lb = channel_law(a), channel_law(b)
        ref = la if la is not None else lb
        lb = lb if lb is None or alpha >= 0 else -lb.flip(-1)
        law = sum_law(_channel_sd(a, ref), la, abs(alpha) * _channel_sd(b, ref), lb)
        law = None if is_normal(law) else law
    scales = mixed_scales([(a.scales, float(a.second.mean())),
                           (b.scales, alpha ** 2 * float(b.second.mean()))])
    return Moments(a.mean + alpha * b.mean, a.var + alpha ** 2 * b.var,
                   a.shared + alpha ** 2 * b.shared, tuple(set(a.channels) | set(b.channels)),
                   law, scales, a.sample_wide or b.sample_wide).compact()


def product(a: Moments, b: Moments) -> Moments:
    """a * b for independent a, b: E = mu_a mu_b, E[(ab)^2] = E a^2 E b^2."""
    mean = a.mean * b.mean
    shared = a.mean ** 2 * b.shared + b.mean ** 2 * a.shared + a.shared * b.shared
    scales = a.scales if b.scales is None else b.scales if a.scales is None else \
        a.scales * b.scales / (a.scales * b.scales).mean()
    return Moments(mean, a.second * b.second - mean ** 2, shared,
                   tuple(set(a.channels) | set(b.channels)), None, scales,
                   a.sample_wide or b.sample_wide).compact()


def _same(ctx: MapContext) -> bool:
    raw = ctx.raw_args
    return len(raw) > 1 and isinstance(raw[0], fx.Node) and raw[0] is raw[1]


def add(ctx: MapContext) -> Any:
    a, b = _operand(ctx, 0, "input"), _operand(ctx, 1, "other")
    alpha = float(ctx.value(ctx.node.kwargs.get("alpha", 1)))
    if a is None or b is None:
        return a or b
    if _same(ctx):
        return a.scaled(1 + alpha)
    return total(a, b, alpha)


def sub(ctx: MapContext) -> Any:
    a, b = _operand(ctx, 0, "input"), _operand(ctx, 1, "other")
    if _same(ctx):
        return Moments(0.0, 0.0)
    if a is None or b is None:
        return a or b
    return total(a, b, -float(ctx.value(ctx.node.kwargs.get("alpha", 1))))


def mul(ctx: MapContext) -> Any:
    a, b = _operand(ctx, 0, "input"), _operand(ctx, 1, "other")
    if _same(ctx):
        return apply(lambda z: z * z, a, ctx.quadrature_points, position_elements(ctx))
    if a is None or b is None:
        return a or b
    for x, c in ((a, b), (b, a)):
        if c.is_constant() and c.mean.numel() == 1:
            return x.scaled(float(c.mean))
    return product(a, b)


def div(ctx: MapContext) -> Any:
    a, b = _operand(ctx, 0, "input"), _operand(ctx, 1, "other")
    if isinstance(ctx.args[0], Moments) and b is not None and b.is_constant() and \
            b.mean.numel() == 1 and float(b.mean) != 0:
        return a.scaled(1 / float(b.mean))
    return elementwise(ctx)           # c / x: a function of x (x / y is NotImplemented)


def neg(ctx: MapContext) -> Any:
    return ctx.first().scaled(-1.0)


# -- concatenation --------------------------------------------------------------------------------
def cat(ctx: MapContext) -> Any:
    """torch.cat / torch.stack: the parts' statistics, expanded to their shapes, joined along
    the same dim (their channels too); a part without statistics (an integer tensor) as zeros."""
    nodes = ctx.raw_arg(0, "tensors")
    parts = [p if isinstance(p, Moments) else constant(p) for p in ctx.arg(0, "tensors")]
    if all(p is None for p in parts):
        return None
    stack = "stack" in getattr(ctx.node.target, "__name__", str(ctx.node.target))
    out = ctx.out_shape
    dim = int(ctx.value(ctx.raw_arg(1, "dim", 0))) % len(out)
    shapes = [tuple(ctx.shape(n)[1:]) if isinstance(n, fx.Node) else None for n in nodes]
    full = [(p or Moments(0.0, 0.0)).expand(s) for p, s in zip(parts, shapes)]
    d = dim - 1
    join = torch.stack if stack else torch.cat
    stats = [join([getattr(p, f) for p in full], d) for f in ("mean", "var", "shared")]
    nd = len(out) - 1
    channels = {c for p in full for c in p.channels}
    if stack:                           # a new dim at d: the dims before it count one more
        channels = {c if c + nd - 1 >= d else c - 1 for c in channels}
    law = None
    if not stack and any(p.law is not None for p in full):
        laws = [channel_law(p) if p.law is not None else None for p in full]
        ref = next(q for q in laws if q is not None)
        law = ref if (d - nd) not in channels else None
        if law is None:
            pieces = []
            for q, s in zip(laws, shapes):
                q = _normal_row(ref).reshape((1,) * nd + (-1,)) if q is None else q
                q = q.reshape((1,) * (nd + 1 - q.dim()) + tuple(q.shape))
                pieces.append(q.expand(*[s[i] if i == d else q.shape[i] for i in range(nd)], -1))
            law = torch.cat(pieces, d)
    scales = mixed_scales([(p.scales, float(p.second.mean()) * math.prod(s))
                           for p, s in zip(full, shapes)])
    return Moments(*stats, tuple(channels), law, scales,
                   any(p.sample_wide for p in full)).compact()


def _normal_row(ref: torch.Tensor) -> torch.Tensor:
    return normal_particles(ref.shape[-1])


for _t in (operator.add, torch.add, "add", operator.iadd, "add_"):
    register_moment_map(_t, add, per_channel=True, elementwise=True)
for _t in (operator.sub, torch.sub, "sub", operator.isub, "sub_", torch.rsub):
    register_moment_map(_t, sub, per_channel=True, elementwise=True)
for _t in (operator.mul, torch.mul, "mul", operator.imul, "mul_"):
    register_moment_map(_t, mul, per_channel=True, elementwise=True)
for _t in (operator.truediv, torch.div, "div", operator.itruediv, "div_"):
    register_moment_map(_t, div, per_channel=True, elementwise=True)
for _t in (operator.neg, torch.neg, "neg"):
    register_moment_map(_t, neg, per_channel=True, elementwise=True)
for _t in (torch.cat, torch.concat, torch.stack):
    register_moment_map(_t, cat, per_channel=True)
