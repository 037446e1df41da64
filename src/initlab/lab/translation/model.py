"""An encoder-decoder Transformer for translation (Vaswani et al., "Attention is all you need",
NeurIPS 2017), with a Post-LN / Pre-LN switch (decoding: `decoding.py`).

The layers (`layers.py`) are PyTorch's `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer`
(`norm_first=True` for Pre-LN) with each residual sum an `initlab.ResidualSum` whose multiplier
is 1 unless Admin or DeepNet sets it; methods written for `nn.Transformer` (T-Fixup) see them.
Around them: token embeddings scaled by sqrt(d) plus sinusoidal positions, dropout, a final
LayerNorm on each stack for Pre-LN only (Post-LN layers end in one already), and an output
projection. `shared_embeddings=True` ties the source and target embeddings and the output
projection into one tensor, the module `tgt_embed` (so T-Fixup gives it the decoder's factor, as in
the paper's shared setting); otherwise `src_embed` and `tgt_embed` are separate, and the output
projection is `tgt_embed` with `tie_output=True` (fairseq's `--share-decoder-input-output-embed`),
else its own `generator`.

`reset_parameters` is the standard Transformer init (the registry's "default" for this model):
Xavier-uniform for every matrix (fairseq and `nn.Transformer`), biases 0, embeddings N(0, d^-1/2)
with the padding row 0, LayerNorm (1, 0), residual multipliers 1.

Shapes: src (B, S), tgt_in (B, T) int64 ids with PAD = 0; logits (B, T, V).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...core.residual import ResidualSum
from .data import PAD
from .layers import DecoderLayer, EncoderLayer


@dataclass
class TransformerConfig:
    vocab_size: int
    d_model: int = 128
    nhead: int = 4
    ffn: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1             # embeddings and each sublayer's output
    attention_dropout: Optional[float] = None   # on attention weights; None: `dropout`
    activation_dropout: Optional[float] = None  # after the FFN's ReLU; None: `dropout`
    norm: str = "post"               # "post" (the original Transformer) or "pre"
    shared_embeddings: bool = True   # one tensor for src/tgt embeddings and output projection
    tie_output: bool = False         # unshared only: the output projection is tgt_embed's tensor
    max_len: int = 256

    def validate(self) -> None:
        if self.norm not in ("post", "pre"):
            raise ValueError(f"norm must be 'post' or 'pre', got {self.norm!r}")
        if self.d_model % self.nhead:
            raise ValueError(f"d_model={self.d_model} must be divisible by nhead={self.nhead}")
        if min(self.vocab_size, self.d_model, self.ffn, self.encoder_layers,
               self.decoder_layers, self.max_len) < 1:
            raise ValueError("sizes and layer counts must be >= 1")
        for p in (self.dropout, self.attention_dropout, self.activation_dropout):
            if p is not None and not 0 <= p < 1:
                raise ValueError(f"dropout rates must lie in [0, 1), got {p!r}")


def sinusoids(length: int, d: int) -> torch.Tensor:
    """(length, d) positional encodings: sin on even, cos on odd channels (Vaswani et al. §3.5)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float64) / d)
    out = torch.zeros(length, d, dtype=torch.float64)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq[: d // 2])
    return out.float()


class TranslationTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        kw = dict(device=device, dtype=dtype)
        d, pre = cfg.d_model, cfg.norm == "pre"
        # Shared: one module, registered once. (A module registered under two names comes back
        # holding the substituted tensor after torch.func.functional_call, which GradInit uses.)
        self.tgt_embed = nn.Embedding(cfg.vocab_size, d, padding_idx=PAD, **kw)
        self.src_embed = (None if cfg.shared_embeddings
                          else nn.Embedding(cfg.vocab_size, d, padding_idx=PAD, **kw))
        layer = dict(d_model=d, nhead=cfg.nhead, dim_feedforward=cfg.ffn, dropout=cfg.dropout,
                     attention_dropout=cfg.attention_dropout,
                     activation_dropout=cfg.activation_dropout, norm_first=pre, **kw)
        self.encoder = nn.ModuleList(EncoderLayer(**layer) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(**layer) for _ in range(cfg.decoder_layers))
        self.encoder_norm = nn.LayerNorm(d, **kw) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d, **kw) if pre else nn.Identity()
        self.generator = (None if cfg.shared_embeddings or cfg.tie_output
                          else nn.Linear(d, cfg.vocab_size, bias=False, **kw))
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("positions", sinusoids(cfg.max_len, d).to(device), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier-uniform matrices, zero biases, N(0, d^-1/2) embeddings (padding row 0),
        residual multipliers 1."""
        for m in self.modules():
            if isinstance(m, ResidualSum):
                m.multiplier.fill_(1.0)
        for name, p in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(p, std=self.cfg.d_model ** -0.5)
                p[PAD] = 0
            elif p.dim() > 1:
                nn.init.xavier_uniform_(p)   # MultiheadAttention's packed (3d, d) as one matrix,
            elif "norm" in name and name.endswith("weight"):  # as nn.Transformer does
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def _embed(self, emb: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Embeddings of ids (B, L) at positions start .. start+L-1: (B, L, d)."""
        end = start + ids.shape[1]
        if end > self.cfg.max_len:
            raise ValueError(f"sequence of {end} tokens exceeds max_len={self.cfg.max_len}")
        x = emb(ids) * math.sqrt(self.cfg.d_model) + self.positions[start:end].to(emb.weight)
        return self.dropout(x)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder states (..., d) -> logits (..., V), through the final norm (Pre-LN)."""
        weight = self.tgt_embed.weight if self.generator is None else self.generator.weight
        return F.linear(self.decoder_norm(x), weight)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory (B, S, d), source padding mask (B, S), True at PAD)."""
        pad = src.eq(PAD)
        x = self._embed(self.tgt_embed if self.src_embed is None else self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, src_key_padding_mask=pad)
        return self.encoder_norm(x), pad

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor,
               src_pad: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V). Position t sees tgt_in[:, :t+1] only (causal mask); padding in
        tgt_in is always after the tokens, so the causal mask already keeps it out."""
        t = tgt_in.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).triu(1)  # True: masked
        x = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder:
            x = layer(x, memory, tgt_mask=causal, memory_key_padding_mask=src_pad)
        return self.output(x)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, pad = self.encode(src)
        return self.decode(tgt_in, memory, pad)
