"""`initlab translate-grid --recipe authors-mt`: the authors' IWSLT'14 protocol reaches every run;
admin and deepnet cells run through the grid; the report is written."""
import json

import pytest
import torch

from helpers.translation import V, copy_task
from initlab.lab import cli
from initlab.lab.translation import grid as translation_grid

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_data():
    src, tgt = copy_task(24)
    pieces = ["<pad>", "<unk>", "<s>", "</s>"] + [f"▁w{i}" for i in range(4, V)]
    return translation_grid.TranslationData(
        src={"train": src, "valid": src[:6], "test": src[:4]},
        tgt={"train": tgt, "valid": tgt[:6], "test": tgt[:4]},
        text={s: [("R 1:1", "x", "w5 w6")] * n for s, n in (("train", 24), ("valid", 6),
                                                              ("test", 4))},
        pieces=pieces)


def test_authors_recipe_through_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(translation_grid, "load_translation_data", lambda *a, **k: tiny_data())
    out = tmp_path / "grid"
    code = cli.main(["translate-grid", "--recipe", "authors-mt", "--out", str(out),
                     "--adam-lrs", "1e-3", "--sgd-lrs", "0.1", "--momenta", "0.99",
                     "--methods", "warmup,admin,deepnet", "--layers", "2", "--d-model", "16",
                     "--nhead", "2", "--ffn", "32", "--batch-size", "6", "--steps", "4",
                     "--warmup", "2", "--eval-every", "2", "--seeds", "2", "--quiet"])
    assert code == 0 and "claim" in capsys.readouterr().out
    names = sorted(p.stem for p in (out / "cells").glob("*.json"))
    assert len(names) == 12 and "sgd-lr0.1-m0.99-deepnet-seed1" in names
    adam = json.loads((out / "cells" / "adam-lr0.001-admin.json").read_text())
    assert adam["recipe"] == "authors-mt"
    t = adam["train"]
    assert (t["schedule"], t["warmup"], t["weight_decay"], t["decoupled_weight_decay"],
            t["clip"], t["label_smoothing"], t["betas"]) == ("linear", 0, 1e-4, True, None, 0.1,
                                                            [0.9, 0.98])
    m = adam["model"]
    assert (m["dropout"], m["attention_dropout"], m["activation_dropout"],
            m["shared_embeddings"], m["tie_output"]) == (0.3, 0.1, 0.1, False, True)
    sgd = json.loads((out / "cells" / "sgd-lr0.1-m0.99-warmup.json").read_text())["train"]
    assert (sgd["optimizer"], sgd["momentum"], sgd["warmup"], sgd["decoupled_weight_decay"]) == (
        "sgd", 0.99, 2, False)
    # the cached inits carry the methods' multipliers, per seed
    deepnet = torch.load(out / "inits" / "deepnet-seed1.pt", weights_only=True)["state"]
    assert deepnet["encoder.0.attn_sum.multiplier"] == pytest.approx(0.81 * (2 ** 5) ** (1 / 16))
    admin = torch.load(out / "inits" / "admin.pt", weights_only=True)["state"]
    assert admin["decoder.0.self_sum.multiplier"] == 1 < admin["decoder.1.self_sum.multiplier"]
    assert (out / "heatmaps.png").is_file() and (out / "curves.png").is_file()


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        translation_grid.GridConfig(recipe="nope").validate()
