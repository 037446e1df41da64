"""T-Fixup: Xavier projections, N(0, d^-1/2) embeddings and the depth factors of the formula."""
import copy
import math

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import assert_same, mlp, snapshot

D, VOCAB = 16, 300


class Seq2Seq(nn.Module):
    """nn.Transformer between source / target embeddings and an output projection."""

    def __init__(self, n_enc=2, n_dec=3, separate_qkv=False):
        super().__init__()
        self.src_embed = nn.Embedding(VOCAB, D, padding_idx=0)
        self.tgt_embed = nn.Embedding(VOCAB, D, padding_idx=0)
        self.pos_embed = nn.Embedding(32, D)                         # neither: left alone
        self.transformer = nn.Transformer(D, 2, n_enc, n_dec, 32, dropout=0.0)
        self.out = nn.Linear(D, VOCAB)
        if separate_qkv:  # an attention with separate q/k/v weights (kdim != embed_dim path)
            layer = self.transformer.decoder.layers[0]
            layer.multihead_attn = nn.MultiheadAttention(D, 2, kdim=8, vdim=8)


def factors(n_enc, n_dec):
    """The paper's formula, written independently of the implementation."""
    return dict(enc=0.67 * n_enc ** (-1 / 4), dec=(9 * n_dec) ** (-1 / 4),
                src=(9 * n_enc) ** (-1 / 4), tgt=(9 * n_dec) ** (-1 / 4))


def blocks(attn):
    if attn.in_proj_weight is not None:
        return attn.in_proj_weight.detach().chunk(3)
    return attn.q_proj_weight.detach(), attn.k_proj_weight.detach(), attn.v_proj_weight.detach()


def xavier_bound(w):
    return math.sqrt(6.0 / (w.shape[0] + w.shape[1]))


def test_factors_equal_the_formula_for_the_given_depths():
    a = Seq2Seq()
    b = copy.deepcopy(a)
    initlab.initialize(a, "tfixup", seed=0)                        # N_e = 2, N_d = 3 counted
    initlab.initialize(b, "tfixup", seed=0, n_encoder=5, n_decoder=7)
    fa, fb = factors(2, 3), factors(5, 7)
    enc_a, enc_b = a.transformer.encoder.layers, b.transformer.encoder.layers
    dec_a, dec_b = a.transformer.decoder.layers, b.transformer.decoder.layers

    for la, lb in zip(enc_a, enc_b):
        q, k, v = blocks(la.self_attn)
        qb, kb, vb = blocks(lb.self_attn)
        assert torch.equal(q, qb) and torch.equal(k, kb)                         # not scaled
        for x, y in [(v, vb), (la.self_attn.out_proj.weight, lb.self_attn.out_proj.weight),
                     (la.linear1.weight, lb.linear1.weight),
                     (la.linear2.weight, lb.linear2.weight)]:
            torch.testing.assert_close(x.detach(), y.detach() * fa["enc"] / fb["enc"])
    for la, lb in zip(dec_a, dec_b):
        for attn_a, attn_b in [(la.self_attn, lb.self_attn),
                               (la.multihead_attn, lb.multihead_attn)]:
            q, k, v = blocks(attn_a)
            qb, kb, vb = blocks(attn_b)
            assert torch.equal(q, qb) and torch.equal(k, kb)
            torch.testing.assert_close(v, vb * fa["dec"] / fb["dec"])
            torch.testing.assert_close(attn_a.out_proj.weight,
                                       attn_b.out_proj.weight * fa["dec"] / fb["dec"])
        torch.testing.assert_close(la.linear1.weight, lb.linear1.weight * fa["dec"] / fb["dec"])
    torch.testing.assert_close(a.src_embed.weight, b.src_embed.weight * fa["src"] / fb["src"])
    torch.testing.assert_close(a.tgt_embed.weight, b.tgt_embed.weight * fa["tgt"] / fb["tgt"])


def test_absolute_scales_xavier_and_embeddings():
    model = Seq2Seq(n_enc=2, n_dec=3)
    pos = model.pos_embed.weight.detach().clone()
    norms = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n}
    initlab.initialize(model, "tfixup", seed=1)
    f = factors(2, 3)
    layer = model.transformer.encoder.layers[0]
    q, k, v = blocks(layer.self_attn)
    bound = xavier_bound(q)                                   # each (d, d) block on its own
    for w, scale in [(q, 1.0), (k, 1.0), (v, f["enc"])]:
        assert w.abs().max() <= bound * scale
        assert w.abs().max() > 0.9 * bound * scale
    w1 = layer.linear1.weight.detach()
    assert w1.abs().max() <= xavier_bound(w1) * f["enc"]
    assert model.out.weight.abs().max() <= xavier_bound(model.out.weight)
    for emb, key in [(model.src_embed, "src"), (model.tgt_embed, "tgt")]:
        w = emb.weight.detach()
        assert torch.count_nonzero(w[0]) == 0                           # padding row
        ratio = w[1:].std().item() / (D ** -0.5 * f[key])
        assert abs(ratio - 1) < 0.08, ratio
    assert torch.equal(model.pos_embed.weight, pos)
    for n, p in model.named_parameters():
        if n.endswith("bias") and "norm" not in n:
            assert torch.count_nonzero(p) == 0, n
        if "norm" in n:
            assert torch.equal(p, norms[n]), n


def assert_scaled_xavier(w, factor, name):
    """w was drawn Xavier-uniform, then multiplied by `factor`: every entry within the scaled
    bound, the largest near it, and the std that of U(-b, b), b = factor * sqrt(6 / (in + out))."""
    w, b = w.detach(), xavier_bound(w) * factor
    assert w.abs().max() <= b * (1 + 1e-6), (name, w.abs().max().item() / b)
    assert w.abs().max() >= 0.9 * b, (name, w.abs().max().item() / b)
    ratio = w.std().item() / (b / math.sqrt(3))
    assert abs(ratio - 1) < 0.1, (name, ratio)


@pytest.mark.parametrize("n_enc,n_dec", [(2, 3), (1, 6)])
def test_every_encoder_and_decoder_weight_has_the_papers_absolute_scale(n_enc, n_dec):
    """Against the paper's constants themselves (Huang et al. 2020, Eq. 5-6): encoder
    v / out / ffn x 0.67 N_e^(-1/4), decoder ones x (9 N_d)^(-1/4), q and k plain Xavier."""
    model = Seq2Seq(n_enc=n_enc, n_dec=n_dec)
    initlab.initialize(model, "tfixup", seed=4)
    enc, dec = 0.67 * n_enc ** -0.25, (9 * n_dec) ** -0.25
    layers = [(f"encoder.{i}", enc, lay, [lay.self_attn])
              for i, lay in enumerate(model.transformer.encoder.layers)]
    layers += [(f"decoder.{i}", dec, lay, [lay.self_attn, lay.multihead_attn])
               for i, lay in enumerate(model.transformer.decoder.layers)]
    for name, factor, layer, attns in layers:
        for attn in attns:
            q, k, v = blocks(attn)
            assert_scaled_xavier(q, 1.0, f"{name} q")
            assert_scaled_xavier(k, 1.0, f"{name} k")
            assert_scaled_xavier(v, factor, f"{name} v")
            assert_scaled_xavier(attn.out_proj.weight, factor, f"{name} out_proj")
        assert_scaled_xavier(layer.linear1.weight, factor, f"{name} linear1")
        assert_scaled_xavier(layer.linear2.weight, factor, f"{name} linear2")
    assert_scaled_xavier(model.out.weight, 1.0, "output head")


def test_separate_projection_weights_and_explicit_embedding_roles():
    a = Seq2Seq(separate_qkv=True)
    b = copy.deepcopy(a)
    initlab.initialize(a, "tfixup", seed=2, encoder_embeddings=["src_embed"],
                       decoder_embeddings=["tgt_embed", "pos_embed"])
    initlab.initialize(b, "tfixup", seed=2, encoder_embeddings=["src_embed"],
                       decoder_embeddings=["tgt_embed", "pos_embed"], n_decoder=10)
    attn_a = a.transformer.decoder.layers[0].multihead_attn
    attn_b = b.transformer.decoder.layers[0].multihead_attn
    scale = factors(2, 3)["dec"] / factors(2, 10)["dec"]
    torch.testing.assert_close(attn_a.v_proj_weight, attn_b.v_proj_weight * scale)
    assert torch.equal(attn_a.k_proj_weight, attn_b.k_proj_weight)
    torch.testing.assert_close(a.pos_embed.weight, b.pos_embed.weight * scale)
    assert torch.equal(a.src_embed.weight, b.src_embed.weight)


def test_shared_embedding_takes_the_decoder_factor():
    a = Seq2Seq(n_enc=2, n_dec=3)
    a.tgt_embed.weight = a.src_embed.weight
    b = copy.deepcopy(a)
    initlab.initialize(a, "tfixup", seed=3)
    initlab.initialize(b, "tfixup", seed=3, n_encoder=6)     # N_e does not enter its factor
    assert torch.equal(a.src_embed.weight, b.src_embed.weight)
    ratio = a.src_embed.weight[1:].std().item() / (D ** -0.5 * factors(2, 3)["tgt"])
    assert abs(ratio - 1) < 0.08, ratio


def test_plain_nn_transformer():
    model = nn.Transformer(D, 2, 1, 2, 32)
    initlab.initialize(model, "tfixup", seed=0)
    v = blocks(model.encoder.layers[0].self_attn)[2]
    assert v.abs().max() <= xavier_bound(v) * factors(1, 2)["enc"]


def test_refusals_leave_the_model_unchanged():
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="TransformerEncoderLayer"):
        initlab.initialize(model, "tfixup")
    assert_same(model, before)
    model = Seq2Seq()
    before = snapshot(model)
    with pytest.raises(ValueError, match="not an nn.Embedding"):
        initlab.initialize(model, "tfixup", encoder_embeddings=["out"])
    with pytest.raises(ValueError, match="n_decoder"):
        initlab.initialize(model, "tfixup", n_decoder=0)
    assert_same(model, before)


class DecoderOnly(nn.Module):
    """A decoder stack without an encoder: N_e is not needed, N_d = 2."""

    def __init__(self):
        super().__init__()
        self.tgt_embed = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList(nn.TransformerDecoderLayer(D, 2, 32) for _ in range(2))


def test_decoder_only_model_and_its_depth_checks():
    model = DecoderOnly()
    initlab.initialize(model, "tfixup", seed=0)      # no encoder: nothing to check for N_e
    ratio = model.tgt_embed.weight.std().item() / (D ** -0.5 * factors(1, 2)["tgt"])
    assert abs(ratio - 1) < 0.08, ratio
    before = snapshot(model)
    with pytest.raises(ValueError, match="n_encoder"):
        initlab.initialize(model, "tfixup", n_encoder=0)   # given, so checked
    model.src_embed = nn.Embedding(VOCAB, D)                 # an encoder input, no encoder
    before = snapshot(model)
    with pytest.raises(ValueError, match="an encoder embedding needs N_e >= 1"):
        initlab.initialize(model, "tfixup")
    assert_same(model, before)


def test_embeddings_named_for_one_side_only_and_the_warning_for_the_rest(caplog):
    model = Seq2Seq()
    tgt = model.tgt_embed.weight.detach().clone()
    with caplog.at_level("WARNING", logger="initlab.methods.tfixup"):
        initlab.initialize(model, "tfixup", seed=0, encoder_embeddings=["src_embed"])
    assert torch.equal(model.tgt_embed.weight, tgt)    # named roles only: tgt_embed not matched
    assert "tgt_embed, pos_embed are neither" in caplog.text
    caplog.clear()
    model = Seq2Seq()
    with caplog.at_level("WARNING", logger="initlab.methods.tfixup"):
        initlab.initialize(model, "tfixup", seed=0, encoder_embeddings=["src_embed"],
                           decoder_embeddings=["tgt_embed", "pos_embed"])
    assert caplog.text == ""


def test_every_constant_exactly_with_the_draws_replaced_by_their_scale(monkeypatch):
    """With N(0, s) filling s and Xavier-uniform filling its bound b, every entry is exactly its
    scale times the paper's factor: d^(-1/2) (9N)^(-1/4) for embeddings, b for q and k,
    b 0.67 N_e^(-1/4) in the encoder, b (9 N_d)^(-1/4) in the decoder."""
    model = Seq2Seq(n_enc=2, n_dec=3, separate_qkv=True)
    monkeypatch.setattr(torch.nn.init, "normal_",
                        lambda t, mean=0.0, std=1.0, generator=None: t.fill_(std))
    monkeypatch.setattr(torch.nn.init, "xavier_uniform_", lambda t, gain=1.0, generator=None:
                        t.fill_(gain * math.sqrt(6 / (t.shape[0] + t.shape[1]))))
    initlab.initialize(model, "tfixup")

    def exactly(w, value, name):
        torch.testing.assert_close(w.detach(), torch.full_like(w, value), rtol=1e-6, atol=0,
                                   msg=name)

    exactly(model.src_embed.weight[1:], D ** -0.5 * 18 ** -0.25, "src_embed")
    exactly(model.tgt_embed.weight[1:], D ** -0.5 * 27 ** -0.25, "tgt_embed")
    assert torch.count_nonzero(model.tgt_embed.weight[0]) == 0
    for stack, factor, kind in [(model.transformer.encoder.layers, 0.67 * 2 ** -0.25, "self_attn"),
                                (model.transformer.decoder.layers, 27 ** -0.25, "self_attn"),
                                (model.transformer.decoder.layers, 27 ** -0.25, "multihead_attn")]:
        for i, layer in enumerate(stack):
            attn = getattr(layer, kind)
            q, k, v = blocks(attn)
            exactly(q, xavier_bound(q), f"{kind}.{i} q")
            exactly(k, xavier_bound(k), f"{kind}.{i} k")
            exactly(v, xavier_bound(v) * factor, f"{kind}.{i} v")
            exactly(attn.out_proj.weight, xavier_bound(attn.out_proj.weight) * factor, "out")
            for lin in (layer.linear1, layer.linear2):
                exactly(lin.weight, xavier_bound(lin.weight) * factor, f"{kind}.{i} ffn")


class EncoderOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.src_embed = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(D, 2, 32) for _ in range(2))


def test_depths_given_for_a_missing_stack_are_checked_and_errors_list_the_embeddings():
    model = EncoderOnly()
    before = snapshot(model)
    with pytest.raises(ValueError, match="n_decoder"):
        initlab.initialize(model, "tfixup", n_decoder=0)
    with pytest.raises(ValueError, match=r"\(embeddings: src_embed\)"):
        initlab.initialize(model, "tfixup", decoder_embeddings=["nope"])
    assert_same(model, before)
