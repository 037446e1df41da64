"""AutoInit for convolutions, position by position: what zero padding does to a conv's output.

Away from the borders a conv is a Linear layer over (in-channels x taps). At a border some taps
read padding zeros, and that changes three things `linear_moments` cannot see:
- the second moment the taps read is lower there, and over a stack of convs it takes a profile
  over positions (`ctx.layers.profiles`: each conv records its output's, from its weights);
- the input's mean leaks through: a unit whose weights sum to 0 (`centered`) passes no mean in
  the interior, but at a border it passes `mu * (sum of its weights on the real taps)`. That is
  a fixed pattern over positions; its average over positions is an offset per output channel,
  which a global average pool keeps (on 4x4 maps three quarters of the positions are borders);
- a (sample, channel)'s shared part reaches a unit through the tap sums of the real taps only.

The taps real at an output position depend only on how near it is to each border, so the
positions fall into a few classes (9 for a 3x3 conv with padding 1): the sums are computed once
per class from the drawn weights, weighted by the class's size.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import fx

from .autoinit_maps import MapContext, Moments, border, find_map, moments
from .autoinit_ops import elementwise, identity

#: Maps through which a position profile of the second moment carries over unchanged.
_PROFILE_KEEPS = {elementwise, identity}


class ConvArgs:
    """The geometry of a functional convolution, shaped like a Conv module's attributes."""
    padding_mode = "zeros"

    def __init__(self, weight: torch.Tensor, ctx: MapContext):
        dims = weight.dim() - 2

        def tup(v: object) -> tuple:
            return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.dilation = tup(ctx.arg(3, "stride", 1)), tup(ctx.arg(5, "dilation", 1))
        pad = ctx.arg(4, "padding", 0)
        self.padding = pad if isinstance(pad, str) else tup(pad)


def _reads(m: Any, i: int, size: int) -> torch.Tensor:
    """(out, k) table along spatial dim i: the input position each tap of each output position
    reads, -1 where it reads padding (any padding mode other than zeros reads real values)."""
    k, d, s = m.kernel_size[i], m.dilation[i], m.stride[i]
    if m.padding == "valid":
        before, total = 0, 0
    elif m.padding == "same":
        total = d * (k - 1)
        before = total // 2                                    # PyTorch pads the rest after
    else:
        before, total = m.padding[i], 2 * m.padding[i]
    out = max((size + total - d * (k - 1) - 1) // s + 1, 1)
    pos = torch.arange(out).reshape(-1, 1) * s - before + torch.arange(k) * d   # (out, k)
    if m.padding_mode != "zeros":
        return pos.remainder(size)                             # circular/reflect/replicate: real
    return torch.where((pos >= 0) & (pos < size), pos, torch.full_like(pos, -1))


def _profile_source(ctx: MapContext, node: fx.Node) -> fx.Node:
    """Walk back from a conv's input through elementwise and shape operations."""
    while node.op in ("call_module", "call_function", "call_method"):
        module = ctx.layers.module(node) if node.op == "call_module" else None
        if find_map(node, module) not in _PROFILE_KEEPS or len(node.all_input_nodes) != 1:
            break
        node = node.all_input_nodes[0]
    return node


def _spatial(ctx: MapContext, m: Any) -> Optional[tuple]:
    shape = ctx.shape(ctx.raw_args[0])
    return None if shape is None else tuple(shape[-len(m.kernel_size):])


def _gather(m: Any, sizes: tuple, image: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """(P, T): the value of `image` (spatial shape `sizes`) that each of the T taps reads at
    each of the P output positions, 0 where it reads zero padding; and the output's shape."""
    d = len(sizes)
    idx = []
    for i, size in enumerate(sizes):
        r = _reads(m, i, size)                                   # (out_i, k_i), -1: padding
        shape = [1] * (2 * d)
        shape[i], shape[d + i] = r.shape
        idx.append(r.reshape(shape))
    padded = torch.nn.functional.pad(image, (0, 1) * d)         # index -1 reads the added 0
    seen = padded[tuple(idx)]                                    # (out..., k...)
    return seen.reshape(-1, math.prod(seen.shape[d:])), tuple(seen.shape[:d])


def tap_reads(ctx: MapContext, m: Any) -> Optional[tuple[torch.Tensor, torch.Tensor, tuple]]:
    """For each output position and tap: the input's second moment there, relative to its mean
    over positions (its profile, recorded by the conv before; 1 without one), and whether the
    tap is real (1) or reads padding (0); both (P, T). And the output's spatial shape."""
    sizes = _spatial(ctx, m)
    if sizes is None:
        return None
    prof = ctx.layers.profiles.get(_profile_source(ctx, ctx.raw_args[0]).name)
    ones = torch.ones(sizes, dtype=torch.float64)
    if prof is None or tuple(prof.shape) != sizes:
        prof = ones
    seen, out = _gather(m, sizes, prof)
    return seen, _gather(m, sizes, ones)[0], out


def conv_input(ctx: MapContext, m: Any, x: Moments) -> tuple[Moments, Optional[tuple]]:
    """The input as AutoInit's weight draw sees it (E[x^2] over the taps the conv reads, the
    padding counting as zeros), and `tap_reads` for `conv_moments`. Once per conv node."""
    reads = tap_reads(ctx, m)
    if reads is None:
        return x, None
    per_tap = reads[0].mean(0)                                   # (T,)
    centre = ctx.layers.cfg.distribution == "delta-orthogonal"
    frac = float(per_tap[per_tap.numel() // 2] if centre else per_tap.mean())
    return border(x, frac), reads


def _record_profile(ctx: MapContext, x: Moments, w: torch.Tensor, reads: tuple) -> None:
    """The output's second moment at each position, relative to its mean, for the convs after
    it: the local part from the input profile the taps read, the shared part and the input's
    mean through the weights on the real taps (the mean leaks in at the borders)."""
    seen, real, out = reads
    t = w.sum(1)                                                 # (out, T): sum over channels
    leak = ((real @ (t.T @ t / w.shape[0])) * real).sum(1)      # mean_j A_j(p)^2
    shared = ((real @ (torch.einsum("jct,jcu->tu", w, w) / w.shape[0])) * real).sum(1)
    prof = float(x.local.mean()) * (seen @ w.pow(2).sum(1).mean(0)) + \
        float(x.shared.mean()) * shared + float((x.mean ** 2).mean()) * leak
    if float(prof.mean()) > 0:
        ctx.layers.profiles[ctx.node.name] = (prof / prof.mean()).reshape(out)


def conv_moments(ctx: MapContext, m: Any, x: Moments, reads: Optional[tuple],
                 weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Moments:
    """y_j(p) = sum_{c, t real at p} W_jct x_c(p + t) + b_j, pooled over units j and positions p.

    With A_j(p) = sum over real taps of W_jct (summed over c) and S_jc(p) the same per input
    channel: E y = mu * A + b; Var y = local * sum_ct W^2 r_t + shared * sum_c S_jc^2, r_t the
    second-moment profile tap t reads (`tap_reads`). The spread of mu * A_j(p) + b_j over
    (j, p) adds to the variance; its part constant over positions (per unit) to `shared`."""
    w = weight.detach().double().cpu()
    out, cin, taps = w.shape[0], w.shape[1], math.prod(w.shape[2:])
    b = torch.zeros(out, dtype=torch.float64) if bias is None else bias.detach().double().cpu()
    w = w.reshape(out, cin, taps)
    if reads is None:
        r, classes = torch.ones(taps, dtype=torch.float64), [(torch.ones(taps), 1.0)]
    else:
        r, classes = reads[0].mean(0), _classes_of(reads[1])
        _record_profile(ctx, x, w, reads)
    local_gain = (w.pow(2).sum(1) * r).sum(1).mean()
    a_sum = torch.zeros(out, dtype=torch.float64)          # sum_p n_p A_j(p)
    a_sq = torch.zeros(out, dtype=torch.float64)           # sum_p n_p A_j(p)^2
    shared_gain = torch.zeros((), dtype=torch.float64)
    total = 0.0
    for mask, n in classes:
        s = (w * mask.reshape(1, 1, taps)).sum(2)          # (out, cin): S_jc at this class
        a = s.sum(1)
        a_sum, a_sq = a_sum + n * a, a_sq + n * a * a
        shared_gain = shared_gain + n * s.pow(2).sum(1).mean()
        total += n
    a_bar, shared_gain = a_sum / total, shared_gain / total
    a_pos = (a_sq / total - a_bar ** 2).mean()             # spread of A over positions, per unit
    mu = x.mean.reshape(-1, 1)                             # (S, 1)
    mean_j = mu * a_bar + b                                # (S, out): per-unit offsets
    spread = mean_j.var(-1, unbiased=False).reshape(x.mean.shape)
    positional = (x.mean ** 2) * a_pos
    shared = x.shared * shared_gain + spread
    return moments(mean_j.mean(-1).reshape(x.mean.shape),
                   x.local * local_gain + shared + positional, shared)


def _classes_of(real: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
    """Distinct rows of the (P, T) real-tap table with their counts."""
    masks, counts = torch.unique(real, dim=0, return_counts=True)
    return [(mk, float(n)) for mk, n in zip(masks, counts.tolist())]

