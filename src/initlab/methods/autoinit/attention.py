"""Moment map of `nn.MultiheadAttention` (a leaf of the traced graph).

Contract: the query, key and value projections are drawn as three Linear layers, each from its
own input's statistics (the blocks of a packed `in_proj_weight` one by one), their biases zeroed;
attention itself as for `F.scaled_dot_product_attention` (`pooling.attention_moments`), with the
causal flag, `attn_mask` and `key_padding_mask` counted by the keys each query may see; then
`out_proj` from the attention output's statistics. `add_bias_kv` tokens are left as they are.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .context import MapContext
from .layers import draw, outputs, weighted
from .pooling import attention_moments, key_counts
from .registry import register_moment_map
from .statistics import Moments


def _projections(ctx: MapContext, m: nn.MultiheadAttention, inputs: list[Moments],
                 shapes: list[tuple[int, ...]]) -> list[Moments]:
    """The statistics of q, k, v after their projections (drawing them on the first call)."""
    name, plan = ctx.name, ctx.weights
    if m._qkv_same_embed_dim:
        packed = m.in_proj_weight
        blocks = plan.value(packed).detach().double().cpu().chunk(3)
        if plan.settled(packed):
            return [outputs(x, s, None, b, None) for b, x, s in zip(blocks, inputs, shapes)]
        drawn = [draw(ctx, f"{name}.in_proj_weight[{p}]", b, x, s, None)
                 for p, b, x, s in zip("qkv", blocks, inputs, shapes)]
        plan.stage(packed, torch.cat([w for w, _ in drawn]))
        plan.zero(m.in_proj_bias)
        return [y for _, y in drawn]
    weights = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    if not plan.settled(weights[0]):
        plan.zero(m.in_proj_bias)
    return [weighted(ctx, f"{name}.{p}_proj_weight", w, None, x, shape=s)
            for p, w, x, s in zip("qkv", weights, inputs, shapes)]


def multihead_attention(ctx: MapContext) -> Any:
    """(attention output, attention weights) of `nn.MultiheadAttention`."""
    m: nn.MultiheadAttention = ctx.module
    raw = [ctx.raw_arg(i, n) for i, n in enumerate(("query", "key", "value"))]
    inputs = [ctx.arg(i, n) for i, n in enumerate(("query", "key", "value"))]
    if not all(isinstance(x, Moments) for x in inputs):
        return NotImplemented
    full = [ctx.shape(r) for r in raw]
    q, k, v = _projections(ctx, m, inputs, [tuple(s[1:]) for s in full])
    seq = 1 if m.batch_first else 0
    t_q, t_k = full[0][seq], full[1][seq]
    mask = ctx.value(ctx.raw_arg(4, "attn_mask"))
    padding = ctx.value(ctx.raw_arg(3, "key_padding_mask"))
    if isinstance(padding, torch.Tensor):
        keep = ~padding if padding.dtype == torch.bool else torch.isfinite(padding)
        mask = keep.reshape(keep.shape[0], 1, 1, t_k)
    causal = bool(ctx.value(ctx.raw_arg(6, "is_causal", False)))
    counts = key_counts(mask, causal, t_q, t_k)
    d = m.head_dim
    a = attention_moments(ctx, q, k, v, d, counts, 1 / math.sqrt(d),
                          m.dropout if m.training else 0.0, keys=-2 if m.batch_first else -1)
    y = weighted(ctx, f"{ctx.name}.out_proj", m.out_proj.weight, m.out_proj.bias, a,
                 shape=tuple(full[0][1:-1]) + (m.embed_dim,))
    return y, None


register_moment_map(nn.MultiheadAttention, multihead_attention, per_channel=True)
