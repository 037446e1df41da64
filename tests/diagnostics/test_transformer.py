"""Attention entropy, token rank and sublayer streams against computations made here: the
layer's own attention weights (need_weights=True), torch.linalg.svdvals, the sublayers by hand."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from initlab.diagnostics import diagnose
from initlab.diagnostics.transformer import token_ranks

L, D = 6, 16


def token_batches(n: int = 4, size: int = 5, seed: int = 0) -> list:
    """(x (B, L, 4), padding (B, L) True at the end of shorter sequences, targets (B, L))."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(3, L + 1, (size,), generator=g)
        pad = torch.arange(L)[None, :] >= lengths[:, None]
        out.append((torch.randn(size, L, 4, generator=g), pad, torch.randint(0, 3, (size, L), generator=g)))
    return out


def loss(model, batch):
    x, pad, y = batch
    return F.cross_entropy(model(x, pad).reshape(-1, 3), y.reshape(-1))


class Encoder(nn.Module):
    def __init__(self, norm_first: bool = False, batch_first: bool = True):
        super().__init__()
        self.batch_first = batch_first
        self.proj, self.head = nn.Linear(4, D), nn.Linear(D, 3)
        self.layer = nn.TransformerEncoderLayer(D, 2, 32, dropout=0.1, batch_first=batch_first,
                                                norm_first=norm_first)

    def forward(self, x, pad):
        h = self.proj(x)
        h = h if self.batch_first else h.transpose(0, 1)
        h = self.layer(h, src_key_padding_mask=pad)
        return self.head(h if self.batch_first else h.transpose(0, 1))


def rms(ts: list[torch.Tensor]) -> float:
    return float(torch.cat([t.detach().double().flatten() for t in ts]).square().mean().sqrt())


@pytest.mark.parametrize("batch_first", [True, False])
def test_token_rank_matches_svdvals_of_each_sequence_without_its_padding(batch_first):
    torch.manual_seed(0)
    model, data = Encoder(batch_first=batch_first), token_batches()
    d = diagnose(model, data, lr=0.1, loss_fn=loss)
    model.eval()
    ranks, stables, full = [], [], []
    for x, pad, _ in data[:3]:
        h = model.proj(x)
        h = h if batch_first else h.transpose(0, 1)
        out = model.layer(h, src_key_padding_mask=pad)  # with grad: torch's slow path, as diagnose
        out = out if batch_first else out.transpose(0, 1)
        for seq, p in zip(out.detach().double(), pad):
            s = torch.linalg.svdvals(seq[~p])
            ranks.append(float((s > 1e-3 * s[0]).sum()))
            stables.append(float(s.square().sum() / s[0].square()))
            full.append(min(int((~p).sum()), D))
    (stat,) = d.ranks
    assert stat.name == "layer"
    assert stat.rank == pytest.approx(sum(ranks) / len(ranks), rel=1e-9)
    assert stat.stable_rank == pytest.approx(sum(stables) / len(stables), rel=1e-5)
    assert stat.full_rank == pytest.approx(sum(full) / len(full))


def test_token_ranks_of_planted_matrices():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(1, 8, 1, generator=g), torch.randn(1, 1, 5, generator=g)
    rank, stable, full = token_ranks(u * v + 1e-7 * torch.randn(1, 8, 5, generator=g))
    assert rank.item() == 1 and stable.item() == pytest.approx(1.0, abs=1e-6) and full.item() == 5
    eye = torch.eye(5)[None]
    rank, stable, _ = token_ranks(torch.cat([eye, 2 * eye]))   # two sequences
    assert rank.tolist() == [5, 5] and stable.tolist() == pytest.approx([5.0, 5.0])


class Attention(nn.Module):
    """MultiheadAttention called as Transformer layers call it: need_weights=False, masks."""

    def __init__(self, batch_first: bool, float_masks: bool):
        super().__init__()
        self.batch_first, self.float_masks = batch_first, float_masks
        self.proj, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)

    def masks(self, pad):
        causal = torch.ones(L, L, dtype=torch.bool).triu(1)
        if self.float_masks:
            return (torch.zeros(pad.shape).masked_fill(pad, -torch.inf),
                    torch.zeros(L, L).masked_fill(causal, -torch.inf))
        return pad, causal

    def attend(self, x, pad, need_weights=False):
        h = self.proj(x)
        h = h if self.batch_first else h.transpose(0, 1)
        kpm, causal = self.masks(pad)
        return self.mha(h, h, h, key_padding_mask=kpm, attn_mask=causal, need_weights=need_weights,
                        average_attn_weights=False)

    def forward(self, x, pad):
        out = self.attend(x, pad)[0]
        return self.head(out if self.batch_first else out.transpose(0, 1))


@pytest.mark.parametrize("batch_first, float_masks", [(True, False), (False, True)])
def test_attention_entropy_matches_the_layers_own_weights(batch_first, float_masks):
    torch.manual_seed(0)
    model, data = Attention(batch_first, float_masks), token_batches()
    d = diagnose(model, data, lr=0.1, loss_fn=loss)
    ent, norm, n_ent, n_norm = torch.zeros(2), torch.zeros(2), 0, 0
    with torch.no_grad():
        for x, pad, _ in data[:3]:
            w = model.attend(x, pad, need_weights=True)[1].double()       # (B, H, L, L)
            seen = (torch.ones(L, L).tril().bool()[None] & ~pad[:, None, :]).sum(-1)  # (B, L)
            for b in range(w.shape[0]):
                for i in range(L):
                    if pad[b, i]:
                        continue
                    h = -(w[b, :, i].clamp_min(1e-300).log() * w[b, :, i]).sum(-1)  # (H,)
                    ent, n_ent = ent + h, n_ent + 1
                    if seen[b, i] > 1:
                        norm, n_norm = norm + h / torch.log(seen[b, i].double()), n_norm + 1
    (stat,) = d.attention
    assert stat.name == "mha"
    assert stat.entropy == pytest.approx((ent / n_ent).tolist(), rel=1e-5)
    assert stat.normalized == pytest.approx((norm / n_norm).tolist(), rel=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_sublayer_branches_against_their_streams_by_hand(norm_first):
    torch.manual_seed(0)
    model, data = Encoder(norm_first=norm_first), token_batches()
    d = diagnose(model, data, lr=0.1, loss_fn=loss)
    layer = model.layer.eval()
    sa, ff, skip_sa, skip_ff = [], [], [], []
    with torch.no_grad():
        for x, pad, _ in data[:3]:
            h = model.proj(x)
            inner = layer.norm1(h) if norm_first else h
            a = layer.self_attn(inner, inner, inner, key_padding_mask=pad, need_weights=False)[0]
            s1 = h + a if norm_first else layer.norm1(h + a)
            f_in = layer.norm2(s1) if norm_first else s1
            f = layer.linear2(F.relu(layer.linear1(f_in)))
            sa, ff, skip_sa, skip_ff = sa + [a], ff + [f], skip_sa + [h], skip_ff + [s1]
    stats = {b.name: b for b in d.branches}
    assert list(stats) == ["layer.self_attn", "layer.feedforward"]
    assert all(b.source == "sublayer" for b in d.branches)
    assert stats["layer.self_attn"].ratio == pytest.approx(rms(sa) / rms(skip_sa), rel=1e-5)
    assert stats["layer.feedforward"].ratio == pytest.approx(rms(ff) / rms(skip_ff), rel=1e-5)
    assert not any(s.in_branch is False and s.name.startswith("layer.") and s.weighted
                   for s in d.layers)


def test_decoder_layers_give_three_sublayers():
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.head = nn.Linear(4, D), nn.Linear(D, 3)
            self.layer = nn.TransformerDecoderLayer(D, 2, 32, dropout=0.0, batch_first=True)

        def forward(self, x, pad):
            h = self.proj(x)
            return self.head(self.layer(h, h, memory_key_padding_mask=pad))

    d = diagnose(Decoder(), token_batches(), lr=0.1, loss_fn=loss)
    assert [b.name for b in d.branches] == ["layer.self_attn", "layer.multihead_attn",
                                            "layer.feedforward"]
    assert [a.name for a in d.attention] == ["layer.self_attn", "layer.multihead_attn"]
