"""Moment maps of elementwise operations: activations and any f(x) by quadrature, arithmetic on
independent tensors, concatenation.

Contract:
- `elementwise`: y = f(x) for one signal x (other inputs Python numbers or one-element
  tensors): E f(X) and E f(X)^2 per channel by Gauss-Hermite quadrature of the operation itself
  (the paper's rule), its law from x's particles (`moments.expectation`).
- A chain of elementwise operations that all read one tensor r, such as
  `x * torch.sigmoid(x)` or GPT-2's tanh GELU written out, is one function of r: `fused`
  evaluates the whole chain on r's quadrature nodes. Only operands with different roots are
  treated as independent.
- `add`, `sub`, `mul`, `div`, `neg` for independent operands (one may be a constant): means and
  second moments combine exactly (products: E[(ab)^2] = E a^2 E b^2); channel by channel where
  both have the same channels, else pooled.
- `cat`: along a channel dim the channels are joined; along a position dim each channel is a
  mixture of the parts by their sizes.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .context import MapContext
from .moments import Moments, constant, expectation, is_normal, mixed_scales, spread, sum_law
from .registry import register_moment_map


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, bool)) or v is None or \
        (isinstance(v, torch.Tensor) and v.numel() == 1)


def elementwise(ctx: MapContext) -> Any:
    """y = f(x) elementwise (see the module docstring); NotImplemented when another input is a
    tensor of many values (not a function of x alone)."""
    signals = [a for a in ctx.node.all_input_nodes if ctx.is_signal(a)]
    if len(signals) != 1 or not all(_scalar(ctx.value(a)) for a in ctx.node.all_input_nodes
                                    if a is not signals[0]):
        return NotImplemented
    return apply(ctx.evaluate, _moments_of(ctx, signals[0]), ctx.quadrature_points,
                 _per_sample(ctx))


def _per_sample(ctx: MapContext) -> int:
    shape = ctx.out_shape
    return math.prod(shape[1:]) if isinstance(shape, tuple) and shape and \
        all(isinstance(s, int) for s in shape) else 0


def apply(f: Callable[[torch.Tensor], torch.Tensor], x: Moments, points: int,
          elements: int = 0) -> Moments:
    """The Moments of f(x) for an elementwise f. With scale classes, class by class, all in one
    quadrature (a class's mean differs from the others' by a per-sample offset: shared over
    positions). Given the `elements` per sample, each sample's mean square of f(x) over them
    fluctuates around its class's, which spreads the classes (`moments.spread`)."""
    g = x.scales
    if g is None or float((g - 1).abs().max()) < 1e-3:
        mean, second, shared, law, fourth = expectation(f, x, points)
        return Moments(mean, second - mean ** 2, shared, x.axes,
                       None if is_normal(law) else law, x.profile,
                       spread(g, _noise(second, fourth, elements)))
    c, classes = x.channels, g.numel()
    rows = x.take(torch.arange(c).repeat(classes), x.axes)                # (G * C,)
    r = g.repeat_interleave(c)
    rows = rows.with_(mean=rows.mean * r.sqrt(), var=rows.var * r, shared=rows.shared * r)
    middle = slice((classes // 2) * c, (classes // 2 + 1) * c)
    mean, second, shared, law, fourth = expectation(f, rows, points, middle)
    mean, second, shared, fourth = (t.reshape(classes, c) for t in (mean, second, shared,
                                                                      fourth))
    m, s2 = mean.mean(0), second.mean(0)
    offsets = mean.var(0, unbiased=False) if float(x.shared.max()) > 0 or \
        x.profile is not None else 0.0                                     # per-sample offsets
    per_class = second.mean(1)
    scales = per_class / per_class.mean() if float(per_class.mean()) > 0 else None
    return Moments(m, s2 - m ** 2, shared.mean(0) + offsets, x.axes,
                   None if is_normal(law) else law, x.profile,
                   spread(scales, _noise(s2, fourth.mean(0), elements)))


def _noise(second: torch.Tensor, fourth: torch.Tensor, elements: int) -> float:
    """Relative variance of a sample's mean of f^2 over `elements` independent units (the
    units' different means are the same in every sample: not noise)."""
    if elements <= 0 or not float(second.mean()) > 0:
        return 0.0
    return float((fourth - second ** 2).clamp_min(0).mean()) / (
        elements * float(second.mean()) ** 2)


def _moments_of(ctx: MapContext, node: fx.Node) -> Moments:
    found = ctx.run_moments(node)
    if not isinstance(found, Moments):
        raise ValueError(f"no statistics for {node.name}")
    return found


def fused(ctx: MapContext, root: fx.Node) -> Moments:
    """This node as one elementwise function of `root` (every signal on the way an
    elementwise function of it): the chain evaluated on root's quadrature nodes."""
    gm = ctx.run.gm

    def f(z: torch.Tensor) -> torch.Tensor:
        memo: dict[fx.Node, Any] = {root: z}

        def value(n: fx.Node) -> Any:
            if n in memo:
                return memo[n]
            if not ctx.is_signal(n):
                return ctx.value(n)
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), value)
            if n.op == "call_module":
                out = gm.get_submodule(str(n.target))(*args, **kwargs)
            elif n.op == "call_method":
                out = getattr(args[0], str(n.target))(*args[1:], **kwargs)
            else:
                out = n.target(*args, **kwargs)
            memo[n] = out
            return out
        return value(ctx.node).double()
    return apply(f, _moments_of(ctx, root), ctx.quadrature_points, _per_sample(ctx))


# -- independent operands -------------------------------------------------------------------------
def _operand(ctx: MapContext, i: int, name: str) -> Optional[Moments]:
    a = ctx.arg(i, name)
    if isinstance(a, Moments) or a is None:
        return a
    return constant(a)


def _aligned(a: Moments, b: Moments) -> tuple[Moments, Moments]:
    """Both on the same channels: as they are if they match, one broadcast if it has one
    channel, else both pooled."""
    if a.axes == b.axes and a.channels == b.channels:
        return a, b
    if b.channels == 1 and not b.axes:
        return a, b.take(b.expand(a.channels), a.axes).with_(law=b.law)
    if a.channels == 1 and not a.axes:
        return a.take(a.expand(b.channels), b.axes).with_(law=a.law), b
    return a.collapse(), b.collapse()


def _profile(a: Moments, b: Moments) -> Optional[torch.Tensor]:
    """Profile of a sum: the parts' profiles weighted by their local variances."""
    if a.profile is None and b.profile is None:
        return None
    la, lb = float(a.local.mean()), float(b.local.mean())
    if la + lb <= 0:
        return None
    pa = a.profile if a.profile is not None else torch.ones(1, dtype=torch.float64)
    pb = b.profile if b.profile is not None else torch.ones(1, dtype=torch.float64)
    return (la * pa + lb * pb) / (la + lb)


def total(a: Moments, b: Moments, alpha: float = 1.0) -> Moments:
    """a + alpha * b for independent a, b."""
    a, b = _aligned(a, b)
    law = None
    if a.law is not None or b.law is not None:
        sb = abs(alpha) * b.var.sqrt()
        lb = b.law if alpha >= 0 or b.law is None else -b.law.flip(-1)
        law = sum_law(a.var.sqrt(), a.law, sb, lb)
        law = None if is_normal(law) else law
    scales = mixed_scales([(a.scales, float(a.second.mean())),
                           (b.scales, alpha ** 2 * float(b.second.mean()))])
    return Moments(a.mean + alpha * b.mean, a.var + alpha ** 2 * b.var,
                   a.shared + alpha ** 2 * b.shared, a.axes, law, _profile(a, b), scales)


def product(a: Moments, b: Moments) -> Moments:
    """a * b for independent a, b: E = mu_a mu_b, E[(ab)^2] = E a^2 E b^2."""
    a, b = _aligned(a, b)
    mean = a.mean * b.mean
    shared = a.mean ** 2 * b.shared + b.mean ** 2 * a.shared + a.shared * b.shared
    law = None
    if b.is_constant() and a.law is not None:
        law = a.law if float(b.mean.min()) >= 0 else None
    elif a.is_constant() and b.law is not None:
        law = b.law if float(a.mean.min()) >= 0 else None
    scales = a.scales if b.scales is None else b.scales if a.scales is None else \
        a.scales * b.scales / (a.scales * b.scales).mean()
    return Moments(mean, a.second * b.second - mean ** 2, shared, a.axes, law,
                   a.profile if b.is_constant() else b.profile if a.is_constant() else None,
                   scales)


def _same(ctx: MapContext) -> bool:
    raw = ctx.raw_args
    return len(raw) > 1 and isinstance(raw[0], fx.Node) and raw[0] is raw[1]


def add(ctx: MapContext) -> Any:
    a, b = _operand(ctx, 0, "input"), _operand(ctx, 1, "other")
    alpha = float(ctx.kwargs.get("alpha", 1))
    if a is None or b is None:
        return a or b
    if _same(ctx):
        return scaled(a, 1 + alpha)
    return total(a, b, alpha)


def sub(ctx: MapContext) -> Any:
    a, b = _operand(ctx, 0, "input"), _operand(ctx, 1, "other")
    if _same(ctx):
        return Moments(0.0, 0.0)
    if a is None or b is None:
        return a or b
    return total(a, b, -float(ctx.kwargs.get("alpha", 1)))


def scaled(x: Moments, c: float) -> Moments:
    law = x.law if c >= 0 or x.law is None else -x.law.flip(-1)
    return x.with_(mean=c * x.mean, var=c * c * x.var, shared=c * c * x.shared, law=law)


def mul(ctx: MapContext) -> Any:
    a, b = _operand(ctx, 0, "input"), _operand(ctx, 1, "other")
    if _same(ctx):
        return apply(lambda z: z * z, a, ctx.quadrature_points)
    if a is None or b is None:
        return a or b
    for x, c in ((a, b), (b, a)):
        if c.is_constant() and c.channels == 1:
            return scaled(x, float(c.mean))
    return product(a, b)


def div(ctx: MapContext) -> Any:
    a, b = _operand(ctx, 0, "input"), _operand(ctx, 1, "other")
    if isinstance(ctx.args[0], Moments) and b is not None and b.is_constant() and \
            b.channels == 1 and float(b.mean) != 0:
        return scaled(a, 1 / float(b.mean))
    return elementwise(ctx)           # c / x: a function of x (x / y is NotImplemented)


def neg(ctx: MapContext) -> Any:
    return scaled(ctx.first(), -1.0)


# -- concatenation --------------------------------------------------------------------------------
def cat(ctx: MapContext) -> Any:
    """torch.cat / torch.stack (see the module docstring)."""
    nodes = ctx.raw_arg(0, "tensors")
    parts = [p if isinstance(p, Moments) else constant(p) for p in ctx.arg(0, "tensors")]
    dim = int(ctx.value(ctx.raw_arg(1, "dim", 0)))
    out = ctx.out_shape
    stack = "stack" in getattr(ctx.node.target, "__name__", "")
    dim = dim % len(out)
    sizes = [1 if stack else ctx.shape(n)[dim] if isinstance(n, fx.Node) else 1 for n in nodes]
    known = [(p, s, n) for p, s, n in zip(parts, sizes, nodes) if p is not None]
    if not known:
        return None
    axes = {p.axes for p, _, _ in known}
    if not stack and len(axes) == 1 and dim in next(iter(axes)):
        return _joined(known, dim, ctx)
    return _mixture([(p, s) for p, s, _ in known], dim if stack else None)


def _joined(parts: list, dim: int, ctx: MapContext) -> Moments:
    """Channels of the parts joined along `dim`, one of their channel dims."""
    axes = parts[0][0].axes
    k = axes.index(dim)
    stats = []
    for field in ("mean", "var", "shared"):
        pieces = []
        for p, s, n in parts:
            sizes = [ctx.shape(n)[a] for a in axes]
            pieces.append(getattr(p, field).reshape(sizes))
        stats.append(torch.cat(pieces, k).reshape(-1))
    law = None
    if any(p.law is not None for p, _, _ in parts):
        laws = []
        for p, s, n in parts:
            q = p.particles()
            sizes = [ctx.shape(n)[a] for a in axes]
            laws.append(q.expand(p.channels, -1).reshape(*sizes, -1))
        law = torch.cat(laws, k).reshape(-1, laws[0].shape[-1])
    profiles = [p.profile for p, _, _ in parts]
    profile = profiles[0] if all(q is not None and q.shape == profiles[0].shape
                                 for q in profiles) else None
    scales = mixed_scales([(p.scales, float(p.second.sum())) for p, _, _ in parts])
    return Moments(*stats, axes, law, profile, scales)


def _mixture(parts: list[tuple[Moments, int]], new_dim: Optional[int]) -> Moments:
    """Each channel a mixture of the parts (equal channels) or everything pooled. The spread
    of the parts' means varies over positions: it is local, not shared."""
    if len({(p.axes, p.channels) for p, _ in parts}) != 1:
        parts = [(p.collapse(), s) for p, s in parts]
    w = torch.tensor([float(s) for _, s in parts], dtype=torch.float64)
    w = w / w.sum()
    mean = sum(wi * p.mean for wi, (p, _) in zip(w, parts))
    second = sum(wi * p.second for wi, (p, _) in zip(w, parts))
    shared = sum(wi * p.shared for wi, (p, _) in zip(w, parts))
    axes = parts[0][0].axes
    if new_dim is not None:
        axes = tuple(a + 1 if a >= new_dim else a for a in axes)
    scales = mixed_scales([(p.scales, float(wi) * float(p.second.mean()))
                           for wi, (p, _) in zip(w, parts)])
    return Moments(mean, second - mean ** 2, shared, axes, scales=scales)


ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus, F.softsign, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.logsigmoid, torch.exp, torch.sin, torch.cos, torch.abs,
    torch.square, torch.erf, torch.rsqrt, torch.sqrt, torch.log, operator.pow, torch.pow,
    operator.abs, torch.clamp, torch.clip,
    "relu", "tanh", "sigmoid", "exp", "abs", "square", "sin", "cos", "pow", "erf", "rsqrt",
    "sqrt", "log", "clamp", "clip",
)
for _t in ACTIVATIONS:
    register_moment_map(_t, elementwise, per_channel=True, elementwise=True)
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
