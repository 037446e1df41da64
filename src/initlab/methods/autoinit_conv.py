"""AutoInit for convolutions, position by position: what zero padding does to a conv's output.

Away from the borders a conv is a Linear layer over (in-channels x taps). At a border some taps
read padding zeros, and that changes three things `linear_moments` cannot see:
- the second moment the taps read is lower there, and over a stack of convs it takes a profile
  over positions (tracked per spatial dim in `ctx.layers.profiles`);
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

import itertools
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


def tap_profiles(ctx: MapContext, m: Any) -> Optional[list[torch.Tensor]]:
    """Per spatial dim, (k,): the input's second moment (relative to its mean over positions)
    that each tap reads, averaged over output positions (0 for padding). Records the output's
    own profile for the convs after it: a deep stack converges to the dominant eigenvector of
    the tap-reading operator instead of losing the border fraction again at every layer."""
    sizes = _spatial(ctx, m)
    if sizes is None:
        return None
    before = ctx.layers.profiles.get(_profile_source(ctx, ctx.raw_args[0]).name)
    centre = ctx.layers.cfg.distribution == "delta-orthogonal"
    per_tap, after = [], []
    for i, size in enumerate(sizes):
        prof = before[i] if before is not None and len(before[i]) == size else \
            torch.ones(size, dtype=torch.float64)
        reads = _reads(m, i, size)                                    # (out, k)
        seen = torch.where(reads >= 0, prof[reads.clamp_min(0)], torch.zeros((), dtype=prof.dtype))
        per_tap.append(seen.mean(0))                                  # (k,)
        k = reads.shape[1]
        reach = seen[:, k // 2] if centre else seen.sum(1)            # (out,)
        after.append(reach / reach.mean().clamp_min(1e-300))
    ctx.layers.profiles[ctx.node.name] = after
    return per_tap


def conv_input(ctx: MapContext, m: Any, x: Moments) -> tuple[Moments, Optional[list]]:
    """The input as AutoInit's weight draw sees it (E[x^2] over the taps the conv reads, the
    padding counting as zeros), and `tap_profiles` for `conv_moments`. Once per conv node."""
    per_tap = tap_profiles(ctx, m)
    if per_tap is None:
        return x, None
    centre = ctx.layers.cfg.distribution == "delta-orthogonal"
    frac = math.prod(float(p[len(p) // 2] if centre else p.mean()) for p in per_tap)
    return border(x, frac), per_tap


def conv_moments(ctx: MapContext, m: Any, x: Moments, per_tap: Optional[list],
                 weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Moments:
    """y_j(p) = sum_{c, t real at p} W_jct x_c(p + t) + b_j, pooled over units j and positions p.

    With A_j(p) = sum over real taps of W_jct (summed over c) and S_jc(p) the same per input
    channel: E y = mu * A + b; Var y = local * sum_ct W^2 r_t + shared * sum_c S_jc^2, r_t the
    second-moment profile tap t reads (`tap_profiles`). The spread of mu * A_j(p) + b_j over
    (j, p) adds to the variance; its part constant over positions (per unit) to `shared`."""
    sizes = _spatial(ctx, m)
    w = weight.detach().double().cpu()
    out, cin, taps = w.shape[0], w.shape[1], math.prod(w.shape[2:])
    b = torch.zeros(out, dtype=torch.float64) if bias is None else bias.detach().double().cpu()
    if sizes is None or per_tap is None:
        per_tap = [torch.ones(k, dtype=torch.float64) for k in w.shape[2:]]
        classes = [(torch.ones(w.shape[2:], dtype=torch.bool), 1.0)]
    else:
        classes = _classes(m, sizes)
    r = per_tap[0]
    for p in per_tap[1:]:
        r = torch.outer(r.reshape(-1), p).reshape(*r.shape, -1)
    w = w.reshape(out, cin, taps)
    local_gain = (w.pow(2).sum(1) * r.reshape(1, taps)).sum(1).mean()
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


def _classes(m: Any, sizes: tuple) -> list[tuple[torch.Tensor, float]]:
    """The output positions grouped by which taps are real: (mask over the kernel, count)."""
    per_dim = []
    for i, size in enumerate(sizes):
        counts: dict[tuple, int] = {}
        for row in (_reads(m, i, size) >= 0).tolist():
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
        per_dim.append(list(counts.items()))
    found = []
    for combo in itertools.product(*per_dim):
        mask = torch.tensor(combo[0][0])
        for row, _ in combo[1:]:
            mask = mask.unsqueeze(-1) & torch.tensor(row)
        found.append((mask, float(math.prod(n for _, n in combo))))
    return found
