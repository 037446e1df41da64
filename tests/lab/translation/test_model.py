"""The translation Transformer: shapes, causal and padding masks, incremental decoding equal to the
full pass, beam 1 equal to greedy, T-Fixup's factors on it and GradInit through it."""
from functools import partial

import pytest
import torch

import initlab
from initlab.lab.models import build_model
from initlab.lab.translation.data import EOS, PAD
from initlab.lab.translation.decoding import IncrementalDecoder, beam_search, greedy_decode
from initlab.lab.translation.model import TransformerConfig, TranslationTransformer
from initlab.lab.translation.training import seq2seq_loss

V = 40


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(norm="post", shared=True, layers=2, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return TranslationTransformer(TransformerConfig(V, d_model=16, nhead=2, ffn=32,
                                                    encoder_layers=layers, decoder_layers=layers,
                                                    norm=norm, shared_embeddings=shared,
                                                    dropout=dropout))


def ids(*shape, seed=1):
    return torch.randint(EOS + 1, V, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("shared", [True, False])
def test_shapes_and_causal_mask(norm, shared):
    model = tiny(norm, shared).eval()
    src, tgt = ids(3, 7), ids(3, 6, seed=2)
    out = model(src, tgt)
    assert out.shape == (3, 6, V)
    changed = tgt.clone()
    changed[:, 4] = (changed[:, 4] + 1 - EOS) % (V - EOS - 1) + EOS + 1   # another real token
    out2 = model(src, changed)
    torch.testing.assert_close(out2[:, :4], out[:, :4], rtol=0, atol=1e-6)  # the past is blind
    assert (out2[:, 4:] - out[:, 4:]).abs().amax() > 1e-3                    # to the future


def test_source_padding_is_ignored():
    model = tiny().eval()
    src, tgt = ids(2, 6), ids(2, 5, seed=2)
    src[0, 4:] = PAD
    other = src.clone()
    other[0, 4:] = 9   # what would be there if it were not padding
    assert (model(src, tgt) - model(other, tgt)).abs().amax() > 1e-3
    short = model(src[:1, :4], tgt[:1])   # the same sentence without its padding
    torch.testing.assert_close(model(src, tgt)[:1], short, rtol=1e-5, atol=1e-5)


def test_build_model_and_config_errors():
    model = build_model("transformer", vocab_size=V, depth=2, width=16, nhead=2, ffn=32,
                        norm="pre")
    assert len(model.encoder) == len(model.decoder) == 2 and model.cfg.norm == "pre"
    with pytest.raises(ValueError, match="'post' or 'pre'"):
        TranslationTransformer(TransformerConfig(V, norm="middle"))
    with pytest.raises(ValueError, match="divisible"):
        TranslationTransformer(TransformerConfig(V, d_model=10, nhead=4))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_incremental_decoding_equals_the_full_pass(norm):
    model = tiny(norm, shared=False).eval()
    src, tgt = ids(3, 7), ids(3, 6, seed=2)
    src[1, 5:] = PAD
    state = IncrementalDecoder(model, *model.encode(src))
    steps = torch.stack([state.step(tgt[:, t]) for t in range(6)], 1)
    torch.testing.assert_close(steps, model(src, tgt), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_beam_one_is_greedy(seed):
    model = tiny(seed=seed).eval()
    with torch.no_grad():  # make EOS likely somewhere so hypotheses end at different lengths
        model.tgt_embed.weight[EOS] *= 6
    src = ids(6, 5, seed=seed)
    greedy = greedy_decode(model, src, max_len=10)
    assert greedy == beam_search(model, src, beam=1, max_len=10)
    # greedy is the argmax of the full pass at every step
    for row, hyp in zip(src, greedy):
        prefix = torch.tensor([[2] + hyp])
        best = model(row[None], prefix).argmax(-1)[0].tolist()
        assert best[:len(hyp)] == hyp
        assert len(hyp) == 10 or best[len(hyp)] == EOS
    wide = beam_search(model, src, beam=4, max_len=10)
    assert len(wide) == 6 and all(len(h) <= 10 for h in wide)


def test_tfixup_applies_with_the_decoder_factor_on_the_shared_embedding():
    model = tiny(layers=6)
    initlab.initialize(model, "tfixup", seed=0)
    d = model.cfg.d_model
    emb = model.tgt_embed.weight.detach()[PAD + 1:]
    expected = d ** -0.5 * (9 * 6) ** -0.25               # N(0, d^-1/2) x (9 N_d)^-1/4
    assert abs(emb.std().item() / expected - 1) < 0.1
    assert model.tgt_embed.weight[PAD].abs().sum() == 0
    ffn = model.encoder[0].linear1.weight.detach()
    xavier_std = (2 / sum(ffn.shape)) ** 0.5
    assert abs(ffn.std().item() / (xavier_std * 0.67 * 6 ** -0.25) - 1) < 0.1


def test_gradinit_runs_on_it_and_leaves_plain_parameters():
    model = tiny(dropout=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = [(ids(6, 5, seed=s), torch.cat([torch.full((6, 1), 2), ids(6, 4, seed=s + 9)], 1))
               for s in range(4)]
    report = initlab.gradinit(model, batches, loss_fn=partial(seq2seq_loss, label_smoothing=0.1),
                              **dict(initlab.TRANSFORMER_RECIPE, steps=4, batching="split"))
    assert len(report.history) == 4
    assert all(p.is_leaf for p in model.parameters())     # an optimizer can take them
    torch.optim.Adam(model.parameters())
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(model.get_parameter(n).dtype == before[n].dtype for n in changed)
