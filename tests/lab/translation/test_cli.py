"""`initlab translate-grid` as a user runs it: a separate process on a small verse-pair corpus,
--report-only and --max-minutes 0 on an empty grid, a run, and the report of the stored cells."""
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.translation import fake_corpus

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
    assert (out / "heatmap.png").stat().st_size > 1000
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}

    report = translate_grid(*common, "--report-only")  # the table from the stored cells
    assert report.returncode == 0, report.stderr[-3000:]
    assert report.stdout == done.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
