"""The translation grid: every cell stored on its own, resumed cell by cell, shared between
processes through claims, bounded by `max_minutes`, written whole or not at all."""
import json
import pathlib
import subprocess
from types import SimpleNamespace

import pytest

from helpers.translation import V, copy_task
from initlab.lab.translation import grid as translation_grid
from initlab.lab.translation.report import format_grid

pytestmark = pytest.mark.usefixtures("one_thread")

ADAM = ["adam-lr0.001-default", "adam-lr0.001-warmup", "adam-lr0.001-gradinit-authors",
        "adam-lr0.001-admin"]                                    # in run order
SGD = ["sgd-lr0.1-m0.9-default", "sgd-lr0.1-m0.9-warmup", "sgd-lr0.1-m0.9-gradinit-sgd",
       "sgd-lr0.1-m0.9-admin"]
ALL = sorted(ADAM + SGD)


@pytest.fixture
def grid(monkeypatch):
    """A tiny grid on a copy task (no corpus, no sentencepiece); `runs` lists the cells computed."""
    src, tgt = copy_task(30)
    pieces = ["<pad>", "<unk>", "<s>", "</s>"] + [f"▁w{i}" for i in range(4, V)]
    data = translation_grid.TranslationData(
        src={"train": src, "valid": src[:6], "test": src[:4]},
        tgt={"train": tgt, "valid": tgt[:6], "test": tgt[:4]},
        text={s: [("R 1:1", "x", "w5 w6")] * n for s, n in (("train", 30), ("valid", 6),
                                                              ("test", 4))},
        pieces=pieces)
    monkeypatch.setattr(translation_grid, "load_translation_data", lambda *a, **k: data)
    runs, run_cell = [], translation_grid.run_cell

    def recorded(cfg, data, cell, out):
        runs.append(translation_grid.cell_name(*cell))
        return run_cell(cfg, data, cell, out)

    monkeypatch.setattr(translation_grid, "run_cell", recorded)
    cfg = translation_grid.GridConfig(adam_lrs=[1e-3], sgd_lrs=[0.1], momenta=[0.9],
                                      methods=["default", "warmup", "gradinit-authors",
                                               "gradinit-sgd", "admin"],
                                      layers=1, d_model=16, nhead=2, ffn=32, batch_size=6, steps=4,
                                      warmup=2, eval_every=2, gradinit_steps=2,
                                      gradinit_sgd_steps=3)
    return SimpleNamespace(cfg=cfg, runs=runs)


def stored(out):
    return {p.stem: p.read_bytes() for p in (out / "cells").glob("*.json")}


def leftovers(out):
    return sorted(p.name for p in out.rglob("*.claim"))


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_grid_runs_every_cell_once_and_a_complete_grid_is_not_recomputed(grid, tmp_path,
                                                                              monkeypatch):
    cells = translation_grid.run_grid(grid.cfg, tmp_path)
    # the authors' Adam-target GradInit in Adam cells only, its SGD target in SGD cells only
    assert sorted(stored(tmp_path)) == ALL and grid.runs == ADAM + SGD
    inits = sorted(p.name for p in (tmp_path / "inits").iterdir())
    assert inits == ["admin.pt", "gradinit-authors-s2.pt", "gradinit-sgd-lr0.1-s3.pt"]
    warm = json.loads((tmp_path / "cells" / "adam-lr0.001-warmup.json").read_text())
    assert warm["train"]["warmup"] == 2 and len(warm["hypotheses"]) == 4
    assert translation_grid.run_grid(grid.cfg, tmp_path) == cells   # nothing recomputed
    assert len(grid.runs) == len(ALL) and leftovers(tmp_path) == []
    (tmp_path / "cells" / "adam-lr0.001-gradinit-authors.json").unlink()  # one cell lost: redone
    monkeypatch.setattr(translation_grid, "apply_method",                 # from the stored init
                        lambda *a, **k: pytest.fail("an init was recomputed"))
    again = translation_grid.run_grid(grid.cfg, tmp_path)
    assert grid.runs[len(ALL):] == ["adam-lr0.001-gradinit-authors"] and len(again) == len(ALL)
    table = format_grid(cells)
    assert table.count("\n") == 3 and "Adam 0.001" in table and "SGD 0.1 m0.9" in table


def test_max_minutes_stops_starting_cells_and_a_rerun_does_only_the_rest(grid, tmp_path,
                                                                          monkeypatch):
    """A clock that advances one minute per cell: with max_minutes=2.5 cells start at minutes
    0, 1 and 2, not 3. The rerun computes exactly the other three cells, reuses the stored
    GradInit init and leaves the stored cells as they were."""
    clock = [0.0]
    monkeypatch.setattr(translation_grid, "time",
                        SimpleNamespace(perf_counter=lambda: clock[0],
                                        sleep=lambda s: pytest.fail("nothing to wait for")))
    run_cell = translation_grid.run_cell

    def one_minute(*args):
        record = run_cell(*args)
        clock[0] += 60.0
        return record

    monkeypatch.setattr(translation_grid, "run_cell", one_minute)
    partial = translation_grid.run_grid(grid.cfg, tmp_path, max_minutes=2.5)
    assert grid.runs == ADAM[:3] and sorted(stored(tmp_path)) == sorted(ADAM[:3])
    assert [translation_grid.cell_name(c["optimizer"], c["lr"], c["momentum"], c["method"])
            for c in partial] == sorted(ADAM[:3])
    assert leftovers(tmp_path) == []                # the cell it did not start is not claimed
    first = stored(tmp_path)

    inits, apply_method = [], translation_grid.apply_method

    def recorded(model, method, data, **settings):
        inits.append(method)
        return apply_method(model, method, data, **settings)

    monkeypatch.setattr(translation_grid, "apply_method", recorded)
    done = translation_grid.run_grid(grid.cfg, tmp_path)
    assert grid.runs[3:] == ADAM[3:] + SGD
    assert inits == ["admin", "gradinit-sgd"]     # the authors' GradInit init is reused
    assert len(done) == len(ALL) and sorted(stored(tmp_path)) == ALL
    assert all(stored(tmp_path)[k] == v for k, v in first.items())   # bytes unchanged


def test_stale_claims_are_taken_over_and_live_ones_left_alone(grid, tmp_path):
    grid.cfg.methods = ["default", "warmup"]
    grid.cfg.sgd_lrs = []
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "adam-lr0.001-default.claim").write_text(str(dead_pid()))   # its process died
    live = subprocess.Popen(["sleep", "120"])                             # another worker
    try:
        (cells / "adam-lr0.001-warmup.claim").write_text(str(live.pid))
        done = translation_grid.run_grid(grid.cfg, tmp_path)
        assert grid.runs == ["adam-lr0.001-default"] and len(done) == 1
        assert leftovers(tmp_path) == ["adam-lr0.001-warmup.claim"]
        assert (cells / "adam-lr0.001-warmup.claim").read_text() == str(live.pid)
    finally:
        live.kill()
        live.wait()
    translation_grid.run_grid(grid.cfg, tmp_path)      # that worker died: its cell is taken over
    assert grid.runs == ["adam-lr0.001-default", "adam-lr0.001-warmup"]
    assert leftovers(tmp_path) == []


def test_cells_waiting_on_an_init_another_process_computes_run_last(grid, tmp_path, monkeypatch):
    """The GradInit init is claimed by a live process: the grid runs every other cell, then
    waits (once a pass finds nothing else to run); once that process is gone (here: killed
    while the grid sleeps), it takes the init over and runs the waiting cell."""
    grid.cfg.sgd_lrs = []
    (tmp_path / "inits").mkdir()
    live = subprocess.Popen(["sleep", "120"])
    (tmp_path / "inits" / "gradinit-authors-s2.claim").write_text(str(live.pid))
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) > 2:
            pytest.fail("still waiting after the claiming process died")
        live.kill()
        live.wait()

    monkeypatch.setattr(translation_grid, "time",
                        SimpleNamespace(perf_counter=translation_grid.time.perf_counter,
                                        sleep=sleep))
    translation_grid.run_grid(grid.cfg, tmp_path)
    g = "adam-lr0.001-gradinit-authors"
    assert grid.runs == ["adam-lr0.001-default", "adam-lr0.001-warmup", g, "adam-lr0.001-admin",
                         g,    # tried in the first pass (the init is busy) and in a pass with
                         g]    # nothing else to run, which then sleeps; run after the wait
    assert len(sleeps) == 1 and sorted(stored(tmp_path)) == sorted(ADAM)
    assert (tmp_path / "inits" / "gradinit-authors-s2.pt").is_file() and leftovers(tmp_path) == []


def test_a_cell_whose_write_fails_is_not_stored_half(grid, tmp_path, monkeypatch):
    """The disk fills while a cell's JSON is written (half of it reaches the file): no cell file
    may exist for it, the other cells load, and a rerun stores it whole."""
    grid.cfg.methods = ["default", "warmup"]
    grid.cfg.sgd_lrs = []
    write_text = pathlib.Path.write_text

    def disk_full(self, text, *args, **kwargs):
        if self.parent.name == "cells" and "warmup" in self.name:
            write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(28, "No space left on device")
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        translation_grid.run_grid(grid.cfg, tmp_path)
    assert sorted(stored(tmp_path)) == ["adam-lr0.001-default"]
    assert len(translation_grid.load_cells(tmp_path)) == 1 and leftovers(tmp_path) == []
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    done = translation_grid.run_grid(grid.cfg, tmp_path)
    assert grid.runs == ["adam-lr0.001-default", "adam-lr0.001-warmup", "adam-lr0.001-warmup"]
    assert [c["method"] for c in done] == ["default", "warmup"]


def test_a_grid_with_other_gradinit_settings_needs_its_own_folder(grid, tmp_path):
    grid.cfg.methods, grid.cfg.sgd_lrs = ["default"], []
    translation_grid.run_grid(grid.cfg, tmp_path)
    grid.cfg.gradinit_settings = {"warm_start": False}
    with pytest.raises(ValueError, match="give another --out"):
        translation_grid.run_grid(grid.cfg, tmp_path)
    assert grid.runs == ["adam-lr0.001-default"]          # nothing ran under the other settings
    translation_grid.run_grid(grid.cfg, tmp_path / "other")
    assert json.loads((tmp_path / "other" / "grid.json").read_text())["gradinit_settings"] == {
        "warm_start": False}


@pytest.mark.parametrize("settings,match", [({"lr": 0.1}, "sets it itself"),
                                            ({"scale_lrr": 0.1}, "did you mean 'scale_lr'"),
                                            ({"scale_lr": -1.0}, "positive")])
def test_gradinit_settings_the_grid_refuses(settings, match):
    cfg = translation_grid.GridConfig(gradinit_settings=settings)
    with pytest.raises((TypeError, ValueError), match=match):
        cfg.validate()
