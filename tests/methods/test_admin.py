"""Admin: omega equals a hand computation of the profiled variances (a hand-built Post-LN net and
the lab's Transformer), the encoder and decoder chains each start at 1, refusals leave the model
unchanged."""
import math

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import assert_same, snapshot
from initlab.lab.translation.data import PAD
from initlab.lab.translation.model import TransformerConfig, TranslationTransformer
from initlab.lab.translation.training import seq2seq_loss

D = 8


class PostLN(nn.Module):
    """x_i = LN(omega_i x_{i-1} + tanh(W_i x_{i-1})), three sublayers, a user's own model."""

    def __init__(self, n=3, with_sums=True):
        super().__init__()
        self.f = nn.ModuleList(nn.Linear(D, D) for _ in range(n))
        self.norms = nn.ModuleList(nn.LayerNorm(D) for _ in range(n))
        self.sums = nn.ModuleList(initlab.ResidualSum(branch=f) for f in self.f) if with_sums \
            else None
        self.head = nn.Linear(D, 3)

    def forward(self, x):
        for i, (f, norm) in enumerate(zip(self.f, self.norms)):
            fx = torch.tanh(f(x))
            x = norm(self.sums[i](x, fx) if self.sums is not None else x + fx)
        return self.head(x)


def hand_omegas(model, x):
    """The authors' recursion, by hand: omega_1 = 1, omega_{i+1}^2 = Var[omega_i x] + Var[f_i(x)]."""
    omegas, omega = [], 1.0
    with torch.no_grad():
        for f, norm in zip(model.f, model.norms):
            fx = torch.tanh(f(x))
            omegas.append(omega)
            x_var = ((omega * x - (omega * x).mean()) ** 2).mean().item()
            f_var = ((fx - fx.mean()) ** 2).mean().item()
            x = norm(omega * x + fx)
            omega = math.sqrt(x_var + f_var)
    return omegas


def test_omega_is_the_hand_computed_profile():
    torch.manual_seed(0)
    model = PostLN()
    x = 3 * torch.randn(16, D) + 1
    expected = hand_omegas(model, x)
    report = initlab.initialize(model, "admin", data=[(x, torch.zeros(16, dtype=torch.long))])
    got = [float(s.multiplier) for s in model.sums]
    assert got == pytest.approx(expected, rel=1e-5)
    assert expected[1] > 2 and expected[2] != expected[1]      # not a trivial profile
    assert [h["multiplier"] for h in report.history] == pytest.approx(expected, rel=1e-5)
    assert report.kind == "residuals" and "model.sums.1" not in report.summary()
    assert "sums.1: " in report.summary()
    with pytest.raises(ValueError, match="buffers of the model"):
        initlab.apply(PostLN(), report)


def tiny_transformer(**kw):
    torch.manual_seed(0)
    cfg = dict(d_model=16, nhead=2, ffn=32, encoder_layers=2, decoder_layers=2, dropout=0.0)
    return TranslationTransformer(TransformerConfig(30, **{**cfg, **kw}))


def batch():
    g = torch.Generator().manual_seed(3)
    src = torch.randint(4, 30, (5, 7), generator=g)
    src[2, 5:] = PAD
    return src, torch.randint(4, 30, (5, 6), generator=g)


def test_omega_on_the_lab_transformer_per_stack():
    model = tiny_transformer()
    src, tgt = batch()
    expected, omega = [], 1.0          # the encoder chain, by hand through the layers' modules
    with torch.no_grad():
        x = model._embed(model.tgt_embed, src)
        pad = src.eq(PAD)
        for layer in model.encoder:
            for sub, norm in (("attn", layer.norm1), ("ffn", layer.norm2)):
                fx = (layer.self_attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]
                      if sub == "attn" else layer.linear2(torch.relu(layer.linear1(x))))
                expected.append(omega)
                new = math.sqrt((omega * x).var(unbiased=False) + fx.var(unbiased=False))
                x, omega = norm(omega * x + fx), new
    initlab.initialize(model, "admin", data=[(src, tgt)], loss_fn=seq2seq_loss)
    encoder = [float(s) for layer in model.encoder for s in (layer.attn_sum.multiplier,
                                                             layer.ffn_sum.multiplier)]
    assert encoder == pytest.approx(expected, rel=1e-5)
    decoder = [float(s.multiplier) for layer in model.decoder
               for s in (layer.self_sum, layer.cross_sum, layer.ffn_sum)]
    assert decoder[0] == 1.0 and all(b > a for a, b in zip(decoder, decoder[1:]))


def test_refusals_leave_the_model_unchanged():
    data = [(torch.randn(4, D), torch.zeros(4, dtype=torch.long))]
    plain = PostLN(with_sums=False)
    before = snapshot(plain)
    with pytest.raises(ValueError, match="ResidualSum"):
        initlab.initialize(plain, "admin", data=data)
    assert_same(plain, before)

    pre = tiny_transformer(norm="pre")
    before = snapshot(pre)
    with pytest.raises(ValueError, match="Post-LN"):
        initlab.initialize(pre, "admin", data=[batch()], loss_fn=seq2seq_loss)
    assert_same(pre, before)


def test_a_failure_after_the_pass_restores_the_multipliers():
    model = tiny_transformer(dropout=0.1).eval()
    before = snapshot(model)

    def loss_then_fail(m, b):
        seq2seq_loss(m, b)         # the profile has written every multiplier by now
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory") as info:
        initlab.initialize(model, "admin", data=[batch()], loss_fn=loss_then_fail)
    assert "left unchanged" in str(getattr(info.value, "__notes__", ""))
    assert_same(model, before)     # multipliers back to 1, eval mode kept


def test_a_sum_the_forward_pass_skips_is_refused():
    model = PostLN()
    model.spare = initlab.ResidualSum()
    before = snapshot(model)
    with pytest.raises(ValueError, match="never reached spare"):
        initlab.initialize(model, "admin", data=[(torch.randn(4, D), torch.zeros(4).long())])
    assert_same(model, before)
