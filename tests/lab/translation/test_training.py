"""Seq2seq training: schedules, a few steps lower the loss, divergence is recorded, BLEU."""
import math

import pytest
import torch

from helpers.translation import V, copy_task
from initlab.lab.translation.data import BOS, EOS, TokenBatches
from initlab.lab.translation.model import TransformerConfig, TranslationTransformer
from initlab.lab.translation.training import (
    Seq2SeqConfig,
    bleu,
    evaluate_loss,
    lr_factor,
    seq2seq_loss,
    train_seq2seq,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0):
    torch.manual_seed(seed)
    return TranslationTransformer(TransformerConfig(V, d_model=32, nhead=2, ffn=64,
                                                    encoder_layers=1, decoder_layers=1,
                                                    dropout=0.0))


def test_schedules():
    no_warmup = Seq2SeqConfig(steps=100, warmup=0, decay_start=10)
    warm = Seq2SeqConfig(steps=100, warmup=10)
    assert lr_factor(0, no_warmup) == 1.0 and lr_factor(9, no_warmup) == 1.0
    assert lr_factor(0, warm) == pytest.approx(0.1) and lr_factor(9, warm) == 1.0
    for s in (20, 50, 99):  # after the warmup both decay as sqrt(10 / (s + 1))
        assert lr_factor(s, warm) == lr_factor(s, no_warmup) == pytest.approx(math.sqrt(10 / (s + 1)))
    lin = Seq2SeqConfig(steps=100, warmup=20, schedule="linear")
    assert lr_factor(19, lin) == 1.0 and lr_factor(59, lin) == pytest.approx(0.5125)
    assert lr_factor(0, Seq2SeqConfig(schedule="constant")) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        Seq2SeqConfig(schedule="cosine").validate()


def test_the_loss_is_token_cross_entropy():
    model = tiny().eval()
    src = torch.tensor([[5, 6, EOS]])
    tgt = torch.tensor([[BOS, 7, 8, EOS, 0]])            # one padding position
    logp = model(src, tgt[:, :-1]).log_softmax(-1)[0]
    by_hand = -(logp[0, 7] + logp[1, 8] + logp[2, EOS]) / 3
    torch.testing.assert_close(seq2seq_loss(model, (src, tgt)), by_hand)


def test_a_few_steps_reduce_the_loss():
    src, tgt = copy_task()
    train_b = TokenBatches(src, tgt, 16, shuffle=True, seed=0)
    valid_b = TokenBatches(src[:16], tgt[:16], 16)
    model = tiny()
    before = evaluate_loss(model, valid_b, "cpu")
    cfg = Seq2SeqConfig(lr=3e-3, steps=30, eval_every=15, warmup=5)
    result = train_seq2seq(model, train_b, valid_b, cfg, vocab_size=V)
    assert not result.diverged and result.steps == [15, 30]
    assert result.valid_loss[-1] < before - 0.5 and result.train_loss[1] < result.train_loss[0]


def test_a_stalled_run_stops_after_the_given_fraction():
    src, tgt = copy_task()
    train_b, valid_b = TokenBatches(src, tgt, 16), TokenBatches(src[:16], tgt[:16], 16)
    frozen = Seq2SeqConfig(lr=1e-9, steps=40, eval_every=5, stop_stalled=0.5)
    result = train_seq2seq(tiny(), train_b, valid_b, frozen, vocab_size=V)
    assert result.stalled_step == 20 and result.steps == [5, 10, 15, 20]
    assert not result.diverged and result.final_valid_loss == result.valid_loss[-1]
    learning = Seq2SeqConfig(lr=3e-3, steps=30, eval_every=10, warmup=5, stop_stalled=0.3)
    result = train_seq2seq(tiny(), train_b, valid_b, learning, vocab_size=V)
    assert result.stalled_step is None and result.steps == [10, 20, 30]
    with pytest.raises(ValueError, match="fraction"):
        Seq2SeqConfig(stop_stalled=1.5).validate()


def test_divergence_is_recorded_not_raised():
    src, tgt = copy_task()
    train_b, valid_b = TokenBatches(src, tgt, 16), TokenBatches(src[:16], tgt[:16], 16)
    cfg = Seq2SeqConfig(optimizer="sgd", lr=1e4, momentum=0.9, steps=40, eval_every=5,
                        label_smoothing=0.0)
    result = train_seq2seq(tiny(), train_b, valid_b, cfg, vocab_size=V)
    assert result.diverged and result.diverged_step is not None
    assert result.final_valid_loss is None and len(result.valid_loss) < 8


def test_bleu():
    refs = ["y dijo Dios : sea la luz", "y fué la tarde y la mañana"]
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert 0 < bleu(["y dijo Dios : sea luz", "y fué la tarde"], refs) < 100
