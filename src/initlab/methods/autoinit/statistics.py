"""The statistics AutoInit propagates through a graph, and the numerics on them.

Bingham & Miikkulainen (AAAI 2023, arXiv 2109.08958) track one (mean, variance) per tensor.
A `Moments` keeps them **per element of one sample**: `mean`, `var` and `shared` are tensors
broadcastable to the tensor's shape without its batch dim (size 1 along the dims where they do
not vary). So each channel has its own statistics (a weighted layer's units have different
means and gains), and so has each position of a feature map near the zero padding of a
convolution; a linear operation acts on them by running the operation itself (`layers.py`).
The pieces, each for a reason that holds in any network:

- **channels**: the per-sample dims whose entries are independent channels (features, conv
  channels, heads), counted from the last (-1 is the last dim; non-negative dims are converted
  using the statistics' number of dims); the other dims are *positions* (pixels, tokens);
- **shared**: the part of `var` common to all positions of one sample and channel, so that
  means over positions (global pooling, attention) come out right;
- **law**: where a signal is not normal (an activation's output), its standardized
  distribution as `laws.PARTICLES` sorted quantiles, a tensor (..., K) broadcastable to the
  statistics with K appended (usually one law per channel); None means normal;
- **scales**: how much positions (one sample's channels at one position: a token, a feature
  vector; the whole sample when it has no positions) differ in overall scale:
  `scales.SAMPLE_CLASSES` equally likely classes, each a factor (mean 1) on a typical position's
  second moment. A weighted layer's unit sums one position's channels, so its output scales
  with that position's mean square, which over finitely many channels fluctuates. Through an
  activation that is not positively homogeneous (SiLU, GELU) the fluctuations grow with depth
  and raise the pooled variance (the activation is convex in the scale); through a product of
  two layers' outputs (gated units) the scale is squared. Averages over positions
  (convolution taps, pooling, attention) narrow them. For images (`sample_wide`) the classes
  are the samples' overall scales instead, common to all positions: their different means are
  shared over positions, and averages over positions keep them. None means all alike.

`Moments(0.0, 1.0)` is a standard normal of any shape.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union

import torch

from .laws import mixed, normal_particles

Scalar = Union[float, torch.Tensor]


def _t(v: Scalar) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


@dataclass(frozen=True)
class Moments:
    """(mean, var, shared) per element of a sample (see the module docstring); the three are
    broadcast to one shape, var clipped to >= 0 and shared to [0, var]."""
    mean: Scalar
    var: Scalar
    shared: Scalar = 0.0
    channels: tuple[int, ...] = ()
    law: Optional[torch.Tensor] = None
    scales: Optional[torch.Tensor] = None
    sample_wide: bool = False         # scale classes per sample (all positions alike), not
    #                                   per position

    def __post_init__(self) -> None:
        mean, var, shared = torch.broadcast_tensors(_t(self.mean), _t(self.var).clamp_min(0.0),
                                                    _t(self.shared).clamp_min(0.0))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "var", var)
        object.__setattr__(self, "shared", torch.minimum(shared, var))
        nd = mean.dim()
        object.__setattr__(self, "channels", tuple(sorted({int(a) - nd if int(a) >= 0 and nd
                                                           else int(a) for a in self.channels})))

    # -- views ----------------------------------------------------------------------------------
    @property
    def second(self) -> torch.Tensor:
        """E[x^2] per element."""
        return self.var + self.mean ** 2

    @property
    def local(self) -> torch.Tensor:
        """The part of var that varies over positions."""
        return (self.var - self.shared).clamp_min(0.0)

    def pooled(self) -> tuple[float, float]:
        """(mean, variance) over all elements."""
        mean = float(self.mean.mean())
        return mean, max(float(self.second.mean()) - mean ** 2, 0.0)

    def is_constant(self) -> bool:
        return bool((self.var == 0).all())

    def with_(self, **changes: object) -> "Moments":
        return replace(self, **changes)

    def scaled(self, c: float) -> "Moments":
        """The statistics of c * x."""
        law = self.law if c >= 0 or self.law is None else -self.law.flip(-1)
        return replace(self, mean=c * self.mean, var=c * c * self.var,
                       shared=c * c * self.shared, law=law)

    def particles(self) -> torch.Tensor:
        """The law as particles (..., K); a normal law's when it is None."""
        if self.law is not None:
            return self.law
        return normal_particles().reshape((1,) * self.mean.dim() + (-1,))

    def expand(self, shape: tuple[int, ...]) -> "Moments":
        """The statistics broadcast to a per-sample `shape` (a new dim in front when the
        statistics have fewer dims)."""
        def ex(t: torch.Tensor) -> torch.Tensor:
            return t.reshape((1,) * (len(shape) - t.dim()) + tuple(t.shape)).expand(shape)
        law = self.law
        if law is not None:
            law = law.reshape((1,) * (len(shape) + 1 - law.dim()) + tuple(law.shape))
        return replace(self, mean=ex(self.mean), var=ex(self.var), shared=ex(self.shared),
                       law=law)

    def compact(self) -> "Moments":
        """Dims along which no statistic varies reduced to size 1."""
        mean, var, shared = self.mean, self.var, self.shared
        for d in range(mean.dim()):
            if mean.shape[d] > 1 and all(_flat(t, d) for t in (mean, var, shared)):
                mean, var, shared = (t.narrow(d, 0, 1) for t in (mean, var, shared))
        law = self.law
        if law is not None:
            for d in range(law.dim() - 1):
                if law.shape[d] > 1 and _flat(law, d):
                    law = law.narrow(d, 0, 1)
        return replace(self, mean=mean.contiguous(), var=var.contiguous(),
                       shared=shared.contiguous(), law=law)

    def collapse(self) -> "Moments":
        """One (mean, var, shared) for all elements, as a user map expects: the spread of the
        channels' means is constant over positions, so it goes to `shared`."""
        if self.mean.dim() == 0:
            return self
        mean = self.mean.mean()
        nd = self.mean.dim()
        pos = [d for d in range(nd) if d - nd not in self.channels]
        per_channel = self.mean.mean(dim=pos) if pos else self.mean
        shared = self.shared.mean() + per_channel.var(unbiased=False) \
            if per_channel.numel() > 1 else self.shared.mean()
        law = None if self.law is None else mixed(self.particles(), self.mean, self.var.sqrt())
        return Moments(mean, self.second.mean() - mean ** 2, shared, (), law, self.scales,
                       self.sample_wide)


def _flat(t: torch.Tensor, d: int) -> bool:
    return bool((t == t.narrow(d, 0, 1)).all())


def moments(mean: Scalar, var: Scalar, shared: Scalar = 0.0,
            channels: tuple[int, ...] = ()) -> Moments:
    """`Moments(mean, var, shared, channels)`: what a moment map returns."""
    return Moments(mean, var, shared, channels)


def constant(value: object) -> Optional[Moments]:
    """Moments of a Python number or of a tensor's values, pooled (None for anything else)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return Moments(float(value), 0.0)
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 0:
        v = value.detach().double().cpu()
        return Moments(v.mean(), v.var(unbiased=False) if v.numel() > 1 else 0.0)
    return None


def fixed(value: object, batch: int) -> Optional[Moments]:
    """Statistics of a constant: a float tensor's own values, element by element (variance
    0), or, if it looks batched (its dim 0 is the batch size), its mean and variance over the
    batch; a Python number as itself."""
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return constant(value)
    v = value.detach().double().cpu()
    if v.dim() >= 2 and v.shape[0] == batch and batch > 1:
        return Moments(v.mean(0), v.var(0, unbiased=False)).compact()
    if v.dim() >= 1 and v.shape[0] == 1:
        v = v[0]
    return Moments(v, 0.0).compact()
