"""Numerics on laws: Gauss-Hermite quadrature of an elementwise function under a normal (or a
non-normal law given by quantiles), the shared part of its variance by the Hermite series, and
the laws themselves as sorted standardized particles: sums of independent laws, mixtures,
Cornish-Fisher laws from cumulants. Statistics are float64; `Moments` (statistics.py) holds
them per element."""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Optional

import numpy as np
import torch

PARTICLES = 64                   # quantiles describing a non-normal law


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
    difference hardly moves an activation's moments)."""
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
    all pairs of a's particles with 16 quantiles of b's law (b's as given when a is normal),
    requantized."""
    if a is None and b is None:
        return None
    if a is None:
        a, b, a_sd, b_sd = b, a, b_sd, a_sd
    qa = a
    qb = _normal_quantiles(16) if b is None else \
        b.reshape(*b.shape[:-1], 16, b.shape[-1] // 16).mean(-1)
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
    variance, so that the particles' discretization error cancels. Where f is not finite (the
    normal law overhangs its domain), the law is conditioned on the domain. The shared part,
    Var_S E[f(X) | S], from the Hermite coefficients a_n = E f(X) He_n(Z) of the same
    quadrature: sum_n (shared / var)^n a_n^2 / n! (Mehler), the terms beyond HERMITE_TERMS
    bounded by the rest of f's variance. f takes and returns a flat float64 tensor."""
    def apply(z: torch.Tensor) -> torch.Tensor:
        return f(z.reshape(-1)).reshape(z.shape)
    mu, sd = mean.unsqueeze(-1), var.sqrt().unsqueeze(-1)                   # (N, 1)
    z, w = hermite(points)
    y = apply(mu + sd * z)                                                   # (N, points)
    w = _domain(y, w)
    y = y.nan_to_num(0.0, 0.0, 0.0)
    y2 = y * y
    m, second, fourth = (y * w).sum(-1), (y2 * w).sum(-1), (y2 * y2 * w).sum(-1)
    q = law if law is not None else normal_particles().unsqueeze(0)
    fq = apply(mu + sd * q)                                                  # (N, K)
    fq = torch.where(torch.isfinite(fq), fq, fq.nan_to_num(0.0, 0.0, 0.0).amax(-1, keepdim=True))
    out_shared = torch.zeros_like(m)
    has = shared > 1e-12 * var.clamp_min(1e-300)
    if bool(has.any()):
        a = (y[has] * w[has]) @ _hermite_basis(points) * torch.tensor(
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
        fg = apply(mu + sd * normal_particles()).nan_to_num(0.0, 0.0, 0.0)
        m = m + fq.mean(-1) - fg.mean(-1)
        second = second + fq.pow(2).mean(-1) - fg.pow(2).mean(-1)
    return m, second, fourth, out_shared, fq


def _domain(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Quadrature weights (N, points) restricted to the nodes where f is finite and
    renormalized: a function defined on part of the line (sqrt, log, rsqrt of a positive
    signal that a normal law overhangs) gets the law conditioned on its domain."""
    finite = torch.isfinite(y)
    if bool(finite.all()):
        return w.expand_as(y)
    wf = w * finite
    return wf / wf.sum(-1, keepdim=True).clamp_min(1e-300)
