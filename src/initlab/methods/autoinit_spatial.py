"""AutoInit: the spatial correlation of a feature map, channel by channel.

A conv's output at one position reads a patch of its input; if neighbouring input positions
are correlated, the output variance is not `sum_t W_t^2 local` but
`sum_{t,t'} W_t W_t' local rho(t' - t)`. The cross terms cancel on average over random
weights, but not for the weights drawn: a depthwise conv's 9 centered taps make its output
anti-correlated between neighbours, and the next depthwise conv's centered taps turn that into
a gain above 1 (about 4 % per block in a separable CNN). Averages over positions (pooling, the
global mean) also depend on rho.

`rho` (a `Moments` field) is the correlation of the local part of each channel at the
spatial offsets within `RADIUS` of 0: a tensor (C, 2R+1, ...) with one dim per spatial dim,
1 at the center; None means uncorrelated (white). Beyond the window it is taken as 0.
Statistics are pooled over samples.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Optional

import torch

from .autoinit_maps import _hermite

RADIUS = 2


def offsets(dims: int, radius: int = RADIUS) -> torch.Tensor:
    """(D, dims) integer offsets of the window, in the row-major order of rho's spatial dims."""
    rng = range(-radius, radius + 1)
    return torch.tensor(list(itertools.product(rng, repeat=dims)), dtype=torch.long)


def lookup(rho: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """rho (C, window...) at integer offsets e (..., dims): (C, ...), 0 outside the window."""
    dims, size = e.shape[-1], rho.shape[-1]
    inside = (e.abs() <= RADIUS).all(-1)
    flat = torch.zeros(e.shape[:-1], dtype=torch.long)
    for i in range(dims):
        flat = flat * size + (e[..., i] + RADIUS).clamp(0, size - 1)
    vals = rho.reshape(rho.shape[0], -1)[:, flat.reshape(-1)].reshape(rho.shape[0], *flat.shape)
    return vals * inside


def white(channels: int, dims: int) -> torch.Tensor:
    rho = torch.zeros(channels, *([2 * RADIUS + 1] * dims), dtype=torch.float64)
    rho[(slice(None),) + (RADIUS,) * dims] = 1.0
    return rho


def conv(w: torch.Tensor, kernel: tuple, stride: tuple, dilation: tuple, local: torch.Tensor,
         rho: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv's local output covariance at the window's offsets, per output unit.

    w: dense (out, C, T) weight, T = prod(kernel) taps; local: (C,) input local variance.
    Cov(y_j(p), y_j(p + d)) = sum_c local_c sum_{t,t'} W_jct W_jct' rho_c(s d + pos_t' - pos_t).
    Returns (the off-center part of the output variance, i.e. the t != t' terms, (out,); rho
    of the output, (out, window...))."""
    dims = len(kernel)
    if rho is None:
        rho = white(w.shape[1], dims)
    pos = torch.tensor(list(itertools.product(*(range(k) for k in kernel))),
                       dtype=torch.long) * torch.tensor(dilation)        # (T, dims)
    d = offsets(dims) * torch.tensor(stride)                            # (D, dims)
    e = d[:, None, None] + pos[None, None, :] - pos[None, :, None]       # (D, T, T, dims)
    m = lookup(rho, e)                                                  # (C, D, T, T)
    wl = w * local.reshape(1, -1, 1)
    cov = torch.einsum("jct,jcu,cdtu->jd", wl, w, m)                     # (out, D)
    center = cov[:, cov.shape[1] // 2]
    diag = (w.pow(2) * local.reshape(1, -1, 1)).sum((1, 2))
    out_rho = cov / center.clamp_min(1e-300).reshape(-1, 1)
    return center - diag, out_rho.reshape(w.shape[0], *rho.shape[1:])


def elementwise(f: Callable[[torch.Tensor], torch.Tensor], mean: torch.Tensor,
                local: torch.Tensor, shared: torch.Tensor, rho: torch.Tensor,
                out_local: torch.Tensor, out_shared: torch.Tensor,
                points: int = 24) -> torch.Tensor:
    """rho of f(x) per channel: E[f(X) f(Y)] for X, Y normal with the channel's mean and
    variance and correlation (shared + local rho) / (shared + local), by a 2-d Gauss-Hermite
    rule; minus E[f]^2 and the output's shared part, over its local variance. All (C,)."""
    z, wz = _hermite(points)
    c = rho.shape[0]
    total = (shared + local).reshape(c, 1)
    kappa = ((shared.reshape(c, 1) + local.reshape(c, 1) * rho.reshape(c, -1))
             / total.clamp_min(1e-300)).clamp(-1.0, 1.0)                # (C, D)
    sd, mu = total.sqrt().reshape(c, 1, 1, 1), mean.reshape(c, 1, 1, 1)
    k = kappa.reshape(c, -1, 1, 1)
    x = mu + sd * z.reshape(1, 1, -1, 1)
    y = mu + sd * (k * z.reshape(1, 1, -1, 1) + (1 - k ** 2).sqrt() * z.reshape(1, 1, 1, -1))
    fx, fy = (f(v.reshape(-1)).reshape(v.shape) for v in (x.expand_as(y), y))
    wxy = wz.reshape(1, 1, -1, 1) * wz.reshape(1, 1, 1, -1)
    mean_f = (f(mu.reshape(c, 1) + sd.reshape(c, 1) * z) * wz).sum(-1)   # (C,)
    cov = (fx * fy * wxy).sum((-1, -2)) - mean_f.reshape(c, 1) ** 2     # (C, D)
    out = (cov - out_shared.reshape(c, 1)) / out_local.reshape(c, 1).clamp_min(1e-300)
    out = out.clamp(-1.0, 1.0).reshape(rho.shape)
    out[(slice(None),) + (RADIUS,) * (rho.dim() - 1)] = 1.0
    return out


def average_factor(rho: Optional[torch.Tensor], window: tuple) -> torch.Tensor:
    """Var of the mean of a window of positions, over local / (positions): per channel, the
    sum of rho(e) weighted by the number of position pairs at offset e (1 when white)."""
    if rho is None:
        return torch.ones(())
    e = offsets(rho.dim() - 1)
    pairs = torch.ones(e.shape[0], dtype=torch.float64)
    for i, k in enumerate(window):
        pairs = pairs * (k - e[:, i].abs()).clamp_min(0)
    n = math.prod(window)
    return (rho.reshape(rho.shape[0], -1) * pairs).sum(1) / n


def mix(a_local: torch.Tensor, a_rho: Optional[torch.Tensor], b_local: torch.Tensor,
        b_rho: Optional[torch.Tensor], dims: int) -> Optional[torch.Tensor]:
    """rho of a sum of two independent maps (local variances add, covariances add)."""
    if a_rho is None and b_rho is None:
        return None
    c = max(a_local.numel(), b_local.numel(), (a_rho if a_rho is not None else b_rho).shape[0])
    ra = a_rho if a_rho is not None else white(c, dims)
    rb = b_rho if b_rho is not None else white(c, dims)
    shape = (-1,) + (1,) * dims
    la, lb = a_local.reshape(shape), b_local.reshape(shape)
    return (la * ra + lb * rb) / (la + lb).clamp_min(1e-300)
