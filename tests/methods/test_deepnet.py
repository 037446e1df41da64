"""DeepNet: alpha and beta are the paper's formulas for encoder-decoder, encoder-only and
decoder-only models; the multipliers get alpha and the branch weights Xavier-normal draws of gain
beta (q and k gain 1); nothing else moves; refusals leave the model unchanged."""
import math

import pytest
import torch
from torch import nn

import initlab
from helpers.methods import assert_same, snapshot
from initlab.lab.translation.layers import DecoderLayer, EncoderLayer
from initlab.lab.translation.model import TransformerConfig, TranslationTransformer
from initlab.methods.deepnet import deepnorm_constants


def paper(n, m):
    """Wang et al. 2022, Table 1, written out: (alpha, beta) per stack."""
    if n and m:
        return {"encoder": (0.81 * (n ** 4 * m) ** (1 / 16), 0.87 * (n ** 4 * m) ** (-1 / 16)),
                "decoder": ((3 * m) ** (1 / 4), (12 * m) ** (-1 / 4))}
    if n:
        return {"encoder": ((2 * n) ** (1 / 4), (8 * n) ** (-1 / 4))}
    return {"decoder": ((2 * m) ** (1 / 4), (8 * m) ** (-1 / 4))}


@pytest.mark.parametrize("n,m", [(6, 6), (18, 6), (3, 0), (0, 12), (100, 100)])
def test_constants_are_the_papers(n, m):
    got = {k: (c.alpha, c.beta) for k, c in deepnorm_constants(n, m).items()}
    assert got.keys() == paper(n, m).keys()
    for k, (alpha, beta) in paper(n, m).items():
        assert got[k] == pytest.approx((alpha, beta), rel=1e-12)
    assert deepnorm_constants(6, 6)["encoder"].alpha == pytest.approx(0.81 * 7776 ** 0.0625)


D, FFN = 64, 256


def encoder_decoder(n=3, m=2, **kw):
    torch.manual_seed(0)
    return TranslationTransformer(TransformerConfig(50, d_model=D, nhead=4, ffn=FFN,
                                                    encoder_layers=n, decoder_layers=m, **kw))


def std_ratio(w, gain):
    """Empirical std over the Xavier-normal std of gain `gain`."""
    fan_out, fan_in = w.shape
    return w.std().item() / (gain * math.sqrt(2 / (fan_in + fan_out)))


def check_stack(layers, alpha, beta):
    for layer in layers:
        sums = [s for s in layer.modules() if isinstance(s, initlab.ResidualSum)]
        assert [float(s.multiplier) for s in sums] == pytest.approx([alpha] * len(sums))
        attns = [layer.self_attn] + ([layer.multihead_attn] if hasattr(layer, "multihead_attn")
                                     else [])
        for attn in attns:
            q, k, v = attn.in_proj_weight.detach().chunk(3)
            for w, gain in ((q, 1.0), (k, 1.0), (v, beta), (attn.out_proj.weight, beta)):
                assert std_ratio(w.detach(), gain) == pytest.approx(1, abs=0.12)
        for lin in (layer.linear1, layer.linear2):
            assert std_ratio(lin.weight.detach(), beta) == pytest.approx(1, abs=0.12)


def test_encoder_decoder(tmp_path):
    model = encoder_decoder()
    untouched = {n: p.detach().clone() for n, p in model.named_parameters()
                 if "embed" in n or "norm" in n or "bias" in n}
    report = initlab.initialize(model, "deepnet", seed=0)
    expected = paper(3, 2)
    check_stack(model.encoder, *expected["encoder"])
    check_stack(model.decoder, *expected["decoder"])
    assert all(torch.equal(model.get_parameter(n), p) for n, p in untouched.items())
    by_stack = {h["stack"]: (h["layers"], h["multiplier"], h["gain"]) for h in report.history}
    assert by_stack == {"encoder": (3, *expected["encoder"]), "decoder": (2, *expected["decoder"])}
    assert len(report.history) == 3 * 2 + 2 * 3 and "encoder.0.attn_sum" in report.summary()
    report.plot(tmp_path / "multipliers.png")
    assert (tmp_path / "multipliers.png").read_bytes()[:4] == b"\x89PNG"


def test_encoder_only_and_decoder_only():
    torch.manual_seed(0)
    encoder = nn.Sequential(*(EncoderLayer(D, 4, FFN, 0.1) for _ in range(4)))
    initlab.initialize(encoder, "deepnet", seed=0)
    check_stack(encoder, *paper(4, 0)["encoder"])
    decoder = nn.ModuleList(DecoderLayer(D, 4, FFN, 0.1) for _ in range(5))
    initlab.initialize(decoder, "deepnet", seed=0)
    check_stack(decoder, *paper(0, 5)["decoder"])


def test_depths_can_be_given_and_draws_are_seeded():
    a, b = encoder_decoder(), encoder_decoder()
    initlab.initialize(a, "deepnet", seed=3, n_encoder=12, n_decoder=12)
    initlab.initialize(b, "deepnet", seed=3, n_encoder=12, n_decoder=12)
    assert float(a.encoder[0].attn_sum.multiplier) == pytest.approx(paper(12, 12)["encoder"][0])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


class Loose(nn.Module):
    """A user's block whose sum names no stack and sits in no PyTorch Transformer layer."""

    def __init__(self, stack=None, branch=True):
        super().__init__()
        self.f = nn.Linear(64, 64)
        self.norm = nn.LayerNorm(64)
        self.sum = initlab.ResidualSum(branch=self.f if branch else None, stack=stack)

    def forward(self, x):
        return self.norm(self.sum(x, self.f(x)))


@pytest.mark.parametrize("model,settings,match", [
    (lambda: nn.Sequential(nn.Linear(8, 8)), {}, "ResidualSum"),
    (lambda: encoder_decoder(norm="pre"), {}, "Post-LN"),
    (lambda: Loose(), {}, "stack"),
    (lambda: Loose("decoder"), {}, "n_decoder="),
    (lambda: Loose("decoder", branch=False), {"n_decoder": 2}, "name no branch"),
    (lambda: encoder_decoder(), {"n_encoder": 0}, "n_encoder must be an integer >= 1"),
])
def test_refusals_leave_the_model_unchanged(model, settings, match):
    m = model()
    before = snapshot(m)
    with pytest.raises(ValueError, match=match):
        initlab.initialize(m, "deepnet", **settings)
    assert_same(m, before)


def test_a_user_block_with_explicit_depth():
    block = Loose("decoder")
    initlab.initialize(block, "deepnet", n_decoder=24, seed=0)
    alpha, beta = paper(0, 24)["decoder"]
    assert float(block.sum.multiplier) == pytest.approx(alpha)
    assert std_ratio(block.f.weight.detach(), beta) == pytest.approx(1, abs=0.12)
