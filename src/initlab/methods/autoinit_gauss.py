"""AutoInit: the exact Gaussian covariance of small feature maps, for the centered rescale.

The per-channel statistics of `Moments` treat different channels, and positions beyond
`autoinit_spatial.RADIUS`, as uncorrelated, and every position of a channel alike. On small
maps this fails slowly but surely: near the borders the positions differ, and the channels of a
layer all read the same input, so their outputs are correlated. In a 30-layer plain CNN on
16x16 inputs the measured output variance climbs 40-50 % above the predicted one over the 8x8
and 4x4 stages (RESULTS.md). A Gaussian with the same mean and full covariance as the real
signal predicts the next layer's variance to within 0.2 % there (the signal is nearly
Gaussian; what is missing is second-order), so for every node whose map has at most
`covariance_limit` elements per sample, `Joint` carries the mean (D,) and the covariance with
itself and every other live node, (D, D'):

- linear operations (weighted layers with the drawn weights, sums, concatenation, reshapes,
  average pooling, means): y = A u + b on the stacked inputs u; A is applied by running the
  operation itself on a batch of columns, A v = op(v) - op(0);
- positively homogeneous elementwise f (ReLU, leaky ReLU): E[f(x_i) f(x_j)] =
  sum_n c_n(i) c_n(j) rho_ij^n (Mehler), c_n(i) the normalized Hermite coefficients of f under
  x_i's mean and variance; Cov(f(x), z) = diag(E f'(x)) Cov(x, z) for any other node z
  (Stein's lemma; E f' = c_1 / sd). Exact for a Gaussian x (a weighted layer's output, sums of
  such). For a sum with a rectified skip connection, relu(x + branch), which is far from
  Gaussian, the series gives the correlations and each channel's mean and variance are taken
  from the per-channel statistics, which follow the distribution's shape (`match`). Weighted
  layers hand their exact per-channel mean and variance back to those statistics;
- inverted dropout: the mask adds (E x^2) p / (1 - p) to the diagonal.

A node whose operation is not one of these has no covariance; the next node that needs it gets
one built from its `Moments` (channels independent, `rho` within the window). Off unless
`covariance_limit` > 0. Memory: D^2 float32 per live pair (256 MiB at D = 8192); time: about
2 * TERMS passes over D^2 per elementwise node and two runs of a layer on D columns.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .autoinit_gauss_math import _channels, _homogeneous, from_moments, hermite, mehler
from .autoinit_maps import MapContext, Moments, find_map
from .autoinit_ops import add, cat, div, elementwise, identity, mul, neg, sub
from .autoinit_pooling import pad

log = logging.getLogger(__name__)

_AVERAGES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
             nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, F.avg_pool1d, F.avg_pool2d,
             F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
             torch.mean, torch.sum, "mean", "sum")
_LINEAR_MAPS = {identity, add, sub, cat, neg, pad}    # affine in their tensor inputs
_SCALED_MAPS = {mul, div}                        # linear when one operand is a number


class Joint:
    """Mean and covariances of the live graph nodes (those with users still to come)."""

    def __init__(self, limit: int, points: int, estimates: dict[str, Any],
                 dtype: torch.dtype = torch.float32):
        self.limit, self.points, self.est, self.dtype = limit, points, estimates, dtype
        self.mean: dict[str, torch.Tensor] = {}          # node -> (D,)
        self.shape: dict[str, tuple] = {}                # node -> per-sample shape
        self.cov: dict[str, dict[str, torch.Tensor]] = {}  # cov[a][b] = Cov(a, b), (D_a, D_b)
        self.left: dict[str, int] = {}                   # users not yet processed
        self.normal: dict[str, bool] = {}                # node -> is (close to) Gaussian

    # -- bookkeeping ------------------------------------------------------------------------------
    def get(self, a: str, b: str) -> torch.Tensor:
        return self.cov[a][b] if b in self.cov[a] else self.cov[b][a].T

    def _store(self, node: fx.Node, mean: torch.Tensor, shape: tuple,
               cross: dict[str, torch.Tensor], own: torch.Tensor, normal: bool) -> None:
        name = node.name
        self.normal[name] = normal
        self.mean[name], self.shape[name] = mean, shape
        self.cov[name] = {**cross, name: own}
        self.left[name] = len(node.users)

    def done(self, node: fx.Node) -> None:
        """`node` is processed: drop the inputs it was the last user of."""
        for n in node.all_input_nodes:
            if n.name in self.left:
                self.left[n.name] -= 1
                if self.left[n.name] <= 0:
                    self._drop(n.name)
        if node.name in self.left and self.left[node.name] <= 0:
            self._drop(node.name)

    def _drop(self, name: str) -> None:
        for d in (self.mean, self.shape, self.cov, self.left, self.normal):
            d.pop(name, None)
        for row in self.cov.values():
            row.pop(name, None)

    def scale(self, name: str, f: float) -> None:
        """The weights of node `name` were multiplied by sqrt(f) (its bias is 0)."""
        if name in self.mean:
            self.mean[name] = self.mean[name] * math.sqrt(f)
            self._scale_covariances(name, torch.tensor(math.sqrt(f), dtype=self.dtype))

    def _scale_covariances(self, name: str, s: torch.Tensor) -> None:
        """Node `name` becomes s * (itself - its mean) + ...: its covariances with every node
        scale by s on its side (`s` a scalar or one factor per element, (D,))."""
        col = s.reshape(-1, 1) if s.dim() else s
        for other, cv in self.cov[name].items():
            cv = cv * col
            self.cov[name][other] = cv * s.reshape(1, -1) if other == name else cv
        for other, row in self.cov.items():
            if other != name and name in row:
                row[name] = row[name] * s.reshape(1, -1)

    def pooled(self, name: str) -> tuple[float, float]:
        """Mean and variance over all elements and samples of node `name`."""
        mu = self.mean[name]
        return float(mu.mean()), float(self.cov[name][name].diagonal().mean() +
                                       mu.var(unbiased=False))

    def ready(self, node: Any, ctx: MapContext) -> bool:
        """Whether `node` has a covariance, building one from its Moments if it is small."""
        if not isinstance(node, fx.Node):
            return False
        if node.name in self.mean:
            return True
        shape, m = ctx.shape(node), self.est.get(node.name)
        if not (isinstance(shape, tuple) and len(shape) >= 2 and isinstance(m, Moments)
                and all(isinstance(s, int) for s in shape)) or math.prod(shape[1:]) > self.limit:
            return False
        white = m.axis is None and float(m.shared.max()) == 0 and m.rho is None
        if len(shape) > 2 and not white and (m.axis is None or m.axis % len(shape) != 1):
            # only (N, C, *spatial) maps, where `shared` and `rho` describe the positions of one
            # channel, (N, features) or independent elements (an input); not (N, T, d) or
            # attention's (N, heads, T, d), whose positions are tokens and heads
            return False
        mean, cov = from_moments(m, tuple(shape[1:]))
        self._store(node, mean.to(self.dtype), tuple(shape[1:]), {}, cov.to(self.dtype),
                    m.shape is None)
        return True

    # -- operations -------------------------------------------------------------------------------
    def linear(self, ctx: MapContext, inputs: list[fx.Node],
               op: Callable[[list[torch.Tensor]], torch.Tensor], mixing: bool = False) -> bool:
        """y = op(inputs), op affine and acting on each sample alone (checked). `mixing`: a
        weighted layer, whose sums over many inputs are close to Gaussian whatever they sum."""
        out = ctx.out_shape
        if not _small(out, self.limit) or not all(self.ready(n, ctx) for n in inputs):
            return False
        shapes = [self.shape[n.name] for n in inputs]
        sizes = [math.prod(s) for s in shapes]

        def apply(cols: torch.Tensor) -> torch.Tensor:                # (sum D_i, K) -> (D, K)
            parts = cols.split(sizes, 0)
            vs = [p.T.reshape(-1, *s) for p, s in zip(parts, shapes)]
            y = op(vs) - op([torch.zeros(1, *s, dtype=cols.dtype) for s in shapes])
            return y.reshape(cols.shape[1], -1).T

        mean = op([self.mean[n.name].reshape(1, *s) for n, s in zip(inputs, shapes)])
        if tuple(mean.shape[1:]) != tuple(out[1:]) or \
                not _linear_per_sample(apply, sum(sizes), self.dtype):
            return False

        def stacked(q: str) -> torch.Tensor:                           # Cov(u, q)
            parts = [self.get(n.name, q) for n in inputs]
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        cross = {q: apply(stacked(q)) for q in self.mean}    # every live node, inputs included
        a_cov = torch.cat([cross[n.name] for n in inputs], 1) if len(inputs) > 1 \
            else cross[inputs[0].name]                                  # A Cov(u, u): (D, sum)
        normal = mixing or all(self.normal[n.name] for n in inputs)
        self._store(ctx.node, mean.reshape(-1), tuple(out[1:]), cross, apply(a_cov.T), normal)
        return True

    def elementwise(self, ctx: MapContext, x: fx.Node) -> bool:
        """f(x) for a positively homogeneous f (ReLU, leaky ReLU, ...) only; for x not
        Gaussian (a sum with a rectified skip connection) the marginals then come from the
        per-channel statistics, which follow the distribution's shape. A SiLU or tanh is left
        to those statistics altogether: a layer's units share each sample's overall scale (a
        signal from a narrow input varies a lot in it), which a Gaussian of the same
        covariance lacks; f(s x) = s f(x) makes that scale drop out of the second moments,
        and other functions turn it into a drift (a 20-layer SiLU MLP: +56 %), which the
        per-channel statistics model."""
        if not _homogeneous(ctx.evaluate) or not self.ready(x, ctx):
            return False
        if not self.normal[x.name] and _channels(self.shape[x.name]) is None:
            return False
        mu, cov = self.mean[x.name], self.cov[x.name][x.name]
        sd = cov.diagonal().clamp_min(0.0).sqrt()
        c, second = hermite(ctx.evaluate, mu.double(), sd.double(), self.points)
        slope = torch.where(sd > 0, c[:, 1].to(sd) / sd.clamp_min(1e-30), torch.zeros_like(sd))
        cross = {q: slope.reshape(-1, 1) * self.get(x.name, q) for q in self.mean}
        own = mehler(c.to(cov), second.to(cov), cov, sd)                 # c: (D, K+1)
        self._store(ctx.node, c[:, 0].to(cov), self.shape[x.name], cross, own, False)
        y = self.est.get(ctx.node.name)
        if not self.normal[x.name] and isinstance(y, Moments):
            self.match(ctx.node.name, y)          # marginals from the shape-aware statistics
        return True

    def channel_stats(self, name: str) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Per-channel mean and variance (over positions) of node `name`, (C,) each."""
        ids = _channels(self.shape[name])
        if ids is None:
            return None
        c = int(ids.max()) + 1
        n = torch.bincount(ids, minlength=c).to(self.mean[name])
        mu = self.mean[name]
        m = torch.zeros(c, dtype=mu.dtype).index_add_(0, ids, mu) / n
        second = self.cov[name][name].diagonal() + (mu - m[ids]) ** 2
        return m, torch.zeros(c, dtype=mu.dtype).index_add_(0, ids, second) / n

    def match(self, name: str, y: Moments) -> None:
        """Shift and scale node `name` channel by channel to y's per-channel mean and variance,
        keeping its correlations."""
        found = self.channel_stats(name)
        mean_c, local_c, shared_c = y.channel_stats()
        if found is None or mean_c.numel() != found[0].numel() or y.axis is None:
            return
        ids = _channels(self.shape[name])
        m, v = found
        scale = torch.where(v > 0, ((local_c + shared_c).to(v) / v.clamp_min(1e-30)).sqrt(),
                            torch.ones_like(v))[ids]
        mu = self.mean[name]
        self.mean[name] = mean_c.to(mu)[ids] + (mu - m[ids]) * scale
        self._scale_covariances(name, scale)

    def dropout(self, ctx: MapContext, x: fx.Node, p: float) -> bool:
        if not self.ready(x, ctx):
            return False
        mu, cov = self.mean[x.name], self.cov[x.name][x.name]
        extra = (cov.diagonal() + mu ** 2) * (p / (1 - p))
        cross = {q: self.get(x.name, q) for q in self.mean}
        self._store(ctx.node, mu, self.shape[x.name], cross, cov + torch.diag(extra), False)
        return True

    def step(self, ctx: MapContext) -> None:
        """The covariance of `ctx.node` where its operation allows (weighted layers: `layer`).
        An operation that fails on the batch of columns gets none (a debug message)."""
        try:
            self._step(ctx)
        except Exception as e:  # noqa: BLE001  (the per-channel statistics still hold)
            log.debug("autoinit: no covariance for node %s: %r", ctx.node.name, e)

    def _step(self, ctx: MapContext) -> None:
        node, fn = ctx.node, find_map(ctx.node, ctx.module)
        if node.name in self.mean or not _small(ctx.out_shape, self.limit):
            return
        inputs = [n for n in node.all_input_nodes if n.op != "get_attr"]
        if not inputs or not all(isinstance(ctx.shape(n), tuple) for n in inputs):
            return
        target = type(ctx.module) if ctx.module is not None else node.target
        if fn is elementwise and len(inputs) == 1:
            self.elementwise(ctx, inputs[0])
        elif isinstance(ctx.module, nn.Dropout) or target is F.dropout:
            p = ctx.module.p if ctx.module is not None else float(ctx.arg(1, "p", 0.5))
            training = ctx.module.training if ctx.module is not None else ctx.arg(2, "training",
                                                                                    True)
            if training and p < 1:
                self.dropout(ctx, inputs[0], p)
            elif not training:
                self.linear(ctx, inputs, _substituted(ctx, inputs))
        elif fn in _LINEAR_MAPS or target in _AVERAGES or (fn in _SCALED_MAPS and
                                                          len(inputs) == 1):
            self.linear(ctx, inputs, _substituted(ctx, inputs))


def layer(ctx: MapContext, x: fx.Node, forward: Callable[[torch.Tensor], torch.Tensor]
          ) -> Optional[tuple[float, float]]:
    """A weighted layer y = forward(x) (its drawn weights inside): the pooled (mean, variance)
    of its output, its covariance stored; None without one (map too large, no joint)."""
    joint: Optional[Joint] = ctx.layers.joint
    if joint is None or not isinstance(x, fx.Node):
        return None
    try:
        if not joint.linear(ctx, [x], lambda vs: forward(vs[0]), mixing=True):
            return None
    except Exception as e:  # noqa: BLE001  (the per-channel statistics still hold)
        log.debug("autoinit: no covariance for layer %s: %r", ctx.node.name, e)
        return None
    return joint.pooled(ctx.node.name)


def _small(shape: Any, limit: int) -> bool:
    return isinstance(shape, tuple) and len(shape) >= 2 and \
        all(isinstance(s, int) for s in shape) and math.prod(shape[1:]) <= limit


def _linear_per_sample(apply: Callable[[torch.Tensor], torch.Tensor], d: int,
                       dtype: torch.dtype) -> bool:
    """Whether the operation is linear (x * x is not) and acts on each column alone (not
    across the batch dim), checked on two random columns."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(d, 2, generator=g, dtype=torch.float64).to(dtype)
    both = apply(v)
    one = torch.cat([apply(v[:, :1]), apply(v[:, 1:])], 1)
    tol = dict(rtol=1e-4, atol=1e-4 * float(both.abs().max()) + 1e-12)
    return both.shape == one.shape and bool(torch.allclose(both, one, **tol)) and \
        bool(torch.allclose(apply(2 * v), 2 * both, **tol))


def _substituted(ctx: MapContext, inputs: list[fx.Node]
                 ) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """The node's own operation with its input nodes replaced by the given tensors (and
    parameters or buffers it reads by their current values)."""
    node = ctx.node
    consts = {n: ctx.layers.value(ctx.layers.attr(n)).detach().cpu()
              for n in node.all_input_nodes if n.op == "get_attr"}

    def op(vs: list[torch.Tensor]) -> torch.Tensor:
        values = {**{n: c.to(vs[0].dtype) for n, c in consts.items()},
                  **{n: v for n, v in zip(inputs, vs)}}
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
        return ctx.call(*args, **kwargs).to(vs[0].dtype)
    return op


__all__ = ["Joint", "layer"]
