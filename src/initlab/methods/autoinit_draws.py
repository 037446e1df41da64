"""How AutoInit draws a weight of a given mean square: the distributions of `AutoInitConfig`.

Every distribution gives a tensor whose entries have mean square `std^2`, AutoInit's
`Var(W) = sigma^2 / (fan_in * E[x^2])`, so the expected gain of the layer is the same;
they differ in how much that gain fluctuates from one draw to the next:

- "normal" (the paper's) and "uniform": i.i.d. entries. A unit's gain `w^T C w` (C the input's
  covariance) fluctuates by ~sqrt(2 / fan_in) around its mean, more where C is nearly low-rank.
- "orthogonal": per group, the (out, fan_in) matrix has orthonormal rows (out <= fan_in) or
  columns (out > fan_in), scaled: every row has exactly the norm^2 `fan_in * std^2` when
  out <= fan_in, and a square layer maps every input vector to one of exactly `sqrt(fan_in) * std`
  times its length (Saxe, McClelland & Ganguli, ICLR 2014; `torch.nn.init.orthogonal_`).
- "delta-orthogonal" (Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington, ICML 2018):
  convolutions get an orthogonal (out, in) matrix at the kernel's center tap and zeros
  elsewhere, carrying the whole weight's energy, so a square conv maps every position's channel
  vector isometrically (times a constant); Linear layers get "orthogonal". Needs odd kernel
  sizes.

`centered=True` (any distribution) makes every unit's weights sum to 0 over its fan-in (centered
weights, as in Huang et al., "Centered Weight Normalization", ICCV 2017): a unit then passes on
none of its input's common mean, so the output units get no random offsets `mu * sum_i w_ji`
(with i.i.d. weights about mu^2 / E[x^2] of the output variance, ~1/3 after a ReLU), which
otherwise differ from unit to unit and make the next nonlinearity's gain deviate from the pooled
prediction. AutoInit then sets the scale from the drawn values (`_Layers.rescale`).

Draws are float64 on the CPU from AutoInit's generator (the caller casts to the parameter's
device and dtype), so a seed gives the same weights on every device.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

DISTRIBUTIONS = ("normal", "uniform", "orthogonal", "delta-orthogonal")


def orthogonal(rows: int, cols: int, gen: Optional[torch.Generator],
               centered: bool = False) -> torch.Tensor:
    """A (rows, cols) matrix with orthonormal rows (rows <= cols) or columns: the Q of a QR
    decomposition of a Gaussian matrix, signs fixed by R's diagonal (Haar distributed).
    `centered`: every row sums to 0 (orthonormal within the complement of the ones vector
    when rows < cols; else the rows are centered after orthogonalization)."""
    a = torch.randn(max(rows, cols), min(rows, cols), generator=gen, dtype=torch.float64)
    centered = centered and cols > 1                           # one weight per unit: keep it
    inside = centered and rows < cols
    if inside:
        a = a - a.mean(0)                                      # columns of q inherit sum 0
    q, r = torch.linalg.qr(a)                                  # q: (max, min)
    q = q * torch.where(r.diagonal() < 0, -1.0, 1.0)
    w = q if rows >= cols else q.T
    return w - w.mean(1, keepdim=True) if centered and not inside else w


def draw(distribution: str, shape: torch.Size, std: float, groups: int,
         gen: Optional[torch.Generator], centered: bool = False) -> torch.Tensor:
    """A weight of `shape` ((out, in/groups, *kernel) or (rows, cols)) with mean square std^2
    (`centered`: every output unit's weights, over its fan-in, sum to 0; mean square about
    std^2, the caller sets the final scale)."""
    if distribution in ("normal", "uniform"):
        if distribution == "normal":
            w = torch.randn(shape, generator=gen, dtype=torch.float64) * std
        else:  # U(-a, a) has variance a^2 / 3
            w = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * std * math.sqrt(3)
        if centered:
            flat = w.reshape(shape[0], -1)
            w = (flat - flat.mean(1, keepdim=True)).reshape(shape)
        return w
    out, cols, taps = shape[0], shape[1], math.prod(shape[2:])
    delta = distribution == "delta-orthogonal" and len(shape) > 2
    if delta and any(k % 2 == 0 for k in shape[2:]):
        raise ValueError(f"distribution='delta-orthogonal' needs odd kernel sizes (a center tap), "
                         f"got a kernel of {tuple(shape[2:])}; use distribution='orthogonal'")
    fan = cols if delta else cols * taps                     # the columns of the orthogonal block
    per = out // groups
    blocks = [orthogonal(per, fan, gen, centered) for _ in range(groups)]
    w = torch.cat(blocks, 0) * std * math.sqrt(max(per, fan))  # mean square std^2 over the block
    if not delta:
        return w.reshape(shape)
    full = torch.zeros(out, cols, taps, dtype=torch.float64)
    full[:, :, taps // 2] = w * math.sqrt(taps)              # the whole energy at the center
    return full.reshape(shape)
