"""Moment maps of elementwise functions: activations and any f(x) by quadrature.

Contract:
- `elementwise`: y = f(x) for one signal x (other inputs Python numbers or one-element
  tensors): E f(X) and E f(X)^2 element by element by Gauss-Hermite quadrature of the operation
  itself (the paper's rule), its law from x's particles (`laws.expectation`), per scale class.
- A chain of elementwise operations that all read one tensor r, such as
  `x * torch.sigmoid(x)` or GPT-2's tanh GELU written out, is one function of r: `fused`
  evaluates the whole chain on r's quadrature nodes (the engine decides when,
  `propagate.elementwise_root`). Arithmetic on independent operands: `arithmetic.py`.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .context import MapContext
from .laws import expectation, is_normal, standardize
from .registry import register_moment_map
from .scales import spread
from .statistics import Moments


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
                 position_elements(ctx))


def position_elements(ctx: MapContext) -> int:
    """Elements of one position of the output (the product of its channel dims), or of one
    sample where it has no channel dims or its scale classes are per sample: what a scale
    class averages over."""
    shape = ctx.out_shape
    if not (isinstance(shape, tuple) and shape and all(isinstance(s, int) for s in shape)):
        return 0
    signal = next((a for a in ctx.node.all_input_nodes if ctx.is_signal(a)), None)
    x = ctx.run_moments(signal) if signal is not None else None
    dims = shape[1:]
    if isinstance(x, Moments) and x.channels and not x.sample_wide and \
            len(dims) >= max(-c for c in x.channels):
        return math.prod(dims[c] for c in x.channels)
    return math.prod(dims)


LINEARIZED = 0.25   # classes spanning less (in log scale): 3 evaluations, else 5
RESOLUTION = 16     # elements whose (mean/sd, log var, shared/var) agree to 1/RESOLUTION: one


def _buckets(x: Moments) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Elements grouped by nearly equal statistics: the inverse index (N,), the groups'
    statistics (U, 3) and laws (U, K) (or None)."""
    shape = x.mean.shape
    mean, var, shared = (t.reshape(-1) for t in (x.mean, x.var, x.shared))
    sd = var.sqrt().clamp_min(1e-300)
    keys = [torch.round(mean / sd * RESOLUTION).clamp(-2**19, 2**19),
            torch.round(var.clamp_min(1e-300).log() * RESOLUTION).clamp(-2**19, 2**19),
            torch.round(shared / var.clamp_min(1e-300) * RESOLUTION)]
    packed = ((keys[0].long() + 2**19) * 2**20 + keys[1].long() + 2**19) * 1024 + \
        keys[2].long()
    rows = None
    if x.law is not None:
        law = x.law.reshape((1,) * (len(shape) + 1 - x.law.dim()) + tuple(x.law.shape))
        rows = law.reshape(-1, law.shape[-1])
        ids = torch.arange(rows.shape[0]).reshape(law.shape[:-1]).expand(shape).reshape(-1)
        _, first = torch.unique(packed, return_inverse=True)
        packed = first * rows.shape[0] + ids
    _, inverse = torch.unique(packed, return_inverse=True)
    u = int(inverse.max()) + 1 if inverse.numel() else 0
    counts = torch.bincount(inverse, minlength=u).double()
    stats = torch.zeros(u, 3, dtype=torch.float64).index_add_(
        0, inverse, torch.stack([mean, var, shared], 1)) / counts.unsqueeze(1)
    law_u = None
    if rows is not None:
        first = torch.full((u,), inverse.numel(), dtype=torch.long).scatter_reduce_(
            0, inverse, torch.arange(inverse.numel()), "amin")
        law_u = rows[ids[first]]
    return inverse, stats, law_u


def apply(f: Callable[[torch.Tensor], torch.Tensor], x: Moments, points: int,
          elements: int = 0) -> Moments:
    """The Moments of f(x) for an elementwise f, element by element (elements with nearly
    equal statistics computed once). With scale classes, per class (3 or 5 scales evaluated,
    interpolated in between); the classes' different means vary over positions (local). Given
    the `elements` of one position, each position's mean square of f(x) fluctuates around its
    class's beyond what its input's mean square did (the slope of f's second moment in the
    scale times that): this spreads the classes (`statistics.spread`)."""
    shape = x.mean.shape
    inverse, stats, law = _buckets(x)
    counts = torch.bincount(inverse, minlength=stats.shape[0]).double()
    mean, var, shared = stats[:, 0], stats[:, 1], stats[:, 2]
    g = x.scales
    if g is None or float((g - 1).abs().max()) < 1e-6:
        at = torch.ones(1, dtype=torch.float64)
    else:                                 # a few scales, interpolated in log g to the classes
        lo, hi = float(g.min().log()), float(g.max().log())
        at = torch.linspace(lo, hi, 3 if hi - lo < LINEARIZED else 5,
                            dtype=torch.float64).exp()
    results = []
    for gk in at.tolist():
        r = gk ** 0.5
        results.append(expectation(f, mean * r, var * gk, shared * gk, law, points))
    m, s2, s4, sh = (torch.stack([res[i] for res in results]) for i in range(4))   # (A, U)
    fq = results[len(results) // 2][4]
    slope = 1.0 if at.numel() == 1 else float(
        ((s2[-1] * counts).sum() / (s2[0] * counts).sum()).log() / (at[-1] / at[0]).log())
    if g is not None and at.numel() > 1:        # positive ones in log, so they stay positive
        m, sh = _interpolated(m, at, g), _interpolated(sh, at, g).clamp_min(0)
        s2, s4 = (_interpolated(t.clamp_min(1e-300).log(), at, g).exp() for t in (s2, s4))
    out_mean, out_second = m.mean(0), s2.mean(0)
    out_shared = sh.mean(0)         # the classes' different means: shared if per sample
    if x.sample_wide and m.shape[0] > 1 and len(x.channels) < len(shape):
        out_shared = out_shared + m.var(0, unbiased=False)
    per_class = (s2 * counts).sum(1)
    scales = None if g is None or not float(per_class.mean()) > 0 else \
        per_class / per_class.mean()
    # what a position's mean square of f(x) adds to the fluctuation its input's already has
    second_in = var + mean ** 2
    noise = max(0.0, _noise(out_second, s4.mean(0), counts, elements) - slope ** 2 *
                _noise(second_in, second_in ** 2 + 2 * var ** 2 + 4 * mean ** 2 * var, counts,
                       elements))
    out_law = standardize(fq)
    out_law = None if is_normal(out_law) else out_law[inverse].reshape(*shape, -1)

    def back(t: torch.Tensor) -> torch.Tensor:
        return t[inverse].reshape(shape)
    y = Moments(back(out_mean), back(out_second - out_mean ** 2), back(out_shared), x.channels,
                out_law, spread(scales, noise), x.sample_wide)
    return y.with_(law=channel_law(y)).compact()


def _interpolated(t: torch.Tensor, at: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Values at the scales `at` (A, U), interpolated (Lagrange, in log scale) to g (G, U)."""
    u, v = at.log(), g.log()
    out = torch.zeros(g.numel(), t.shape[1], dtype=torch.float64)
    for i in range(u.numel()):
        basis = torch.ones_like(v)
        for j in range(u.numel()):
            if j != i:
                basis = basis * (v - u[j]) / (u[i] - u[j])
        out = out + basis.unsqueeze(1) * t[i]
    return out


def _noise(second: torch.Tensor, fourth: torch.Tensor, counts: torch.Tensor,
           elements: int) -> float:
    """Relative variance of a sample's mean of f^2 over `elements` independent units (the
    units' different means are the same in every sample: not noise)."""
    total = float((second * counts).sum())
    if elements <= 0 or not total > 0:
        return 0.0
    n = float(counts.sum())
    var = float(((fourth - second ** 2).clamp_min(0) * counts).sum()) / n
    return var / (elements * (total / n) ** 2)


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
    return apply(f, _moments_of(ctx, root), ctx.quadrature_points, position_elements(ctx))


# -- independent operands -------------------------------------------------------------------------
def channel_law(x: Moments) -> Optional[torch.Tensor]:
    """x's law with positions averaged out (quantile by quantile): one per channel."""
    if x.law is None:
        return None
    law = x.law
    for d in range(law.dim() - 1):
        if law.shape[d] > 1 and d - (law.dim() - 1) not in x.channels:
            law = law.mean(d, keepdim=True)
    return standardize(law)


def register_elementwise(*targets: Any) -> None:
    """Declare elementwise operations (module types, functions, Tensor method names): their
    moments come from Gauss-Hermite quadrature of the operation itself."""
    for t in targets:
        register_moment_map(t, elementwise, per_channel=True, elementwise=True)


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
