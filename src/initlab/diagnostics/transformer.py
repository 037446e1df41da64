"""Attention entropy, token rank and residual streams of Transformers, by hooks.

- Attention entropy per head, for every `nn.MultiheadAttention` call. The weights are recomputed
  from the layer's own projections and masks, since Transformer layers call it with
  `need_weights=False`: softmax(q k^T / sqrt(d_head) + masks) per head, then -sum p log p per
  query row, averaged over the rows that see a key (and over non-padding queries in
  self-attention), and the same divided by log(keys seen) (1 = uniform, 0 = one key).
- Token rank per attention layer (a module holding an `nn.MultiheadAttention`, such as
  `nn.TransformerEncoderLayer`): for each sequence's token matrix X (tokens x features, padding
  rows zeroed, which leaves the other singular values as they are), the numerical rank
  #{sigma_i > 1e-3 sigma_1} and the stable rank ||X||_F^2 / sigma_1^2, averaged over sequences.
  Rank collapse, all tokens alike, is stable rank -> 1 (Noci et al., NeurIPS 2022).
- Residual streams of `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer` (those that
  do not build their sums from `initlab.ResidualSum`, which record.py measures): each sublayer's
  output (self-attention, cross-attention, feed-forward) against the stream it is added to: the
  layer's input, then (Post-LN) the previous norm's output or (Pre-LN) the sum.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.residual import ResidualSum
from .record import Sums, first_tensor

RANK_TOLERANCE = 1e-3
TORCH_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def attention_probs(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                    key_padding_mask: Optional[torch.Tensor] = None,
                    attn_mask: Optional[torch.Tensor] = None,
                    is_causal: bool = False) -> torch.Tensor:
    """The attention weights (B, H, Lq, Lk) that `mha(query, key, ...)` uses, in float64."""
    if not mha.batch_first and query.dim() == 3:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    if query.dim() == 2:  # unbatched (L, E)
        query, key = query[None], key[None]
        key_padding_mask = None if key_padding_mask is None else key_padding_mask[None]
    (b, lq, e), lk, h = query.shape, key.shape[1], mha.num_heads
    if mha._qkv_same_embed_dim:
        wq, wk = mha.in_proj_weight[:e], mha.in_proj_weight[e:2 * e]
    else:
        wq, wk = mha.q_proj_weight, mha.k_proj_weight
    bias = mha.in_proj_bias
    bq, bk = (None, None) if bias is None else (bias[:e], bias[e:2 * e])
    q = F.linear(query, wq, bq).double().view(b, lq, h, e // h).transpose(1, 2)  # (B, H, Lq, hd)
    k = F.linear(key, wk, bk).double().view(b, lk, h, e // h).transpose(1, 2)    # (B, H, Lk, hd)
    scores = q @ k.transpose(-2, -1) / math.sqrt(e // h)                         # (B, H, Lq, Lk)
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).triu(1)
    if attn_mask is not None:
        mask = attn_mask.view(b, h, lq, lk) if attn_mask.dim() == 3 else attn_mask
        scores = (scores.masked_fill(mask, -math.inf) if mask.dtype == torch.bool
                  else scores + mask.double())
    if key_padding_mask is not None:
        kpm = key_padding_mask[:, None, None, :]
        scores = (scores.masked_fill(kpm, -math.inf) if kpm.dtype == torch.bool
                  else scores + kpm.double())
    return torch.softmax(scores, dim=-1)


def padding_of(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """True at padded keys, from a bool mask or an additive one (-inf at padding)."""
    if mask is None:
        return None
    return mask if mask.dtype == torch.bool else torch.isneginf(mask)


def token_ranks(x: torch.Tensor, pad: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    """Per sequence of x (B, L, d): numerical rank, stable rank, min(tokens, d); pad (B, L)."""
    x = x.detach().double()
    if pad is not None:
        x = x.masked_fill(pad[..., None], 0.0)
    s = torch.linalg.svdvals(x)                                 # (B, min(L, d)), descending
    top = s[:, :1]
    rank = (s > RANK_TOLERANCE * top).sum(-1).double()
    stable = s.square().sum(-1) / top[:, 0].square()
    tokens = x.shape[1] - (pad.sum(-1) if pad is not None else 0)
    full = torch.clamp(torch.as_tensor(tokens, device=x.device), max=x.shape[2]).double()
    keep = top[:, 0] > 0
    return rank[keep], stable[keep], full.expand_as(rank)[keep]


class HeadSums:
    """Per-head running sums of a statistic over the query rows where `ok` holds."""

    def __init__(self) -> None:
        self.n: Any = 0
        self.s: Any = 0.0

    def add(self, v: torch.Tensor, ok: torch.Tensor) -> None:      # (B, H, Lq) each
        self.n = self.n + ok.sum(dim=(0, 2))
        self.s = self.s + torch.where(ok, v, 0.0).sum(dim=(0, 2))

    @property
    def means(self) -> list[float]:
        if isinstance(self.n, int):
            return []
        return [s / n if n else math.nan for s, n in zip(self.s.tolist(), self.n.tolist())]


class TransformerRecorder:
    """Hooks on every MultiheadAttention, its holder and torch's Transformer layers."""

    def __init__(self, model: nn.Module):
        self.active = True
        self.entropy: dict[str, list[HeadSums]] = {}  # name -> [H per head, H / log(keys)]
        self.ranks: dict[str, list[Sums]] = {}        # name -> [rank, stable rank, full rank]
        self.branches: dict[str, tuple[Sums, Sums]] = {}
        self.branch_modules: set[str] = set()          # the sublayers' weighted modules
        self._pad: dict[str, Optional[torch.Tensor]] = {}
        self._stream: dict[str, Optional[torch.Tensor]] = {}
        self._handles: list[Any] = []
        for name, m in model.named_modules():
            if isinstance(m, nn.MultiheadAttention):
                self._hook(m, self._attention_hook(name, name.rpartition(".")[0]), with_kwargs=True)
            attention = [c for c in m.children() if isinstance(c, nn.MultiheadAttention)]
            if attention:
                self._handles.append(m.register_forward_pre_hook(self._layer_start(name)))
                self._hook(m, self._rank_hook(name or "(model)", name, attention[0].batch_first))
            if isinstance(m, TORCH_LAYERS) and not any(isinstance(c, ResidualSum)
                                                       for c in m.modules()):
                self._watch_sublayers(name, m)  # (ResidualSums are measured as such: record.py)

    def _hook(self, m: nn.Module, fn: Any, with_kwargs: bool = False) -> None:
        self._handles.append(m.register_forward_hook(fn, with_kwargs=with_kwargs))

    def _layer_start(self, name: str):
        def pre(m: nn.Module, args: tuple) -> None:
            x = first_tensor(args)
            self._pad[name] = None
            self._stream[name] = None if x is None else x.detach()
        return pre

    def _attention_hook(self, name: str, holder: str):
        def hook(m: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> None:
            if not self.active:
                return
            get = lambda i, key: args[i] if len(args) > i else kwargs.get(key)  # noqa: E731
            query, key = get(0, "query"), get(1, "key")
            kpm, mask = get(3, "key_padding_mask"), get(5, "attn_mask")
            causal = bool(get(7, "is_causal") or False)
            if m.bias_k is not None or m.add_zero_attn or query is None or key is None:
                return  # extra keys: not measured
            self_attention = query is key
            pad = padding_of(kpm)
            if self_attention and holder in self._pad and self._pad[holder] is None:
                self._pad[holder] = pad
            with torch.no_grad():
                p = attention_probs(m, query.detach(), key.detach(), pad, mask, causal)
            seen = (p > 0).sum(-1)                                          # (B, H, Lq)
            ent = -torch.xlogy(p, p).sum(-1)
            valid = (seen >= 1) & torch.isfinite(ent)
            if self_attention and pad is not None and pad.shape[-1] == valid.shape[-1]:
                valid &= ~pad[:, None, :]
            norm_valid = valid & (seen > 1)
            normed = ent / torch.log(seen.clamp(min=2).double())
            sums = self.entropy.setdefault(name, [HeadSums(), HeadSums()])
            sums[0].add(ent, valid)
            sums[1].add(normed, norm_valid)
        return hook

    def _rank_hook(self, key: str, name: str, batch_first: bool):
        def hook(m: nn.Module, args: tuple, output: Any) -> None:
            x = first_tensor(output)
            if not self.active or x is None or x.dim() != 3:
                return
            x = x if batch_first else x.transpose(0, 1)
            pad = self._pad.get(name)
            if pad is not None and pad.shape != x.shape[:2]:
                pad = None
            sums = self.ranks.setdefault(key, [Sums(), Sums(), Sums()])
            for s, v in zip(sums, token_ranks(x, pad)):
                s.add(v)
        return hook

    def _watch_sublayers(self, name: str, layer: nn.Module) -> None:
        post = not layer.norm_first
        prefix = f"{name}." if name else ""

        def branch(label: str):
            def hook(m: nn.Module, args: tuple, output: Any) -> None:
                out, stream = first_tensor(output), self._stream.get(name)
                if not self.active or out is None or stream is None:
                    return
                b, s = self.branches.setdefault(prefix + label, (Sums(), Sums()))
                b.add(out)
                s.add(stream)
                if not post:
                    self._stream[name] = stream + out.detach()
            return hook

        def norm(m: nn.Module, args: tuple, output: Any) -> None:
            if post:
                self._stream[name] = output.detach()

        for sub in ("self_attn", "multihead_attn", "linear1", "linear2"):
            if hasattr(layer, sub):
                self.branch_modules.add(prefix + sub)
        self._hook(layer.self_attn, branch("self_attn"))
        if isinstance(layer, nn.TransformerDecoderLayer):
            self._hook(layer.multihead_attn, branch("multihead_attn"))
        self._hook(layer.linear2, branch("feedforward"))
        for n in ("norm1", "norm2", "norm3"):
            if hasattr(layer, n):
                self._hook(getattr(layer, n), norm)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
