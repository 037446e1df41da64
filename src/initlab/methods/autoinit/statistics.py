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
  distribution as `PARTICLES` sorted quantiles, a tensor (..., K) broadcastable to the
  statistics with K appended (usually one law per channel); None means normal;
- **scales**: how much the samples differ in overall scale: `SAMPLE_CLASSES` equally likely
  classes of samples, each a factor (mean 1) on a typical sample's second moment. A sample's
  mean square over finitely many units fluctuates, and through an activation that is not
  positively homogeneous (SiLU, GELU) the fluctuations grow with depth and raise the pooled
  variance (the activation is convex in the scale); None means all samples alike.

`Moments(0.0, 1.0)` is a standard normal of any shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Optional, Union

import numpy as np
import torch

Scalar = Union[float, torch.Tensor]
PARTICLES = 64                   # quantiles describing a non-normal law
SAMPLE_CLASSES = 16              # classes of samples by overall scale (`Moments.scales`)


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
        return Moments(mean, self.second.mean() - mean ** 2, shared, (), law, self.scales)


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


# -- quadrature and particles -----------------------------------------------------------------------
@lru_cache(maxsize=8)
def hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of the n-point Gauss-Hermite rule for E f(Z), Z ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.from_numpy(x), torch.from_numpy(w / math.sqrt(2 * math.pi))


@lru_cache(maxsize=2)
def normal_particles(k: int = PARTICLES) -> torch.Tensor:
    """N(0, 1) as k particles (k,): the mean of each of k equal-probability bins,
    standardized."""
    p = torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64)
    edges = torch.special.ndtri(p)
    pdf = torch.exp(-0.5 * edges ** 2) / math.sqrt(2 * math.pi)
    q = k * (pdf[:-1] - pdf[1:])
    return (q - q.mean()) / q.pow(2).mean().sqrt()


def standardize(q: torch.Tensor) -> torch.Tensor:
    """Particles (..., K) sorted, mean 0 and variance 1 each; a constant row gets the normal's
    (its shape never matters)."""
    q = q - q.mean(-1, keepdim=True)
    sd = q.pow(2).mean(-1, keepdim=True).sqrt()
    flat = sd <= 1e-12
    q = q / sd.clamp_min(1e-12)
    if not bool((q[..., 1:] >= q[..., :-1]).all()):
        q = q.sort(-1).values
    if bool(flat.any()):
        q = torch.where(flat, normal_particles(q.shape[-1]), q)
    return q


def requantize(atoms: torch.Tensor, k: int = PARTICLES) -> torch.Tensor:
    """Equal-weight atoms (..., N), N a multiple of k, to k particles (block means of the
    sorted atoms)."""
    n = atoms.shape[-1]
    return atoms.sort(-1).values.reshape(*atoms.shape[:-1], k, n // k).mean(-1)


def mixed(law: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """The law (K,) of an element drawn at random from elements with these means and sds
    (broadcastable) and laws (..., K)."""
    atoms = mean.unsqueeze(-1) + sd.unsqueeze(-1) * law
    atoms = atoms.reshape(-1)
    k = law.shape[-1]
    if atoms.numel() % k:
        atoms = atoms.repeat_interleave(k // math.gcd(atoms.numel(), k))
    return standardize(requantize(atoms.reshape(1, -1), k).reshape(-1))


def is_normal(law: Optional[torch.Tensor], skew: float = 0.02, kurtosis: float = 0.05) -> bool:
    """Whether particles are within `skew` and excess `kurtosis` of a normal law (closer, the
    difference moves an activation's moments by well under 1 %)."""
    if law is None:
        return True
    k3, k4 = law_cumulants(law)
    return float(k3.abs().max()) < skew and float(k4.abs().max()) < kurtosis


def law_cumulants(law: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Skewness and excess kurtosis of standardized particles (0 for a normal law)."""
    if law is None:
        zero = torch.zeros((), dtype=torch.float64)
        return zero, zero
    ref = normal_particles(law.shape[-1]).pow(4).mean()
    return law.pow(3).mean(-1), law.pow(4).mean(-1) - ref


def cornish_fisher(k3: torch.Tensor, k4: torch.Tensor) -> Optional[torch.Tensor]:
    """Particles (..., K) of a law with skewness k3 and excess kurtosis k4, by the
    Cornish-Fisher expansion of the normal quantiles; None when both are negligible
    (`is_normal`)."""
    if float(k3.abs().max()) < 0.02 and float(k4.abs().max()) < 0.05:
        return None
    z = normal_particles()
    g1, g2 = k3.unsqueeze(-1), k4.unsqueeze(-1)
    q = z + g1 / 6 * (z ** 2 - 1) + g2 / 24 * (z ** 3 - 3 * z) - g1 ** 2 / 36 * (2 * z ** 3 - 5 * z)
    return standardize(q)


def sum_law(a_sd: torch.Tensor, a: Optional[torch.Tensor], b_sd: torch.Tensor,
            b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The law of a + b for independent a, b with these standard deviations (per law row):
    all pairs of particles (a normal side as 16 quantiles), requantized."""
    if a is None and b is None:
        return None
    qa = a if a is not None else _normal_quantiles(16)
    qb = b if b is not None else _normal_quantiles(16)
    qa, qb = torch.broadcast_tensors(qa.unsqueeze(-1) * a_sd.unsqueeze(-1).unsqueeze(-1),
                                     qb.unsqueeze(-2) * b_sd.unsqueeze(-1).unsqueeze(-1))
    atoms = (qa + qb).flatten(-2)
    if atoms.shape[-1] % PARTICLES:
        atoms = atoms.repeat_interleave(PARTICLES // math.gcd(atoms.shape[-1], PARTICLES), -1)
    return standardize(requantize(atoms))


def _normal_quantiles(k: int) -> torch.Tensor:
    z = torch.special.ndtri((torch.arange(k, dtype=torch.float64) + 0.5) / k)
    return z / z.pow(2).mean().sqrt()


HERMITE_TERMS = 12   # terms of the Hermite series for the shared part (the rest bounded)


@lru_cache(maxsize=8)
def _hermite_basis(points: int) -> torch.Tensor:
    """He_n(z_i) / n! at the Gauss-Hermite nodes, (points, HERMITE_TERMS), n = 1..TERMS."""
    z, _ = hermite(points)
    he = [torch.ones_like(z), z]
    for n in range(1, HERMITE_TERMS):
        he.append(z * he[n] - n * he[n - 1])
    basis = torch.stack(he[1:], 1)
    return basis / torch.tensor([float(math.factorial(n)) for n in range(1, HERMITE_TERMS + 1)],
                                dtype=torch.float64)


def expectation(f: Callable[[torch.Tensor], torch.Tensor], mean: torch.Tensor,
                var: torch.Tensor, shared: torch.Tensor, law: Optional[torch.Tensor],
                points: int) -> tuple[torch.Tensor, ...]:
    """For X = mean + S + L, S ~ N(0, shared) common to a sample's positions, rows (N,):
    E f(X), E f(X)^2, E f(X)^4, the shared part of f(X)'s variance (N,), and the particles
    (N, K) of f(X).

    E f and E f^2 by Gauss-Hermite for a normal X; for another law (particles (N or 1, K)),
    corrected by the particles' difference P_law[f] - P_normal[f] at the same mean and
    variance, so that the particles' discretization error cancels. The shared part,
    Var_S E[f(X) | S], from the Hermite coefficients a_n = E f(X) He_n(Z) of the same
    quadrature: sum_n (shared / var)^n a_n^2 / n! (Mehler), the terms beyond HERMITE_TERMS
    bounded by the rest of f's variance. f takes and returns a flat float64 tensor."""
    def apply(z: torch.Tensor) -> torch.Tensor:
        return f(z.reshape(-1)).reshape(z.shape)
    mu, sd = mean.unsqueeze(-1), var.sqrt().unsqueeze(-1)                   # (N, 1)
    z, w = hermite(points)
    y = apply(mu + sd * z)                                                   # (N, points)
    y2 = y * y
    m, second, fourth = y @ w, y2 @ w, (y2 * y2) @ w
    q = law if law is not None else normal_particles().unsqueeze(0)
    fq = apply(mu + sd * q)                                                  # (N, K)
    out_shared = torch.zeros_like(m)
    has = shared > 1e-12 * var.clamp_min(1e-300)
    if bool(has.any()):
        a = (y[has] * w) @ _hermite_basis(points) * torch.tensor(
            [float(math.factorial(n)) for n in range(1, HERMITE_TERMS + 1)],
            dtype=torch.float64)                                             # a_n
        r = (shared[has] / var[has].clamp_min(1e-300)).clamp(0, 1).unsqueeze(-1)
        n = torch.arange(1, HERMITE_TERMS + 1, dtype=torch.float64)
        fact = torch.tensor([float(math.factorial(k)) for k in range(1, HERMITE_TERMS + 1)],
                            dtype=torch.float64)
        series = (r ** n * a * a / fact).sum(-1)
        rest = (second[has] - m[has] ** 2 - (a * a / fact).sum(-1)).clamp_min(0)
        out_shared[has] = series + rest * r.squeeze(-1) ** (HERMITE_TERMS + 1)
    if law is not None:
        fg = apply(mu + sd * normal_particles())
        m = m + fq.mean(-1) - fg.mean(-1)
        second = second + fq.pow(2).mean(-1) - fg.pow(2).mean(-1)
    return m, second, fourth, out_shared, fq


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
    e = _normal_quantiles(4)
    atoms = (g.reshape(-1, 1) * (1 + math.sqrt(tau2) * e).clamp_min(0.05)).reshape(1, -1)
    out = requantize(atoms, g.numel()).reshape(-1)
    return out / out.mean()


def mixed_scales(parts: list[tuple[Optional[torch.Tensor], float]]) -> Optional[torch.Tensor]:
    """Scale classes of a sum or concatenation of parts of the same samples (a sample large in
    one is large in the others), weighted by the parts' second moments."""
    if all(g is None for g, _ in parts):
        return None
    total = sum(w for _, w in parts)
    ones = torch.ones(SAMPLE_CLASSES, dtype=torch.float64)
    if not total > 0:
        return next(g for g, _ in parts if g is not None)
    g = sum((ones if g is None else g) * w for g, w in parts) / total
    return g / g.mean()
