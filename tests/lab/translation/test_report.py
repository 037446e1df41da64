"""The translation grid's tables, claims and figures."""
import json

from initlab.lab.translation.report import (
    claims,
    format_grid,
    format_searches,
    format_seeds,
    write_report,
)


def cell(method, valid, diverged=False, opt="adam", lr=1e-3, mom=None, seed=0, bleu=1.5):
    return dict(optimizer=opt, lr=lr, momentum=mom, method=method, seed=seed, steps=list(
        range(100, 100 * len(valid) + 1, 100)), valid_loss=valid,
        final_valid_loss=None if diverged else valid[-1], bleu=None if diverged else bleu,
        diverged=diverged, diverged_step=200 if diverged else None, seconds=1.0,
        init_seconds=0.0, cpu_seconds=1.0)


def test_the_table_marks_stalled_and_diverged_runs():
    cells = [cell("default", [5.8, 5.79, 5.75]), cell("warmup", [5.8, 5.5]),
             cell("tfixup", [5.8], diverged=True)]
    row = format_grid(cells).splitlines()[2]
    assert row == "| Adam 0.001 | 5.75 / 1.5 **stalled** | 5.50 / 1.5 | diverged @200 |"


def test_seeds_are_averaged_and_listed():
    cells = [cell("warmup", [5.8, 5.0], seed=0, bleu=2.0), cell("warmup", [5.8, 4.0], seed=1,
                                                                  bleu=4.0),
             cell("default", [5.8, 5.2], seed=0), cell("default", [5.8], diverged=True, seed=1)]
    rows = format_grid(cells).splitlines()
    assert rows[2] == "| Adam 0.001 | 5.20 / 1.5 (1/2 diverged) | 4.50 / 3.0 |"
    seeds = format_seeds(cells).splitlines()
    assert seeds[0] == "| Adam 0.001 | seed 0 | seed 1 | mean BLEU |"
    assert seeds[3] == "| warmup | 5.00 / 2.0 | 4.00 / 4.0 | 3.0 |"


def test_claims_compare_with_warmup_cell_by_cell():
    cells = [cell("warmup", [5.8, 4.6], lr=5e-4), cell("gradinit", [5.8, 4.65], lr=5e-4),
             cell("default", [5.8, 5.75], lr=5e-4), cell("default", [5.8, 4.5], lr=2e-3),
             cell("warmup", [5.8, 4.5], lr=2e-3), cell("gradinit", [5.8, 5.0], lr=2e-3),
             cell("warmup", [5.8, 4.7], lr=4e-3), cell("gradinit", [5.8, 4.7], lr=4e-3),
             cell("warmup", [5.9, 5.85], opt="sgd", lr=0.1, mom=0.9),
             cell("gradinit", [5.9], diverged=True, opt="sgd", lr=0.1, mom=0.9)]
    rows = claims(cells).splitlines()[2:]
    assert rows[0] == ("| Adam 5e-4 without warmup | gradinit | Adam 0.0005 | – | holds | "
                       "Adam 0.0005 |")          # the default stalled there
    assert rows[1] == ("| Adam above 5e-4 without warmup | gradinit | Adam 0.004 | Adam 0.002 "
                       "(5.00 vs warmup 4.50) | holds in part | none |")
    assert rows[2] == ("| SGD without warmup, every rate and momentum | gradinit | – | "
                       "SGD 0.1 m0.9 (diverged) | does not hold | – |")
    # a cell without its warmup run is not judged: a grid of gradinit alone claims nothing
    assert claims([c for c in cells if c["method"] == "gradinit"]).count("\n") == 1
    alone = cell("gradinit", [5.8, 4.6], lr=1e-3)
    assert "Adam 0.001" not in claims(cells + [alone])


def test_write_report(tmp_path):
    (tmp_path / "cells").mkdir()
    for i, c in enumerate([cell("warmup", [5.8, 5.0]), cell("admin", [5.8, 5.1]),
                           cell("deepnet", [5.8], diverged=True)]):
        (tmp_path / "cells" / f"{i}.json").write_text(json.dumps(c))
    text = write_report(tmp_path)
    assert "| Adam 0.001 | 5.00 / 1.5 | 5.10 / 1.5 | diverged @200 |" in text
    assert (tmp_path / "table.md").read_text() == text + "\n"
    for name in ("heatmaps.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "grid.json").write_text(json.dumps(dict(steps=800, gradinit_settings=dict(
        warm_start=False))))    # a grid of the default search with other settings says so
    assert write_report(tmp_path).endswith("800 updates; gradinit warm_start=False")


def test_the_default_search_against_the_authors_recipe():
    def searched(method, valid, lr, iterations, stop=None, **kw):
        c = cell(method, valid, lr=lr, **kw)
        c["init_report"] = dict(kind="scales", iterations=iterations,
                                outcome={"stop": stop} if stop else {})
        return c
    cells = [searched("gradinit-authors", [5.8, 5.2], 5e-4, 780),
             searched("gradinit", [5.8, 5.1], 5e-4, 60, "converged"),
             searched("gradinit-authors", [5.8, 5.0], 1e-3, 780),
             searched("gradinit", [5.8, 5.3], 1e-3, 200, "budget"),
             searched("gradinit", [5.8, 5.3], 0.1, 50, "converged", opt="sgd", mom=0.9)]
    rows = format_searches(cells).splitlines()[2:]
    assert rows == [
        "| Adam 0.0005 | 5.20, 780 | 5.10, 60, converged | holds |",
        "| Adam 0.001 | 5.00, 780 | 5.30, 200, budget | does not hold (higher loss) |"]
