"""Scale classes (`Moments.scales`): how much positions, or samples, differ in overall scale,
as `SAMPLE_CLASSES` equally likely factors of mean 1; how they arise (a mean square over n
normal elements), widen (a layer's or an activation's own fluctuation), narrow (averages over
positions) and combine (sums and concatenations of the same positions)."""
from __future__ import annotations

import math
from typing import Optional

import torch

SAMPLE_CLASSES = 16              # classes of positions (or samples) by overall scale


def chi_square_scales(n: int, classes: int = SAMPLE_CLASSES) -> Optional[torch.Tensor]:
    """The classes of a mean square over n i.i.d. normal elements (chi^2_n / n), by the
    Wilson-Hilferty approximation; None when n is large enough for the spread not to matter."""
    if n >= 100_000:
        return None
    z = torch.special.ndtri((torch.arange(classes, dtype=torch.float64) + 0.5) / classes)
    c = 2.0 / (9 * n)
    g = (1 - c + math.sqrt(c) * z).clamp_min(1e-3) ** 3
    return g / g.mean()


def narrowed(scales: Optional[torch.Tensor], n: float) -> Optional[torch.Tensor]:
    """Scale classes of an average of n independent positions: deviations from 1 shrink by
    sqrt(n)."""
    if scales is None or n <= 1:
        return scales
    g = 1 + (scales - 1) / math.sqrt(n)
    return g.clamp_min(1e-6) / g.clamp_min(1e-6).mean()


def spread(scales: Optional[torch.Tensor], tau2: float) -> Optional[torch.Tensor]:
    """Scale classes after each position's scale is multiplied by an independent factor of
    relative variance tau2: the classes' spread in log scale widened to match, their order
    kept (class k of two tensors of the same positions stays the same positions)."""
    if scales is None or tau2 <= 0 or not math.isfinite(tau2):
        return scales
    u = scales.clamp_min(1e-12).log()
    var = float(u.var(unbiased=False))
    extra = math.log1p(tau2)
    if var <= 1e-12:
        return scales
    u = u.mean() + (u - u.mean()) * math.sqrt((var + extra) / var)
    g = u.exp()
    return g / g.mean()


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
