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
from dataclasses import replace
from typing import Any, Optional

import torch
from torch import fx

from . import autoinit_spatial as spatial
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
    center = ctx.layers.cfg.distribution == "delta-orthogonal"
    frac = float(per_tap[per_tap.numel() // 2] if center else per_tap.mean())
    return border(x, frac), reads


def dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(out, in, taps) float64 weight with a grouped layer's blocks placed (zeros elsewhere),
    so that every layer is one matrix over (in-channels x taps)."""
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


def channel_rows(x: Moments, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x's (mean, local, shared) as (S, channels) rows (a value without channels repeated)."""
    mean, var, shared = x.per_channel()
    local = (var - shared).clamp_min(0.0)

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, t.shape[-1] if t.dim() else 1).expand(-1, channels)
    return rows(mean), rows(local), rows(shared)


def _record_profile(ctx: MapContext, x: Moments, w: torch.Tensor, reads: tuple) -> None:
    """The output's second moment at each position, relative to its mean, for the convs after
    it: the local part from the input profile the taps read, the shared part and the input's
    mean through the weights on the real taps (the mean leaks in at the borders). `w` is the
    dense (out, in, taps) weight; channel statistics are averaged over samples."""
    seen, real, out = reads
    mu, loc, sh = (t.mean(0) for t in channel_rows(x, w.shape[1]))     # (in,) each
    u = torch.einsum("jct,c->jt", w, mu)                          # (out, T): mean per tap
    leak = (real @ u.T).pow(2).mean(1)                           # mean_j A_j(p)^2
    g = torch.einsum("jct,jcu,c->tu", w, w, sh) / w.shape[0]
    prof = seen @ torch.einsum("jct,c->t", w.pow(2), loc) / w.shape[0] + \
        ((real @ g) * real).sum(1) + leak
    if float(prof.mean()) > 0:
        ctx.layers.profiles[ctx.node.name] = (prof / prof.mean()).reshape(out)


def conv_moments(ctx: MapContext, m: Any, x: Moments, reads: Optional[tuple],
                 weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int,
                 axis: int) -> Moments:
    """y_j(p) = sum_{c, t real at p} W_jct x_c(p + t) + b_j, unit by unit, pooled over the
    positions p.

    With S_jc(p) = sum over the taps real at p of W_jct and A_j(p) = sum_c mu_c S_jc(p):
    E y_j = mean_p A_j(p) + b_j; Var y_j = sum_ct W_jct^2 r_t local_c + sum_c S_jc^2 shared_c
    + the spread of A_j(p) over positions (local), r_t the second-moment profile tap t reads
    (`tap_reads`). Per output channel j (shape (S, out))."""
    w = dense(weight, groups)
    out, cin, taps = w.shape
    if reads is None:
        r, classes = torch.ones(taps, dtype=torch.float64), [(torch.ones(taps), 1.0)]
    else:
        r, classes = reads[0].mean(0), _classes_of(reads[1])
        _record_profile(ctx, x, w, reads)
    mu, loc, sh = channel_rows(x, cin)                             # (S, in) each
    local = loc @ (w.pow(2) * r).sum(2).T                          # (S, out)
    # neighbouring inputs correlated: the t != t' terms, relative to the diagonal, per unit
    rho_in = x.rho if x.rho is not None and x.rho.shape[0] == cin and \
        x.rho.dim() - 1 == len(m.kernel_size) else None
    loc_c = loc.mean(0)
    cross, rho = spatial.conv(w, tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation),
                              loc_c, rho_in)
    diag = (w.pow(2).sum(2) * loc_c).sum(1)                        # (out,)
    local = local * (1 + cross / diag.clamp_min(1e-300))
    a_sum, a_sq, shared, total = 0.0, 0.0, 0.0, 0.0
    for mask, n in classes:
        s = (w * mask).sum(2)                                      # (out, in): S_jc here
        a = mu @ s.T                                               # (S, out): A_j here
        a_sum, a_sq = a_sum + n * a, a_sq + n * a * a
        shared = shared + n * (sh @ s.pow(2).T)
        total += n
    a_bar, shared = a_sum / total, shared / total
    positional = (a_sq / total - a_bar ** 2).clamp_min(0.0)       # A_j over positions
    b = 0.0 if bias is None else bias.detach().double().cpu()
    y = moments(a_bar + b, local + shared + positional, shared, axis)
    return replace(y, rho=rho) if y.axis is not None else y


def _classes_of(real: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
    """Distinct rows of the (P, T) real-tap table with their counts."""
    masks, counts = torch.unique(real, dim=0, return_counts=True)
    return [(mk, float(n)) for mk, n in zip(masks, counts.tolist())]

