"""The translation grid: every cell stored on its own, resumed cell by cell."""
import json

import pytest

from helpers.translation import V, copy_task
from initlab.lab.translation import grid as translation_grid
from initlab.lab.translation.report import format_grid

pytestmark = pytest.mark.usefixtures("one_thread")


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
                                      methods=["default", "warmup", "gradinit-authors",
                                               "gradinit-sgd", "admin"],
                                      layers=1,
                                      d_model=16, nhead=2, ffn=32, batch_size=6, steps=4,
                                      warmup=2, eval_every=2, gradinit_steps=2,
                                      gradinit_sgd_steps=3)
    cells = translation_grid.run_grid(cfg, tmp_path)
    names = sorted(p.stem for p in (tmp_path / "cells").glob("*.json"))
    assert names == ["adam-lr0.001-admin", "adam-lr0.001-default", "adam-lr0.001-gradinit-authors",
                     "adam-lr0.001-warmup", "sgd-lr0.1-m0.9-admin", "sgd-lr0.1-m0.9-default",
                     "sgd-lr0.1-m0.9-gradinit-sgd", "sgd-lr0.1-m0.9-warmup"]
    # the authors' Adam-target GradInit in Adam cells only, its SGD target in SGD cells only
    inits = sorted(p.name for p in (tmp_path / "inits").iterdir())
    assert inits == ["admin.pt", "gradinit-authors-s2.pt", "gradinit-sgd-lr0.1-s3.pt"]
    warm = json.loads((tmp_path / "cells" / "adam-lr0.001-warmup.json").read_text())
    assert warm["train"]["warmup"] == 2 and len(warm["hypotheses"]) == 4
    monkeypatch.setattr(translation_grid, "run_cell", lambda *a: pytest.fail("recomputed"))
    assert translation_grid.run_grid(cfg, tmp_path) == cells           # nothing recomputed
    table = format_grid(cells)
    assert table.count("\n") == 3 and "Adam 0.001" in table and "SGD 0.1 m0.9" in table
