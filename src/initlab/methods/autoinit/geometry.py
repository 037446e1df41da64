"""How a convolution reads its input: `ConvCall` runs a layer's own convolution (stride,
padding and its mode, dilation, groups) on AutoInit's statistics maps, with any weight.

Running the operation itself is what makes the statistics exact near the borders: a unit there
sums fewer real inputs (zero padding reads zeros), so its mean (mu times the sum of its weights
on the real taps) and its variance differ from the interior's, position by position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass
class ConvCall:
    """A convolution's geometry, from a Conv module or a functional call's arguments."""
    stride: Any
    padding: Any                    # ints, "same" or "valid"
    dilation: Any
    groups: int
    dims: int
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, m: nn.Module) -> "ConvCall":
        return cls(m.stride, m.padding, m.dilation, m.groups, len(m.kernel_size),
                   m.padding_mode)

    @classmethod
    def functional(cls, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any,
                   groups: int) -> "ConvCall":
        return cls(stride, padding, dilation, groups, weight.dim() - 2)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor] = None, groups: Optional[int] = None
                 ) -> torch.Tensor:
        """The convolution of x (N, C, *spatial) with `weight` (float64), this geometry."""
        conv = _CONV[self.dims]
        groups = self.groups if groups is None else groups
        if self.padding_mode != "zeros" and not isinstance(self.padding, str):
            pad = []
            for p in reversed(_tuple(self.padding, self.dims)):
                pad += [p, p]
            x = F.pad(x, pad, mode=self.padding_mode)
            return conv(x, weight, bias, self.stride, 0, self.dilation, groups)
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def ones(self, x: torch.Tensor, taps: tuple[int, ...]) -> torch.Tensor:
        """Sum of x (1, 1, *spatial) over the taps each output position reads."""
        k = torch.ones(1, 1, *taps, dtype=torch.float32)
        return self(x.float(), k, groups=1).double()


def _tuple(v: Any, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(out, in, *kernel) float64 weight with a grouped layer's blocks placed (zeros
    elsewhere)."""
    w = weight.detach().double().cpu()
    if groups == 1:
        return w
    out, per_in = w.shape[:2]
    full = torch.zeros(out, per_in * groups, *w.shape[2:], dtype=torch.float64)
    per_out = out // groups
    for g in range(groups):
        full[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = \
            w[g * per_out:(g + 1) * per_out]
    return full
