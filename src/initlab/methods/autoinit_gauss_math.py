"""The numerics of AutoInit's full covariance (`autoinit_gauss.py`): the Hermite coefficients
of a function under a normal law, the Mehler series for the covariance of f(x), and a
covariance built from per-channel statistics where a node has none."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from . import autoinit_spatial as spatial
from .autoinit_maps import Moments, _hermite

TERMS = 12  # Mehler terms (8 gave the same to 0.01); the rest from each unit's Hermite tail


def _channels(shape: tuple) -> Optional[torch.Tensor]:
    """The channel of each element of a per-sample (C, *spatial) or (features,) shape."""
    if not shape:
        return None
    return torch.arange(shape[0]).repeat_interleave(math.prod(shape[1:]))


def _homogeneous(f: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether f(2 z) = 2 f(z) on a grid of both signs."""
    z = torch.linspace(-4.0, 4.0, 17, dtype=torch.float64)
    return bool(torch.allclose(f(2 * z), 2 * f(z), rtol=1e-6, atol=1e-9))


def hermite(f: Callable[[torch.Tensor], torch.Tensor], mu: torch.Tensor,
                          sd: torch.Tensor, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """c_n = E[f(mu + sd Z) He_n(Z)] / sqrt(n!) for n <= TERMS, per unit, and E[f^2]."""
    z, w = _hermite(points)                                       # E g(Z) = sum w g(z)
    v = f(mu.reshape(-1, 1) + sd.reshape(-1, 1) * z)              # (D, Q)
    he = [torch.ones_like(z), z]
    for n in range(1, TERMS):
        he.append((z * he[n] - n * he[n - 1]))
    basis = torch.stack(he) / torch.tensor([math.sqrt(math.factorial(n))
                                            for n in range(TERMS + 1)],
                                           dtype=torch.float64).reshape(-1, 1)
    return (v * w) @ basis.T, (v * v * w).sum(1)


def mehler(c: torch.Tensor, second: torch.Tensor, cov: torch.Tensor, sd: torch.Tensor
           ) -> torch.Tensor:
    """Cov(f(x_i), f(x_j)) from the Hermite coefficients c (D, K+1): sum_{n>=1} c_n c_n rho^n,
    the terms beyond K approximated by sqrt(tail_i tail_j) rho^(K+1); the diagonal exact."""
    inv = torch.where(sd > 0, 1 / sd.clamp_min(1e-30), torch.zeros_like(sd))
    rho = (cov * inv.reshape(-1, 1) * inv.reshape(1, -1)).clamp(-1.0, 1.0)
    tail = (second - c.pow(2).sum(1)).clamp_min(0.0).sqrt()
    out = torch.outer(tail, tail)                   # Horner: rho (c1 c1 + rho (c2 c2 + ...))
    for n in range(c.shape[1] - 1, 0, -1):
        out.mul_(rho).addr_(c[:, n], c[:, n])
    out.mul_(rho)
    out.diagonal().copy_(second - c[:, 0] ** 2)
    return out


def from_moments(m: Moments, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """A covariance for a node known only by its Moments: each channel's variance, its shared
    part and its spatial correlation `rho` within the window; channels independent."""
    d = math.prod(shape)
    mean_c, local_c, shared_c = m.channel_stats()                       # (C,) each
    axis = None if m.axis is None else m.axis % (len(shape) + 1) - 1     # in the sample's dims
    if axis is None or shape[axis] != mean_c.numel():
        axis, mean_c, local_c, shared_c = None, *(t.mean().reshape(1) for t in
                                                  (mean_c, local_c, shared_c))
    idx = torch.arange(d).reshape(shape)
    chan = idx.movedim(axis, 0).reshape(mean_c.numel(), -1) if axis is not None else \
        idx.reshape(1, -1)                                               # (C, P) element ids
    mean = torch.empty(d, dtype=torch.float64)
    cov = torch.zeros(d, d, dtype=torch.float64)
    after = shape[axis + 1:] if axis is not None else ()
    rho = m.rho if m.rho is not None and axis is not None and m.rho.dim() - 1 == len(after) \
        and m.rho.shape[0] == mean_c.numel() else None
    if rho is not None:
        pos = torch.stack(torch.meshgrid(*(torch.arange(s) for s in after), indexing="ij"),
                          -1).reshape(-1, len(after))                   # (P_after, dims)
    for c, ids in enumerate(chan):
        mean[ids] = mean_c[c]
        block = torch.eye(len(ids), dtype=torch.float64) * local_c[c] + shared_c[c]
        if rho is not None:
            p = pos.repeat(len(ids) // pos.shape[0], 1)
            e = p.reshape(1, -1, p.shape[1]) - p.reshape(-1, 1, p.shape[1])
            same = torch.block_diag(*[torch.ones(pos.shape[0], pos.shape[0])] *
                                    (len(ids) // pos.shape[0])).double()
            block = local_c[c] * spatial.lookup(rho[c:c + 1], e)[0] * same + shared_c[c]
        cov[ids.reshape(-1, 1), ids.reshape(1, -1)] = block
    return mean, cov
