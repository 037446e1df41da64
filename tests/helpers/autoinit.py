"""Shared by the AutoInit tests."""
import torch

from initlab.methods import autoinit_spatial as spatial


def measured_rho(y: torch.Tensor) -> torch.Tensor:
    """Correlation at offsets within RADIUS, from a batch of (n, 1, H, W) fields."""
    r, y = spatial.RADIUS, y - y.mean()
    var = float(y.pow(2).mean())
    out = torch.zeros(2 * r + 1, 2 * r + 1, dtype=torch.float64)
    h, w = y.shape[-2:]
    for a in range(-r, r + 1):
        for b in range(-r, r + 1):
            p = y[..., max(0, a):h + min(0, a), max(0, b):w + min(0, b)]
            q = y[..., max(0, -a):h + min(0, -a), max(0, -b):w + min(0, -b)]
            out[a + r, b + r] = (p * q).mean() / var
    return out
