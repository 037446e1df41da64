"""Greedy and beam-search decoding for `TranslationTransformer`, one token at a time.

Decoding is incremental: each decoder layer keeps the inputs it has seen (B, t, d), and a new
position attends to them directly, so a step costs one position instead of the whole prefix.
For one new position this is exactly the causal full forward pass (the tests compare the two);
it reads the decoder layer's own sub-modules (self_attn, multihead_attn, linear1/2, norm1/2/3,
activation, norm_first, and the residual sums self_sum, cross_sum, ffn_sum). Both functions
run in eval mode and restore the mode.
"""
from __future__ import annotations

import math

import torch

from .data import BOS, EOS, PAD
from .layers import DecoderLayer
from .model import TranslationTransformer


def _layer_step(layer: DecoderLayer, x: torch.Tensor, seen: torch.Tensor,
                memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """One decoder layer for the newest position x (N, 1, d), given all its inputs `seen`
    (N, t, d, x last) -- no mask needed: the newest position may see every earlier one."""
    def sa(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return layer.self_attn(q, kv, kv, need_weights=False)[0]

    def ca(q: torch.Tensor) -> torch.Tensor:
        return layer.multihead_attn(q, memory, memory, key_padding_mask=pad,
                                    need_weights=False)[0]

    def ff(h: torch.Tensor) -> torch.Tensor:
        return layer.linear2(layer.activation(layer.linear1(h)))

    if layer.norm_first:   # Pre-LN: m x + f(norm(x))
        x = layer.self_sum(x, sa(layer.norm1(x), layer.norm1(seen)))
        x = layer.cross_sum(x, ca(layer.norm2(x)))
        return layer.ffn_sum(x, ff(layer.norm3(x)))
    x = layer.norm1(layer.self_sum(x, sa(x, seen)))  # Post-LN: norm(m x + f(x))
    x = layer.norm2(layer.cross_sum(x, ca(x)))
    return layer.norm3(layer.ffn_sum(x, ff(x)))


class IncrementalDecoder:
    """Decoder state for N hypotheses over a fixed encoder memory (N, S, d)."""

    def __init__(self, model: TranslationTransformer, memory: torch.Tensor, pad: torch.Tensor):
        self.model, self.memory, self.pad = model, memory, pad
        self.seen: list[torch.Tensor | None] = [None] * len(model.decoder)
        self.t = 0

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed tokens (N,) at the next position; logits (N, V) for the one after."""
        x = self.model._embed(self.model.tgt_embed, tokens[:, None], start=self.t)  # (N, 1, d)
        for i, layer in enumerate(self.model.decoder):
            prev = self.seen[i]
            self.seen[i] = x if prev is None else torch.cat([prev, x], 1)
            x = _layer_step(layer, x, self.seen[i], self.memory, self.pad)
        self.t += 1
        return self.model.output(x[:, 0])

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep hypotheses `rows` (N,), e.g. after a beam-search step."""
        self.seen = [s[rows] for s in self.seen if s is not None]
        self.memory, self.pad = self.memory[rows], self.pad[rows]


def _max_new(src: torch.Tensor, model: TranslationTransformer, max_len: int | None) -> int:
    limit = max_len if max_len is not None else int(1.5 * src.shape[1]) + 5
    return max(1, min(limit, model.cfg.max_len - 1))


@torch.no_grad()
def greedy_decode(model: TranslationTransformer, src: torch.Tensor,
                  max_len: int | None = None) -> list[list[int]]:
    """The argmax token at each step, per sentence; ids without BOS/EOS."""
    was_training = model.training
    model.eval()
    state = IncrementalDecoder(model, *model.encode(src))
    tok = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    out = []
    for _ in range(_max_new(src, model, max_len)):
        tok = state.step(tok).argmax(-1).masked_fill(done, PAD)
        out.append(tok)
        done |= tok.eq(EOS)
        if done.all():
            break
    model.train(was_training)
    return [_strip(s) for s in torch.stack(out, 1).tolist()]


def _strip(ids: list[int]) -> list[int]:
    end = next((i for i, t in enumerate(ids) if t in (EOS, PAD)), len(ids))
    return ids[:end]


@torch.no_grad()
def beam_search(model: TranslationTransformer, src: torch.Tensor, beam: int = 4,
                max_len: int | None = None, length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search; each sentence keeps `beam` live hypotheses and ends when `beam` hypotheses
    have emitted EOS (as in fairseq). Finished hypotheses rank by log p / length**length_penalty.
    With beam=1 it picks the same tokens as `greedy_decode`."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    was_training = model.training
    model.eval()
    b, k, dev = src.shape[0], beam, src.device
    memory, pad = model.encode(src)
    state = IncrementalDecoder(model, memory.repeat_interleave(k, 0), pad.repeat_interleave(k, 0))
    seqs = torch.full((b * k, 1), BOS, dtype=torch.long, device=dev)             # (B k, t)
    scores = torch.full((b, k), -math.inf, device=dev)
    scores[:, 0] = 0.0                      # one live hypothesis at the start
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    steps = _max_new(src, model, max_len)
    for t in range(steps):
        logp = state.step(seqs[:, -1]).float().log_softmax(-1)                      # (B k, V)
        v = logp.shape[-1]
        top, idx = (scores.reshape(-1, 1) + logp).reshape(b, k * v).topk(2 * k, dim=1)  # (B, 2k)
        src_beam, tok = idx // v, idx % v
        eos = tok.eq(EOS) | (t == steps - 1)   # at the length limit every hypothesis ends
        for i, j in (eos[:, :k] & top[:, :k].isfinite()).nonzero().tolist():
            if len(finished[i]) < k:
                ids = seqs[i * k + src_beam[i, j], 1:].tolist()
                ids = ids + [int(tok[i, j])] if tok[i, j] != EOS else ids
                finished[i].append((float(top[i, j]) / (len(ids) + 1) ** length_penalty, ids))
        if all(len(f) >= k for f in finished):
            break
        # the k best candidates that did not end become the live hypotheses
        keep = (torch.arange(2 * k, device=dev) + eos * 2 * k).argsort(1)[:, :k]    # (B, k)
        rows = (src_beam.gather(1, keep) + torch.arange(b, device=dev)[:, None] * k).reshape(-1)
        seqs = torch.cat([seqs[rows], tok.gather(1, keep).reshape(-1, 1)], 1)
        state.reorder(rows)
        done = torch.tensor([len(f) >= k for f in finished], device=dev)
        scores = top.gather(1, keep).masked_fill(done[:, None], -math.inf)
    model.train(was_training)
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]
