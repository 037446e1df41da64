"""The statistics AutoInit propagates through a graph, and the numerics on them.

Bingham & Miikkulainen (AAAI 2023, arXiv 2109.08958) track one (mean, variance) per tensor.
A `Moments` keeps a little more, each piece for a reason that holds in any network:

- **per channel** (`axes`): one (mean, var, shared) per channel, the channels being the
  entries of the tensor's dims in `axes` (row-major; `()` = one pooled channel). A weighted
  layer's output units differ (each has its own mean `sum_i w_ji mu_i` for the weights drawn),
  and a nonlinearity turns those differences into different gains downstream;
- **shared**: the part of a channel's variance common to all positions (the dims that are
  neither the batch dim 0 nor in `axes`: pixels, tokens) of one sample, so that means over
  positions (global pooling, attention) come out right;
- **law**: where a signal is not normal (an activation's output), its distribution per
  channel as `PARTICLES` sorted, standardized quantiles (mean 0, variance 1), so that max
  pooling and a nonlinearity after a residual sum see its real shape; None means normal;
- **profile**: where the local variance varies over positions (near the zero padding of a
  convolution), its value relative to the mean, over the position dims (broadcastable to the
  tensor without its batch dim, size 1 along `axes`); None means flat;
- **scales**: how much the samples differ in overall scale: `SAMPLE_CLASSES` equally likely
  classes of samples, each a factor (mean 1) on a typical sample's second moment. A sample's
  mean square over finitely many units fluctuates, and through an activation that is not
  positively homogeneous (SiLU, GELU) the fluctuations grow with depth and, the activation
  being convex in the scale, raise the pooled variance; None means all samples alike.

Statistics are float64 tensors of shape (C,); `Moments(0.0, 1.0)` is a standard normal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Optional, Union

import numpy as np
import torch

Scalar = Union[float, torch.Tensor]
PARTICLES = 64                   # quantiles per channel describing a non-normal law
SAMPLE_CLASSES = 16              # classes of samples by overall scale (`Moments.scales`)


def _t(v: Scalar) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64).reshape(-1)


@dataclass(frozen=True)
class Moments:
    """(mean, var, shared) per channel; see the module docstring for `axes`, `law`, `profile`.

    Args are broadcast to one length C; var is clipped to >= 0 and shared to [0, var].
    """
    mean: Scalar
    var: Scalar
    shared: Scalar = 0.0
    axes: tuple[int, ...] = ()
    law: Optional[torch.Tensor] = None
    profile: Optional[torch.Tensor] = None
    scales: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        mean, var, shared = torch.broadcast_tensors(_t(self.mean), _t(self.var).clamp_min(0.0),
                                                    _t(self.shared).clamp_min(0.0))
        object.__setattr__(self, "mean", mean.clone())
        object.__setattr__(self, "var", var.clone())
        object.__setattr__(self, "shared", torch.minimum(shared, var))
        object.__setattr__(self, "axes", tuple(int(a) for a in self.axes))

    # -- views ----------------------------------------------------------------------------------
    @property
    def second(self) -> torch.Tensor:
        """E[x^2] per channel."""
        return self.var + self.mean ** 2

    @property
    def local(self) -> torch.Tensor:
        """The part of var that varies over positions."""
        return (self.var - self.shared).clamp_min(0.0)

    @property
    def channels(self) -> int:
        return self.mean.numel()

    def pooled(self) -> tuple[float, float]:
        """(mean, variance) over all elements (channels weighted equally)."""
        mean = float(self.mean.mean())
        return mean, max(float(self.second.mean()) - mean ** 2, 0.0)

    def is_constant(self) -> bool:
        return bool((self.var == 0).all())

    def with_(self, **changes: object) -> "Moments":
        return replace(self, **changes)

    def particles(self) -> torch.Tensor:
        """The law as particles, (C or 1, K); a normal law's when it is None."""
        return normal_particles() if self.law is None else self.law

    def collapse(self) -> "Moments":
        """The channels pooled into one: an equal mixture. The spread of the channel means is
        constant over positions, so it goes to `shared`."""
        if self.channels == 1 and not self.axes:
            return self
        mean = self.mean.mean()
        shared = (self.shared + (self.mean - mean) ** 2).mean()
        law = None if self.law is None else \
            mixed(self.particles(), self.mean, self.var.sqrt())
        return Moments(mean, self.second.mean() - mean ** 2, shared, (), law, self.profile,
                       self.scales)

    def expand(self, channels: int) -> torch.Tensor:
        """Index of each of `channels` channels into these statistics (all 0 when pooled)."""
        if self.channels == channels:
            return torch.arange(channels)
        if self.channels == 1:
            return torch.zeros(channels, dtype=torch.long)
        raise ValueError(f"statistics of {self.channels} channels cannot describe {channels}")

    def take(self, index: torch.Tensor, axes: tuple[int, ...]) -> "Moments":
        """The channels at `index` (any shape, flattened), as channels along `axes`."""
        index = index.reshape(-1)
        law = None if self.law is None else self.law[index] if self.law.shape[0] > 1 \
            else self.law
        return Moments(self.mean[index], self.var[index], self.shared[index], axes, law,
                       self.profile, self.scales)


def moments(mean: Scalar, var: Scalar, shared: Scalar = 0.0,
            axes: tuple[int, ...] = ()) -> Moments:
    """`Moments(mean, var, shared, axes)`: what a moment map returns."""
    return Moments(mean, var, shared, axes)


def constant(value: object) -> Optional[Moments]:
    """Moments of a Python number or of a tensor's values (None for anything else)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return Moments(float(value), 0.0)
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 0:
        v = value.detach().double().cpu()
        return Moments(v.mean(), v.var(unbiased=False) if v.numel() > 1 else 0.0)
    return None


# -- quadrature and particles -----------------------------------------------------------------------
@lru_cache(maxsize=8)
def hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of the n-point Gauss-Hermite rule for E f(Z), Z ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.from_numpy(x), torch.from_numpy(w / math.sqrt(2 * math.pi))


@lru_cache(maxsize=2)
def normal_particles(k: int = PARTICLES) -> torch.Tensor:
    """N(0, 1) as k particles (1, k): the mean of each of k equal-probability bins,
    standardized."""
    p = torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64)
    edges = torch.special.ndtri(p)
    pdf = torch.exp(-0.5 * edges ** 2) / math.sqrt(2 * math.pi)
    return standardize(k * (pdf[:-1] - pdf[1:]).reshape(1, k))


def standardize(q: torch.Tensor) -> torch.Tensor:
    """Particles (C, K) sorted, mean 0 and variance 1 per row; a constant row gets the
    normal's (its shape never matters)."""
    q = q - q.mean(-1, keepdim=True)
    sd = q.pow(2).mean(-1, keepdim=True).sqrt()
    flat = sd <= 1e-12
    q = q / sd.clamp_min(1e-12)
    if not bool((q[:, 1:] >= q[:, :-1]).all()):
        q = q.sort(-1).values
    if bool(flat.any()):
        k = q.shape[-1]
        q = torch.where(flat, _normal_like(k), q)
    return q


def _normal_like(k: int) -> torch.Tensor:
    z = torch.special.ndtri((torch.arange(k, dtype=torch.float64) + 0.5) / k)
    return (z / z.pow(2).mean().sqrt()).reshape(1, k)


def requantize(atoms: torch.Tensor, k: int = PARTICLES) -> torch.Tensor:
    """Equal-weight atoms (C, N), N a multiple of k, to k particles (block means of the sorted
    atoms)."""
    c, n = atoms.shape
    return atoms.sort(-1).values.reshape(c, k, n // k).mean(-1)


def mixed(law: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """The law of an element drawn from one of C channels at random (channel c: mean_c, sd_c,
    particles law_c), as (1, K) particles."""
    atoms = mean.reshape(-1, 1) + sd.reshape(-1, 1) * law                 # (C, K)
    return standardize(requantize(atoms.reshape(1, -1), law.shape[-1]))


def is_normal(law: Optional[torch.Tensor], skew: float = 0.02, kurtosis: float = 0.05) -> bool:
    """Whether particles are within `skew` and excess `kurtosis` of a normal law (closer, the
    difference moves an activation's moments by well under 1 %)."""
    if law is None:
        return True
    ref = normal_particles(law.shape[-1])
    return float((law.pow(3).mean(-1)).abs().max()) < skew and \
        float((law.pow(4).mean(-1) - ref.pow(4).mean()).abs().max()) < kurtosis


def expectation(f: Callable[[torch.Tensor], torch.Tensor], x: Moments, points: int,
                law_rows: Optional[slice] = None) -> tuple[torch.Tensor, ...]:
    """E f(X), E f(X)^2, the shared part of f(X)'s variance, f(X)'s law (of the channels in
    `law_rows`, default all), and E f(X)^4, per channel.

    X = mean + S + L per channel, S ~ N(0, shared) common to a sample's positions and L the
    rest. E f and E f^2 by Gauss-Hermite for a normal X; for another law, corrected by the
    particles' difference, P_law[f] - P_normal[f] at the same mean and variance, so that the
    particles' discretization error cancels. The shared part, Var_S E_L[f(X) | S], by a product
    rule over (S, L) (normal). f takes and returns a flat float64 tensor."""
    def apply(z: torch.Tensor) -> torch.Tensor:
        return f(z.reshape(-1)).reshape(z.shape)
    mu, sd = x.mean.reshape(-1, 1), x.var.sqrt().reshape(-1, 1)             # (C, 1)
    z, w = hermite(points)
    y = apply(mu + sd * z)                                                   # (C, points)
    mean, second, fourth = (w * y).sum(-1), (w * y * y).sum(-1), (w * y ** 4).sum(-1)
    q = x.particles()
    if x.law is not None:
        fq = apply(mu + sd * q)                                              # (C, K)
        fg = apply(mu + sd * normal_particles(q.shape[-1]))
        mean = mean + fq.mean(-1) - fg.mean(-1)
        second = second + fq.pow(2).mean(-1) - fg.pow(2).mean(-1)
        law = standardize(fq[law_rows or slice(None)])
    else:
        rows = law_rows or slice(None)
        law = standardize(apply(mu[rows] + sd[rows] * q))
    shared = torch.zeros_like(mean)
    if float((x.shared / x.var.clamp_min(1e-300)).max()) > 1e-12:
        z2, w2 = hermite(min(points, 24))
        s, loc = x.shared.sqrt().reshape(-1, 1, 1), x.local.sqrt().reshape(-1, 1, 1)
        grid = x.mean.reshape(-1, 1, 1) + s * z2.reshape(1, -1, 1) + loc * z2.reshape(1, 1, -1)
        given = (apply(grid) * w2).sum(-1)                                   # E[f | S], (C, n)
        shared = (w2 * given ** 2).sum(-1) - (w2 * given).sum(-1) ** 2
    return mean, second, shared, law, fourth


def sum_law(a_sd: torch.Tensor, a: Optional[torch.Tensor], b_sd: torch.Tensor,
            b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The law of a + b for independent a, b with these standard deviations (C,) or (1,):
    all pairs of particles (a normal side as 16 quantiles), requantized."""
    if a is None and b is None:
        return None
    qa = a if a is not None else _normal_like(16)
    qb = b if b is not None else _normal_like(16)
    atoms = a_sd.reshape(-1, 1, 1) * qa[:, :, None] + b_sd.reshape(-1, 1, 1) * qb[:, None, :]
    atoms = atoms.reshape(atoms.shape[0], -1)
    k = PARTICLES
    if atoms.shape[1] % k:
        atoms = atoms.repeat_interleave(k // math.gcd(atoms.shape[1], k), 1)
    return standardize(requantize(atoms, k))


def law_cumulants(law: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Third and fourth cumulants of standardized particles (0 for a normal law), (C,)."""
    if law is None:
        zero = torch.zeros(1, dtype=torch.float64)
        return zero, zero
    ref = normal_particles(law.shape[-1]).pow(4).mean()
    return law.pow(3).mean(-1), law.pow(4).mean(-1) - ref


def cornish_fisher(k3: torch.Tensor, k4: torch.Tensor) -> Optional[torch.Tensor]:
    """Particles (C, K) of a law with skewness k3 and excess kurtosis k4 (C,), by the
    Cornish-Fisher expansion of the normal quantiles; None when both are negligible
    (`is_normal`)."""
    if float(k3.abs().max()) < 0.02 and float(k4.abs().max()) < 0.05:
        return None
    z = normal_particles()
    g1, g2 = k3.reshape(-1, 1), k4.reshape(-1, 1)
    q = z + g1 / 6 * (z ** 2 - 1) + g2 / 24 * (z ** 3 - 3 * z) - g1 ** 2 / 36 * (2 * z ** 3 - 5 * z)
    return standardize(q)


# -- per-sample scale classes -----------------------------------------------------------------------
def chi_square_scales(n: int, classes: int = SAMPLE_CLASSES) -> Optional[torch.Tensor]:
    """The classes of a mean square over n i.i.d. normal elements (chi^2_n / n), by the
    Wilson-Hilferty approximation; None when n is large enough for the spread not to matter."""
    if n >= 100_000:
        return None
    z = torch.special.ndtri((torch.arange(classes, dtype=torch.float64) + 0.5) / classes)
    c = 2.0 / (9 * n)
    g = (1 - c + math.sqrt(c) * z).clamp_min(1e-3) ** 3
    return g / g.mean()


def spread(scales: Optional[torch.Tensor], tau2: float) -> Optional[torch.Tensor]:
    """Scale classes after each sample's scale is multiplied by an independent factor
    1 + N(0, tau2) (clipped positive): four quantiles of the factor, requantized."""
    if tau2 <= 0 or not math.isfinite(tau2):
        return scales
    g = torch.ones(SAMPLE_CLASSES, dtype=torch.float64) if scales is None else scales
    e = torch.special.ndtri((torch.arange(4, dtype=torch.float64) + 0.5) / 4)
    e = e / e.pow(2).mean().sqrt()
    atoms = (g.reshape(-1, 1) * (1 + math.sqrt(tau2) * e).clamp_min(0.05)).reshape(1, -1)
    out = requantize(atoms, g.numel()).reshape(-1)
    return out / out.mean()


def mixed_scales(parts: list[tuple[Optional[torch.Tensor], float]]) -> Optional[torch.Tensor]:
    """Scale classes of a sum or concatenation of parts of the same samples (a sample large in
    one is large in the others), weighted by the parts' second moments."""
    known = [(g, w) for g, w in parts if g is not None]
    if not known:
        return None
    total = sum(w for _, w in parts)
    if not total > 0:
        return known[0][0]
    ones = torch.ones(SAMPLE_CLASSES, dtype=torch.float64)
    g = sum((ones if g is None else g) * w for g, w in parts) / total
    return g / g.mean()
