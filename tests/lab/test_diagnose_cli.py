"""`initlab diagnose` in-process: lab models and data, a module:factory model, the text lab,
and one-line errors for bad arguments before any work."""
import json
import textwrap

import pytest
import torch

from helpers.translation import V, copy_task
from initlab.lab import cli
from initlab.lab.models import build_model
from initlab.lab.translation import data as translation_data

MLP = ["diagnose", "--model", "mlp", "--depth", "3", "--width", "8", "--data", "digits",
       "--batch-size", "16", "--lr", "0.1"]


def test_methods_on_a_lab_model_write_figures_json_and_the_comparison(tmp_path, capsys):
    rc = cli.main([*MLP, "--methods", "default,kaiming+gradinit", "--set", "gradinit.steps=2",
                   "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    found = json.loads((tmp_path / "diagnoses.json").read_text())
    assert [d["label"] for d in found] == ["default", "kaiming+gradinit"]
    assert found[0]["settings"]["lr"] == 0.1 and len(found[0]["batch_losses"]) == 3
    assert found[0]["tensors"][0]["name"] == "features.1.weight"
    for name in ("default.png", "kaiming+gradinit.png", "compare.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "kaiming+gradinit" in printed and "held-out loss before" in printed


def test_every_method_is_diagnosed_on_the_same_batches(tmp_path):
    rc = cli.main([*MLP, "--methods", "default,default", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    first, second = json.loads((tmp_path / "diagnoses.json").read_text())
    assert first["batch_losses"] == second["batch_losses"]
    assert first["loss_after"] == second["loss_after"]


def test_a_module_factory_model_gets_the_data_sets_shape(tmp_path, monkeypatch, capsys):
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        from torch import nn
        def make(in_channels, image_size, num_classes, width=5):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, width),
                                 nn.ReLU(), nn.Linear(width, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = cli.main(["diagnose", "--model", "mynets:make", "--width", "7", "--lr", "0.05",
                   "--out", str(tmp_path / "out")])
    assert rc == 0
    (d,) = json.loads((tmp_path / "out" / "diagnoses.json").read_text())
    assert [t["shape"] for t in d["tensors"]] == [[7, 64], [7], [10, 7], [10]]
    assert "verdict:" in capsys.readouterr().out


def test_the_transformer_on_text(tmp_path, monkeypatch):
    src, tgt = copy_task(40)
    pieces = ["<pad>", "<unk>", "<s>", "</s>"] + [f"▁w{i}" for i in range(4, V)]
    data = translation_data.TranslationData(
        src={"train": src, "valid": src[:4], "test": src[:4]},
        tgt={"train": tgt, "valid": tgt[:4], "test": tgt[:4]},
        text={s: [("R 1:1", "x", "w5")] * n for s, n in (("train", 40), ("valid", 4), ("test", 4))},
        pieces=pieces)
    monkeypatch.setattr(translation_data, "load_translation_data", lambda *a, **k: data)
    rc = cli.main(["diagnose", "--model", "transformer", "--data", "bible", "--depth", "2",
                   "--width", "16", "--heads", "2", "--ffn", "32", "--batch-size", "8",
                   "--methods", "default,tfixup", "--optimizer", "adam", "--lr", "1e-3",
                   "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    found = json.loads((tmp_path / "diagnoses.json").read_text())
    assert [r["name"] for r in found[0]["ranks"]] == ["encoder.0", "encoder.1", "decoder.0",
                                                      "decoder.1"]
    assert [(b["name"], b["source"]) for b in found[0]["branches"][:2]] == [
        ("encoder.0.attn_sum", "sum"), ("encoder.0.ffn_sum", "sum")]
    assert len(found[1]["attention"][0]["entropy"]) == 2
    torch.manual_seed(0)  # `default` is the model as built from the seed, untouched
    fresh = build_model("transformer", depth=2, width=16, vocab_size=V, nhead=2, ffn=32)
    assert [t["weight_rms"] for t in found[0]["tensors"]] == pytest.approx(
        [float(p.detach().double().square().mean().sqrt()) for p in fresh.parameters()], rel=1e-9)


@pytest.mark.parametrize("args, words", [
    (["--methods", "default,kaimin"], "'kaimin' is unknown (did you mean 'kaiming'?)"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--model", "nosuchpackage.x:make"], "--model nosuchpackage.x:make: cannot import it"),
    (["--model", "transformer"], "--model transformer goes with --data bible"),
    (["--model", "lenet"], "--model 'lenet' is unknown"),
    (["--data", "cifar"], "--data 'cifar' is unknown"),
    (["--batches", "1"], "--batches must be an integer >= 2"),
    (["--set", "gradinit.steps=3"], "'gradinit' is not among --methods"),
    (["--methods", "gradinit", "--set", "gradinit.stepz=3"], "--set gradinit.stepz"),
    (["--methods", "fixup"], "fixup cannot initialize --model mlp"),
    (["--set", "gradinit.steps"], "expected METHOD.KEY=VALUE"),
])
def test_bad_arguments_fail_with_one_line_before_any_work(args, words, tmp_path, capsys):
    out = tmp_path / "never"
    try:
        rc = cli.main([*MLP, *args, "--out", str(out)])
    except SystemExit as e:  # argparse's own errors (a --set it cannot read) exit from the parser
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and words in err and err.count("\n") == 1
    assert not out.exists()


def test_a_missing_lr_is_named(tmp_path, capsys):
    assert cli.main(["diagnose", "--out", str(tmp_path / "never")]) == 2
    assert "--lr is required" in capsys.readouterr().err
