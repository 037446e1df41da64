"""`initlab translate-grid`: the authors' IWSLT'14 protocol (`--recipe authors-mt`) reaches every
run; admin and deepnet cells run through the grid; the report is written; and the command as a
user runs it, in a separate process on a small verse-pair corpus (--report-only and
--max-minutes 0 on an empty grid, a run, and the report of the stored cells)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.translation import V, copy_task, fake_corpus
from initlab.lab import cli
from initlab.lab.recipes import recipe
from initlab.lab.translation import grid as translation_grid
from initlab.lab.translation.recipe import mt_recipes

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


def test_recipes_are_registered_and_others_refused():
    assert recipe("authors-mt").resolve(optimizer="adam")["seq2seq.weight_decay"] == 1e-4
    assert mt_recipes()[:2] == ["lab-mt", "authors-mt"]
    for name in ("nope", "authors-cnn"):     # unknown, or not a translation recipe
        with pytest.raises(ValueError, match="not a translation recipe; choose from lab-mt"):
            translation_grid.GridConfig(recipe=name).validate()


TINY = ["--adam-lrs", "0.001", "--sgd-lrs", "", "--momenta", "", "--methods", "default,warmup",
        "--layers", "1", "--d-model", "16", "--nhead", "2", "--ffn", "32", "--batch-size", "16",
        "--steps", "2", "--warmup", "1", "--eval-every", "1", "--vocab-size", "50"]


def translate_grid(*args: str) -> subprocess.CompletedProcess:
    src = Path(__file__).parents[3] / "src"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "initlab.lab.cli", "translate-grid", *args],
                          env=env, capture_output=True, text=True)


def test_translate_grid_runs_resumes_and_reports(tmp_path):
    fake_corpus(tmp_path / "data")
    out = tmp_path / "grid"
    common = [*TINY, "--data-dir", str(tmp_path / "data"), "--out", str(out)]

    for first in (["--report-only"], ["--max-minutes", "0"]):   # neither starts a cell
        proc = translate_grid(*common, *first)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "no finished cells" in proc.stdout
        assert not (out / "cells").is_dir() or list((out / "cells").iterdir()) == []

    done = translate_grid(*common)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == ["adam-lr0.001-default.json", "adam-lr0.001-warmup.json"]
    warm = json.loads((out / "cells" / "adam-lr0.001-warmup.json").read_text())
    assert warm["train"]["warmup"] == 1 and warm["steps"] == [1, 2]
    assert json.loads((out / "grid.json").read_text())["d_model"] == 16
    table = (out / "table.md").read_text()
    assert "| Adam 0.001 |" in done.stdout and done.stdout.strip() == table.strip()
    assert (out / "heatmaps.png").stat().st_size > 1000 and (out / "curves.png").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}

    report = translate_grid(*common, "--report-only")  # the table from the stored cells
    assert report.returncode == 0, report.stderr[-3000:]
    assert report.stdout == done.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps


@pytest.mark.parametrize("args,fix", [
    (["--methods", "default,nope"], "--methods: unknown nope; choose from default, warmup"),
    (["--set", "admin.omega=2"], "--set admin.omega: the grid takes settings of gradinit"),
    (["--set", "gradinit.target=sgd"], "--set gradinit.target: the grid sets it itself"),
    (["--set", "gradinit.scale_lr=0"], "--set gradinit: scale_lr must be a positive"),
])
def test_bad_grid_arguments_stop_before_any_work(tmp_path, monkeypatch, capsys, args, fix):
    monkeypatch.setattr(translation_grid, "load_translation_data",
                        lambda *a, **k: pytest.fail("data loaded before the arguments were checked"))
    code = cli.main(["translate-grid", "--out", str(tmp_path / "grid"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"initlab translate-grid: error: {fix}")
    assert err.count("\n") == 1 and not (tmp_path / "grid").exists()
