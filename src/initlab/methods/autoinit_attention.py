"""AutoInit moment map for `nn.MultiheadAttention` (a leaf of the traced graph;
attention blocks by composition): the q/k/v input projections as three Linear layers, each
head's scaled-dot-product attention as for `F.scaled_dot_product_attention`
(`autoinit_pooling.attention_moments`), then the output projection. AutoInit draws the
projections as it draws any Linear: Var(W) = sigma^2 / (E * E[x^2]) for the block of the packed
`in_proj_weight` that reads each input (query, key, value), biases 0; `out_proj` from the
predicted attention output. Masks are ignored (as for F.scaled_dot_product_attention);
`add_bias_kv` tokens and `bias_k`/`bias_v` are left as they are.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .autoinit_layers import linear_moments
from .autoinit_maps import MapContext, Moments, register_moment_map
from .autoinit_pooling import attention_moments


def _projections(ctx: MapContext, m: nn.MultiheadAttention,
                 inputs: list[Moments]) -> list[torch.Tensor]:
    """The q, k, v projection weights: drawn now (first call), else the current values."""
    name, layers = str(ctx.node.target), ctx.layers
    if m._qkv_same_embed_dim:
        packed = m.in_proj_weight
        if id(packed) in layers.done or not packed.requires_grad:
            return list(layers.value(packed).chunk(3))
        blocks = [layers.fresh(f"{name}.in_proj_weight[{p}]", part, x)
                  for p, part, x in zip("qkv", packed.detach().chunk(3), inputs)]
        layers.staged.set(packed, torch.cat(blocks))
        layers.staged.zero(m.in_proj_bias)
        layers.done.add(id(packed))
        return blocks
    weights = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    if id(weights[0]) not in layers.done and weights[0].requires_grad:
        layers.staged.zero(m.in_proj_bias)
    return [layers.weight(f"{name}.{p}_proj_weight", w, None, x)
            for p, w, x in zip("qkv", weights, inputs)]


def multihead_attention(ctx: MapContext) -> tuple:
    """(attention output, attention weights) of `nn.MultiheadAttention`."""
    m: nn.MultiheadAttention = ctx.module
    inputs = [ctx.arg(i, n) for i, n in enumerate(("query", "key", "value"))]
    if not all(isinstance(x, Moments) for x in inputs):
        raise TypeError("query, key and value need known statistics")
    drawn = len(ctx.layers.history)
    q, k, v = (linear_moments(x, w, None) for x, w in zip(inputs, _projections(ctx, m, inputs)))
    for h, y in zip(ctx.layers.history[drawn:], (q, k, v)):      # the blocks drawn just now
        h["output_mean"], h["output_var"] = y.pooled()
    d = m.head_dim
    key_shape = ctx.shape(ctx.raw_args[1] if len(ctx.raw_args) > 1 else ctx.node.kwargs["key"])
    t = key_shape[1] if m.batch_first and len(key_shape) == 3 else key_shape[0]
    p = m.dropout if m.training else 0.0
    a = attention_moments(ctx, q, k, v, d, t, 1 / math.sqrt(d), p)
    name = f"{ctx.node.target}.out_proj"
    w = ctx.layers.weight(name, m.out_proj.weight, m.out_proj.bias, a)
    y = ctx.layers.rescale(name, m.out_proj.weight, linear_moments(a, w, None), ctx.node.name)
    return ctx.layers.output(name, y), None          # the weights output has no statistics


register_moment_map(nn.MultiheadAttention, multihead_attention)
