"""Which input each weight of a layer reads, position by position: what AutoInit's weighted-layer
maps (`layers.py`) sum over.

Away from the borders a convolution is a Linear layer over (in-channels x taps). Near a border
some taps read the zero padding, so a unit there sums fewer inputs, and its mean (`mu` times the
sum of its weights on the real taps) differs from the interior's. The taps real at an output
position depend only on how near it is to each border, so the positions fall into a few classes
(9 for a 3x3 convolution with padding 1); `Taps` holds them with their sizes, and how strongly
each tap reads the input's local variance once the input's own profile over positions is
counted. A Linear layer is the case of one tap and one position.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ConvShape:
    """A convolution's geometry, from a Conv module or a functional call's arguments."""
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: Any                    # a tuple of ints, "same" or "valid"
    dilation: tuple[int, ...]
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, m: nn.Module) -> "ConvShape":
        return cls(tuple(m.kernel_size), tuple(m.stride), m.padding, tuple(m.dilation),
                   m.padding_mode)

    @classmethod
    def functional(cls, weight: torch.Tensor, stride: Any, padding: Any,
                   dilation: Any) -> "ConvShape":
        dims = weight.dim() - 2

        def tup(v: Any) -> tuple:
            return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims
        pad = padding if isinstance(padding, str) else tup(padding)
        return cls(tuple(weight.shape[2:]), tup(stride), pad, tup(dilation))

    def reads(self, i: int, size: int) -> torch.Tensor:
        """(out, k) along spatial dim i: the input position each tap of each output position
        reads, -1 where it reads zero padding (other padding modes read real values)."""
        k, d, s = self.kernel_size[i], self.dilation[i], self.stride[i]
        if self.padding == "valid":
            before, total = 0, 0
        elif self.padding == "same":
            total = d * (k - 1)
            before = total // 2                                  # PyTorch pads the rest after
        else:
            before, total = self.padding[i], 2 * self.padding[i]
        out = max((size + total - d * (k - 1) - 1) // s + 1, 1)
        pos = torch.arange(out).reshape(-1, 1) * s - before + torch.arange(k) * d   # (out, k)
        if self.padding_mode != "zeros":
            return pos.remainder(size)
        return torch.where((pos >= 0) & (pos < size), pos, torch.full_like(pos, -1))


@dataclass
class Taps:
    """Per output position class: which taps read real input (masks (K, T)) and how many
    positions the class has (counts (K,)); per tap, the input's local variance it reads
    relative to the map's mean (`seen`, (T,)); per output position and tap the same, for the
    output's profile (`profile_reads`, (P, T)); the output's spatial shape."""
    masks: torch.Tensor
    counts: torch.Tensor
    seen: torch.Tensor
    profile_reads: torch.Tensor
    real: torch.Tensor
    out_spatial: tuple[int, ...]

    @classmethod
    def dense(cls) -> "Taps":
        one = torch.ones(1, 1, dtype=torch.float64)
        return cls(one, torch.ones(1, dtype=torch.float64), one[0], one, one, ())

    @property
    def fraction(self) -> float:
        """The share of taps that read real input, over all positions."""
        return float((self.masks * self.counts.reshape(-1, 1)).sum() /
                     (self.counts.sum() * self.masks.shape[1]))


def conv_taps(conv: ConvShape, spatial: tuple[int, ...],
              profile: Optional[torch.Tensor]) -> Taps:
    """The `Taps` of a convolution over an input of this spatial shape; `profile`: the input's
    local-variance profile over its positions (None: flat)."""
    image = torch.ones(spatial, dtype=torch.float64) if profile is None else \
        profile.reshape(spatial).double()
    seen, out = _gather(conv, spatial, image)
    real, _ = _gather(conv, spatial, torch.ones(spatial, dtype=torch.float64))
    masks, counts = torch.unique(real, dim=0, return_counts=True)
    return Taps(masks, counts.double(), seen.mean(0), seen, real, out)


def _gather(conv: ConvShape, sizes: tuple[int, ...], image: torch.Tensor
            ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(P, T): the value of `image` each of the T taps reads at each of the P output positions
    (0 on padding), and the output's spatial shape."""
    d = len(sizes)
    idx = []
    for i, size in enumerate(sizes):
        r = conv.reads(i, size)                                  # (out_i, k_i), -1: padding
        shape = [1] * (2 * d)
        shape[i], shape[d + i] = r.shape
        idx.append(r.reshape(shape))
    padded = F.pad(image, (0, 1) * d)                            # index -1 reads the added 0
    seen = padded[tuple(idx)]                                    # (out..., k...)
    return seen.reshape(-1, math.prod(seen.shape[d:])), tuple(seen.shape[:d])


def dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(out, in, taps) float64 weight with a grouped layer's blocks placed (zeros elsewhere)."""
    w = weight.detach().double().cpu()
    w = w.reshape(w.shape[0], w.shape[1], -1)
    if groups == 1:
        return w
    out, per_in, taps = w.shape
    full = torch.zeros(out, per_in * groups, taps, dtype=torch.float64)
    per_out = out // groups
    for g in range(groups):
        full[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = \
            w[g * per_out:(g + 1) * per_out]
    return full
