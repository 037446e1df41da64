"""Seq2seq training: schedules, a few steps lower the loss, divergence is recorded, BLEU, and the
grid resumes cell by cell."""
import json
import math

import pytest
import torch

from initlab.lab import translation_grid
from initlab.lab.transformer import TransformerConfig, TranslationTransformer
from initlab.lab.translation import Seq2SeqConfig, bleu, evaluate_loss, lr_factor, seq2seq_loss, train_seq2seq
from initlab.lab.translation_data import BOS, EOS, TokenBatches
from initlab.lab.translation_report import format_grid, plot_grid
from translation_helpers import one_thread  # noqa: F401  (a fixture)

V = 30


pytestmark = pytest.mark.usefixtures("one_thread")


def copy_task(n=48, seed=0):
    """Target = source reversed: a task a tiny Transformer learns in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(EOS + 1, V, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g)
           for _ in range(n)]
    return src, [s.flip(0) for s in src]


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


def test_the_grid_resumes_cell_by_cell(tmp_path, monkeypatch):
    src, tgt = copy_task(30)
    pieces = ["<pad>", "<unk>", "<s>", "</s>"] + [f"▁w{i}" for i in range(4, V)]
    data = translation_grid.TranslationData(
        src={"train": src, "valid": src[:6], "test": src[:4]},
        tgt={"train": tgt, "valid": tgt[:6], "test": tgt[:4]},
        text={s: [("R 1:1", "x", "w5 w6")] * n for s, n in (("train", 30), ("valid", 6),
                                                              ("test", 4))},
        pieces=pieces)
    monkeypatch.setattr(translation_grid, "load_translation_data", lambda *a, **k: data)
    cfg = translation_grid.GridConfig(adam_lrs=[1e-3], sgd_lrs=[0.1], momenta=[0.9],
                                      methods=["default", "warmup", "gradinit", "gradinit-sgd"],
                                      layers=1,
                                      d_model=16, nhead=2, ffn=32, batch_size=6, steps=4,
                                      warmup=2, eval_every=2, gradinit_steps=2,
                                      gradinit_sgd_steps=3)
    cells = translation_grid.run_grid(cfg, tmp_path)
    names = sorted(p.stem for p in (tmp_path / "cells").glob("*.json"))
    assert names == ["adam-lr0.001-default", "adam-lr0.001-gradinit", "adam-lr0.001-warmup",
                     "sgd-lr0.1-m0.9-default", "sgd-lr0.1-m0.9-gradinit-sgd",
                     "sgd-lr0.1-m0.9-warmup"]       # Adam-target GradInit on Adam cells only
    inits = sorted(p.name for p in (tmp_path / "inits").iterdir())
    assert inits == ["gradinit-s2.pt", "gradinit-sgd-lr0.1-s3.pt"]
    warm = json.loads((tmp_path / "cells" / "adam-lr0.001-warmup.json").read_text())
    assert warm["train"]["warmup"] == 2 and len(warm["hypotheses"]) == 4
    monkeypatch.setattr(translation_grid, "run_cell", lambda *a: pytest.fail("recomputed"))
    assert translation_grid.run_grid(cfg, tmp_path) == cells           # nothing recomputed
    table = format_grid(cells)
    assert table.count("\n") == 3 and "Adam 0.001" in table and "SGD 0.1 m0.9" in table


def test_the_report_marks_stalled_and_diverged_runs(tmp_path):
    def cell(method, valid, diverged=False):
        return dict(optimizer="adam", lr=1e-3, momentum=None, method=method, valid_loss=valid,
                    final_valid_loss=None if diverged else valid[-1], bleu=None if diverged else 1.5,
                    diverged=diverged, diverged_step=200 if diverged else None)
    cells = [cell("default", [5.8, 5.79, 5.75]), cell("warmup", [5.8, 5.5]),
             cell("tfixup", [5.8], diverged=True)]
    row = format_grid(cells).splitlines()[2]
    assert row == "| Adam 0.001 | 5.75 / 1.5 **stalled** | 5.50 / 1.5 | diverged @200 |"
    plot_grid(cells, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
