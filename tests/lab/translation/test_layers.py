"""The translation layers: with multiplier 1 they compute what PyTorch's layers compute on the same
weights (eval and train mode, Post-LN and Pre-LN); a multiplier weights the residual stream; the
state dicts of PyTorch's layers load; the three dropouts go where fairseq puts them."""
import pytest
import torch
from torch import nn

from initlab.lab.translation.layers import DecoderLayer, EncoderLayer

pytestmark = pytest.mark.usefixtures("one_thread")

D, H, F = 16, 2, 32


def pair(ours_cls, theirs_cls, norm_first, dropout):
    torch.manual_seed(0)
    theirs = theirs_cls(D, H, F, dropout, batch_first=True, norm_first=norm_first)
    ours = ours_cls(D, H, F, dropout, norm_first=norm_first)
    ours.load_state_dict(theirs.state_dict())     # no multiplier keys: they load as 1
    return ours, theirs


def run_both(ours, theirs, call, train):
    ours.train(train), theirs.train(train)
    torch.manual_seed(5)
    a = call(ours)
    torch.manual_seed(5)           # the same dropout draws, in the same order
    b = call(theirs)
    return a, b


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_encoder_layer_is_pytorchs_at_multiplier_one(norm_first, train):
    ours, theirs = pair(EncoderLayer, nn.TransformerEncoderLayer, norm_first, dropout=0.2)
    x = torch.randn(3, 7, D)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    a, b = run_both(ours, theirs, lambda m: m(x, src_key_padding_mask=pad), train)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert float(ours.attn_sum.multiplier) == float(ours.ffn_sum.multiplier) == 1.0


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_decoder_layer_is_pytorchs_at_multiplier_one(norm_first, train):
    ours, theirs = pair(DecoderLayer, nn.TransformerDecoderLayer, norm_first, dropout=0.2)
    x, memory = torch.randn(3, 6, D), torch.randn(3, 7, D)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 4:] = True
    a, b = run_both(ours, theirs, lambda m: m(x, memory, tgt_mask=causal,
                                              memory_key_padding_mask=pad), train)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_the_multiplier_weights_the_residual_stream():
    torch.manual_seed(0)
    layer = EncoderLayer(D, H, F, 0.0).eval()
    layer.attn_sum.multiplier.fill_(2.5)
    layer.ffn_sum.multiplier.fill_(0.5)
    x = torch.randn(2, 5, D)
    with torch.no_grad():   # by hand: norm(m x + f(x)) twice
        h = layer.norm1(2.5 * x + layer.self_attn(x, x, x, need_weights=False)[0])
        expected = layer.norm2(0.5 * h + layer.linear2(torch.relu(layer.linear1(h))))
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    assert "attn_sum.multiplier" in layer.state_dict()
    assert not any("multiplier" in n for n, _ in layer.named_parameters())  # never trained


def test_fairseq_dropouts():
    enc = EncoderLayer(D, H, F, 0.3, attention_dropout=0.1, activation_dropout=0.05)
    assert enc.dropout1.p == enc.dropout2.p == 0.3
    assert enc.self_attn.dropout == 0.1 and enc.dropout.p == 0.05
    dec = DecoderLayer(D, H, F, 0.3, attention_dropout=0.1)
    assert dec.self_attn.dropout == dec.multihead_attn.dropout == 0.1
    assert dec.dropout.p == 0.3 and dec.dropout3.p == 0.3     # activation: None -> dropout
