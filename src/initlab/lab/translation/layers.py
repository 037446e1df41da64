"""The translation Transformer's layers: PyTorch's encoder and decoder layers with their residual
sums exposed as `initlab.ResidualSum` modules, so Admin and DeepNet can set a skip multiplier.

`EncoderLayer` / `DecoderLayer` subclass `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer`
and keep every sub-module and parameter name (`self_attn`, `multihead_attn`, `linear1/2`,
`norm1/2/3`, ...), so methods written for PyTorch's layers (T-Fixup) see them, and saved GradInit
reports replay. Each sublayer computes

    Post-LN:  x = norm(m * x + dropout(f(x)))        Pre-LN:  x = m * x + dropout(f(norm(x)))

with m the sum's multiplier buffer. At m = 1 (the default) this is PyTorch's layer, operation for
operation (the tests compare outputs on the same weights).

Dropouts, as fairseq names them: `dropout` on each sublayer's output (and the embeddings, in the
model), `attention_dropout` on the attention weights, `activation_dropout` after the FFN's ReLU;
None means `dropout` (PyTorch's layers use one rate for all three).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...core.residual import ResidualSum


def _set_dropouts(layer: nn.Module, attns: list[nn.MultiheadAttention], dropout: float,
                  attention_dropout: Optional[float], activation_dropout: Optional[float]) -> None:
    for attn in attns:      # nn.MultiheadAttention reads its float `dropout` on every call
        attn.dropout = dropout if attention_dropout is None else attention_dropout
    layer.dropout = nn.Dropout(dropout if activation_dropout is None else activation_dropout)


class EncoderLayer(nn.TransformerEncoderLayer):
    """Self-attention and FFN sublayers; residual sums `attn_sum` and `ffn_sum`."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1, *,
                 attention_dropout: Optional[float] = None,
                 activation_dropout: Optional[float] = None, norm_first: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__(d_model, nhead, dim_feedforward, dropout, batch_first=True,
                         norm_first=norm_first, device=device, dtype=dtype)
        _set_dropouts(self, [self.self_attn], dropout, attention_dropout, activation_dropout)
        self.attn_sum = ResidualSum(branch=self.self_attn, stack="encoder")
        self.ffn_sum = ResidualSum(branch=(self.linear1, self.linear2), stack="encoder")

    def forward(self, src: torch.Tensor, src_mask: Optional[torch.Tensor] = None,
                src_key_padding_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        """src (B, S, d); src_key_padding_mask (B, S), True at padding -> (B, S, d)."""
        x = src
        if self.norm_first:
            x = self.attn_sum(x, self._sa_block(self.norm1(x), src_mask, src_key_padding_mask,
                                                is_causal))
            return self.ffn_sum(x, self._ff_block(self.norm2(x)))
        x = self.norm1(self.attn_sum(x, self._sa_block(x, src_mask, src_key_padding_mask,
                                                       is_causal)))
        return self.norm2(self.ffn_sum(x, self._ff_block(x)))


class DecoderLayer(nn.TransformerDecoderLayer):
    """Self-attention, cross-attention and FFN sublayers; sums `self_sum`, `cross_sum`, `ffn_sum`."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1, *,
                 attention_dropout: Optional[float] = None,
                 activation_dropout: Optional[float] = None, norm_first: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__(d_model, nhead, dim_feedforward, dropout, batch_first=True,
                         norm_first=norm_first, device=device, dtype=dtype)
        _set_dropouts(self, [self.self_attn, self.multihead_attn], dropout, attention_dropout,
                      activation_dropout)
        self.self_sum = ResidualSum(branch=self.self_attn, stack="decoder")
        self.cross_sum = ResidualSum(branch=self.multihead_attn, stack="decoder")
        self.ffn_sum = ResidualSum(branch=(self.linear1, self.linear2), stack="decoder")

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                tgt_mask: Optional[torch.Tensor] = None,
                memory_mask: Optional[torch.Tensor] = None,
                tgt_key_padding_mask: Optional[torch.Tensor] = None,
                memory_key_padding_mask: Optional[torch.Tensor] = None,
                tgt_is_causal: bool = False, memory_is_causal: bool = False) -> torch.Tensor:
        """tgt (B, T, d), memory (B, S, d); tgt_mask (T, T) True where masked -> (B, T, d)."""
        x = tgt
        if self.norm_first:
            x = self.self_sum(x, self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask,
                                                tgt_is_causal))
            x = self.cross_sum(x, self._mha_block(self.norm2(x), memory, memory_mask,
                                                  memory_key_padding_mask, memory_is_causal))
            return self.ffn_sum(x, self._ff_block(self.norm3(x)))
        x = self.norm1(self.self_sum(x, self._sa_block(x, tgt_mask, tgt_key_padding_mask,
                                                       tgt_is_causal)))
        x = self.norm2(self.cross_sum(x, self._mha_block(x, memory, memory_mask,
                                                         memory_key_padding_mask,
                                                         memory_is_causal)))
        return self.norm3(self.ffn_sum(x, self._ff_block(x)))
