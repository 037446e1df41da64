"""Moment maps for AutoInit: how each operation changes the (mean, variance) of the signal.

Bingham & Miikkulainen, "AutoInit: Analytic Signal-Preserving Weight Initialization for Neural
Networks", AAAI 2023 (arXiv 2109.08958); formulas from the paper, written from scratch.

A tensor's statistics are a `Moments(mean, var, shared)`: the mean and variance of its elements,
and `shared`, the part of `var` common to all positions (pixels, tokens) of one (sample,
channel). The paper tracks (mean, var) only; `shared` is initlab's addition, so that averaging
over positions (global average pooling) is predicted right: a mean over k positions has variance
`shared + (var - shared) / k`, where the paper's i.i.d. Monte Carlo gives `var / k`, which is far
too small for real feature maps (the channel offsets a nonzero-mean input causes never average
out). Every map takes a `MapContext` and returns `Moments` (or a tuple of them, or None for a
non-tensor value).

Per channel: a weighted layer's output units differ (each has its own mean `mu * sum_i w_ji`
and gain), and a concatenation joins channels of different scales. Pooled into one (mean, var)
those differences are lost, yet a ReLU turns them into channel offsets (a channel of variance v
has mean sqrt(v / 2 pi) after it) that grow through a DenseNet. So Moments may carry one entry
per channel: tensors of shape (S, C), `axis` the channel dim of the real tensor. Maps in
`CHANNEL_MAPS` take them; every other map (and every user map) gets the channels pooled
(`collapse`: the spread of the channel means goes to `shared`, as before). Feature maps also
carry `rho`, each channel's correlation between nearby positions (`autoinit_spatial.py`).

The maps themselves: `autoinit_ops.py` (elementwise functions, arithmetic, concatenation, shape
operations), `autoinit_layers.py` (weighted layers, normalization, dropout) and
`autoinit_pooling.py` (pooling, softmax, attention, padding).

User maps: `register_moment_map(MyModule, fn)`, `register_moment_map(my_function, fn)`,
`register_moment_map("method_name", fn)`, or `register_elementwise(fn_or_module_type)`
(`autoinit_ops.py`) for any elementwise function (moments by Gauss-Hermite quadrature).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import fx, nn

from . import autoinit_shape as shapes


@dataclass(frozen=True)
class Moments:
    """Statistics of a tensor, per sample: float64 tensors of shape (S,) (or 0-dim, shared by
    all samples); with `axis` set, of shape (S, C) (or (1, C)), one entry per channel, `axis`
    the channel dim of the tensor. `pooled()` gives the (mean, variance) of all the elements."""
    mean: torch.Tensor
    var: torch.Tensor
    shared: torch.Tensor   # part of var constant across positions of one (sample, channel)
    axis: Optional[int] = None
    rho: Optional[torch.Tensor] = None  # spatial correlation per channel (autoinit_spatial)
    shape: Optional[torch.Tensor] = None  # distribution per channel, None normal (autoinit_shape)

    @property
    def second(self) -> torch.Tensor:
        return self.var + self.mean ** 2

    @property
    def local(self) -> torch.Tensor:
        return (self.var - self.shared).clamp_min(0.0)

    @property
    def channels(self) -> int:
        return self.mean.shape[-1] if self.axis is not None else 1

    def pooled(self) -> tuple[float, float]:
        mean = float(self.mean.mean())
        return mean, max(float(self.second.mean()) - mean ** 2, 0.0)

    def is_constant(self) -> bool:
        return self.var.numel() == 1 and float(self.var.max()) == 0.0

    def like(self, mean: "Scalar", var: "Scalar", shared: "Scalar",
             keep_rho: bool = True, shape: Optional[torch.Tensor] = None) -> "Moments":
        """New statistics with this one's channel layout (for maps that act per element) and,
        unless told otherwise, its spatial correlation; normal unless given a `shape`."""
        y = replace(moments(mean, var, shared, self.axis), shape=shape)
        return replace(y, rho=self.rho) if keep_rho and y.axis is not None else y

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, local, shared) per channel, averaged over samples: (C,) each."""
        stats = (self.mean, self.local, self.shared)
        if self.axis is None:
            return tuple(t.mean().reshape(1) for t in stats)
        return tuple(t.reshape(-1, t.shape[-1]).mean(0) for t in stats)

    def collapse(self) -> "Moments":
        """The channels pooled: a mixture of equal weights (mean spread -> shared)."""
        if self.axis is None:
            return self
        mean = self.mean.mean(-1)
        shared = (self.shared + self.mean ** 2).mean(-1) - mean ** 2
        y = moments(mean, self.second.mean(-1) - mean ** 2, shared)
        if self.shape is None:
            return y
        c_mean, c_local, c_shared = self.channel_stats()
        return replace(y, shape=shapes.mixed(self.shape, c_mean, (c_local + c_shared).sqrt()))

    def sd(self) -> torch.Tensor:
        """Standard deviation per channel, averaged over samples: (C,)."""
        _, local, shared = self.channel_stats()
        return (local + shared).sqrt()

    def per_channel(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, var, shared) with a trailing channel dim (size 1 without channels)."""
        if self.axis is not None:
            return self.mean, self.var, self.shared
        return tuple(t.unsqueeze(-1) if t.dim() else t for t in (self.mean, self.var, self.shared))


Scalar = Union[float, torch.Tensor]


def moments(mean: Scalar, var: Scalar, shared: Scalar = 0.0,
            axis: Optional[int] = None) -> Moments:
    """Moments with round-off clipped: var >= 0 and 0 <= shared <= var; the three broadcast."""
    def t(v: Scalar) -> torch.Tensor:
        return torch.as_tensor(v, dtype=torch.float64)
    mean_t, var_t, shared_t = torch.broadcast_tensors(t(mean), t(var).clamp_min(0.0),
                                                      t(shared).clamp_min(0.0))
    if axis is not None and mean_t.dim() == 0:
        axis = None
    return Moments(mean_t, var_t, torch.minimum(shared_t, var_t), axis)


def align(a: Moments, b: Moments) -> Optional[tuple[tuple, tuple, Optional[int]]]:
    """Two operands' (mean, var, shared), broadcastable channel by channel, and the axis; None
    when their channels do not match (the caller collapses both)."""
    if a.axis is None and b.axis is None:
        return (a.mean, a.var, a.shared), (b.mean, b.var, b.shared), None
    if a.axis is not None and b.axis is not None and (a.axis, a.channels) != (b.axis, b.channels):
        return None
    return a.per_channel(), b.per_channel(), a.axis if a.axis is not None else b.axis


#: Maps that accept per-channel Moments; every other map gets them collapsed first.
CHANNEL_MAPS: set = set()


MomentMap = Callable[["MapContext"], Any]


@dataclass
class MapContext:
    """What a map sees of one graph node.

    `args`/`kwargs` are the node's arguments with every input node replaced by its Moments (None
    for non-tensor values); `raw_args` keeps the fx nodes. `shape(a)` gives an fx node's output
    shape; `out_shape` the node's own. `layers` does the weight work for weighted layers.
    """
    node: fx.Node
    module: Optional[nn.Module]
    args: tuple
    kwargs: dict
    shapes: dict[str, Any]
    layers: Any                        # autoinit's _Layers: values, draws, history
    quadrature_points: int
    mc_samples: int
    generator: torch.Generator

    @property
    def raw_args(self) -> tuple:
        return self.node.args

    @property
    def out_shape(self) -> Any:
        return self.shapes.get(self.node.name)

    def shape(self, a: Any) -> Any:
        return self.shapes.get(a.name) if isinstance(a, fx.Node) else None

    def tensor_inputs(self) -> list[Moments]:
        flat: list[Any] = []
        fx.node.map_aggregate((self.args, self.kwargs), flat.append)
        return [m for m in flat if isinstance(m, Moments)]

    def first(self) -> Moments:
        found = self.tensor_inputs()
        if not found:
            raise ValueError("this operation has no input with known statistics")
        return found[0]

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)

    def evaluate(self, z: torch.Tensor) -> torch.Tensor:
        """Run this node's operation with its (first) tensor input replaced by `z` (float64)."""
        idx = next(i for i, a in enumerate(self.raw_args) if isinstance(a, fx.Node))
        if any(isinstance(a, fx.Node) for a in list(self.raw_args[idx + 1:]) +
               list(self.node.kwargs.values())):
            raise TypeError("not an elementwise function of one tensor")
        rest = list(self.raw_args)
        if self.module is not None:
            p = next(self.module.parameters(), None)
            dtype = p.dtype if p is not None and p.is_floating_point() else torch.float64
            return self.call(z.to(dtype)).double()
        rest[idx] = z
        return self.call(*rest, **self.node.kwargs).double()

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Run this node's operation (module, Tensor method or function) on these arguments."""
        if self.module is not None:
            return self.module(*args, **kwargs)
        if self.node.op == "call_method":
            return getattr(args[0], str(self.node.target))(*args[1:], **kwargs)
        return self.node.target(*args, **kwargs)

    def normal(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, dtype=torch.float64)


# -- registry -------------------------------------------------------------------------------------
MODULE_MAPS: dict[type, MomentMap] = {}
FUNCTION_MAPS: dict[Any, MomentMap] = {}
METHOD_MAPS: dict[str, MomentMap] = {}


def register_moment_map(target: Union[type, str, Callable], fn: MomentMap) -> None:
    """Use `fn(ctx) -> Moments` for a module type, a Tensor method name, or a function.

    A registered module type is also kept whole when tracing (a leaf), so a block whose forward
    cannot be traced can be given a map. Later registrations replace earlier ones.
    """
    if isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise TypeError(f"register_moment_map: {target.__name__} is not an nn.Module type")
        MODULE_MAPS[target] = fn
    elif isinstance(target, str):
        METHOD_MAPS[target] = fn
    elif callable(target):
        FUNCTION_MAPS[target] = fn
    else:
        raise TypeError(f"register_moment_map: cannot register a map for {target!r}; pass a "
                        "module type, a Tensor method name or a function")


def find_map(node: fx.Node, module: Optional[nn.Module]) -> Optional[MomentMap]:
    if node.op == "call_module":
        for cls in type(module).__mro__:
            if cls in MODULE_MAPS:
                return MODULE_MAPS[cls]
        return None
    if node.op == "call_method":
        return METHOD_MAPS.get(str(node.target))
    try:
        return FUNCTION_MAPS.get(node.target)
    except TypeError:  # an unhashable callable
        return None


# -- numerics -------------------------------------------------------------------------------------
SHARED_POINTS = 24  # per dim of the 2-d rule for `shared` (quadrature); 48 took 3x as long


@lru_cache(maxsize=8)
def _hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of the n-point Gauss-Hermite rule for E f(Z), Z ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.from_numpy(x), torch.from_numpy(w / math.sqrt(2 * math.pi))


def quadrature(f: Callable[[torch.Tensor], torch.Tensor], x: Moments, points: int) -> Moments:
    """Moments of f(X), X ~ N(x.mean, x.var), per sample: Gauss-Hermite in one dimension for
    (mean, var), corrected for x's shape when it is not normal; for `shared`, X = mean + S + L
    with S ~ N(0, shared), L ~ N(0, local), and shared(f(X)) = Var_S E_L[f(X) | S], by a
    product rule over (S, L)."""
    def apply(z: torch.Tensor) -> torch.Tensor:  # f on a flat float64 tensor, shape kept
        return f(z.reshape(-1)).reshape(z.shape)
    mu, var = x.mean.reshape(-1, 1), x.var.reshape(-1, 1)          # (S, 1)
    z, w = _hermite(points)
    y = apply(mu + var.sqrt() * z)                                   # (S, points)
    mean = (w * y).sum(-1)
    second = (w * y * y).sum(-1)
    if x.shape is not None:  # not normal: corrected by the particles (autoinit_shape)
        rows = x.shape.shape[0]
        dm, ds = shapes.correction(apply, x.shape, mu.reshape(-1, rows), var.reshape(-1, rows))
        mean, second = mean + dm.reshape(-1), second + ds.reshape(-1)
    out_var = second - mean ** 2
    shape = torch.broadcast_shapes(x.mean.shape, x.var.shape)
    if float((x.shared / x.var.clamp_min(1e-300)).max()) <= 1e-12:   # none (round-off aside)
        return x.like(mean.reshape(shape), out_var.reshape(shape), 0.0)
    z2, w2 = _hermite(min(points, SHARED_POINTS))
    s, loc = x.shared.reshape(-1, 1, 1), x.local.reshape(-1, 1, 1)
    shared = torch.empty(mu.shape[0], dtype=torch.float64)
    for i in range(0, mu.shape[0], 2048):                            # rows in chunks: (R, n, n)
        r = slice(i, i + 2048)
        grid = mu[r, :, None] + s[r].sqrt() * z2[:, None] + loc[r].sqrt() * z2[None, :]
        given_s = (apply(grid) * w2).sum(-1)                          # E[f | S = s_i], (R, n)
        shared[r] = (w2 * given_s ** 2).sum(-1) - (w2 * given_s).sum(-1) ** 2
    return x.like(mean.reshape(shape), out_var.reshape(shape), shared.reshape(shape))


def product(a: Moments, b: Moments) -> Moments:
    """x * y for independent x, y: E = mu_a mu_b, E[(xy)^2] = E x^2 E y^2 (channel by
    channel where both have the same channels)."""
    both = align(a, b)
    if both is None:
        return product(a.collapse(), b.collapse())
    (ma, va, sa), (mb, vb, sb), axis = both
    mean = ma * mb
    shared = ma ** 2 * sb + mb ** 2 * sa + sa * sb      # exactly 0 when neither has a shared part
    return moments(mean, (va + ma ** 2) * (vb + mb ** 2) - mean ** 2, shared, axis)


def mixture(parts: list[Moments], weights: list[float]) -> Moments:
    """The elements of several tensors pooled (concatenation): a mixture with these weights.
    The spread of the parts' means goes to `shared` (right for channel concatenation)."""
    total = sum(weights)
    w = [x / total for x in weights]
    mean = sum(wi * p.mean for wi, p in zip(w, parts))
    second = sum(wi * p.second for wi, p in zip(w, parts))
    shared = sum(wi * (p.shared + p.mean ** 2) for wi, p in zip(w, parts)) - mean ** 2
    return moments(mean, second - mean ** 2, shared)


def border(x: Moments, fraction: float, value: float = 0.0) -> Moments:
    """A tensor whose positions are a `fraction` of x's values and the rest `value` (padding).
    Unlike `mixture`, the difference of the means varies over positions, not channels: it is
    local. A (sample, channel)'s shared part is present at a `fraction` of the positions; a
    convolution's tap sums see it in that proportion, so `shared` scales by `fraction`."""
    if fraction >= 1.0:
        return x
    mean = fraction * x.mean + (1 - fraction) * value
    second = fraction * x.second + (1 - fraction) * value ** 2
    return x.like(mean, second - mean ** 2, fraction * x.shared)


def constant(value: Any) -> Optional[Moments]:
    """Moments of a Python number or a tensor's values (None for anything else)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return moments(float(value), 0.0)
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 0:
        v = value.detach().double().cpu()
        if v.numel() == 1:
            return moments(v.reshape(()), 0.0)
        return moments(v.mean(), v.var(unbiased=False))
    return None
