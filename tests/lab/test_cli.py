"""The `initlab` command: tiny configurations in-process, and, through a subprocess as a user
runs it, the exit status and the one-line message of bad input (no traceback, nothing written)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import initlab
from initlab.lab import cli
from initlab.lab.compare import format_table

TINY = ["--data", "digits", "--subset", "200", "--test-subset", "100", "--batch-size", "50",
        "--epochs", "2", "--seeds", "2", "--quiet"]
SRC = str(Path(initlab.__file__).resolve().parents[1])  # the sources under test


def run_initlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "initlab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_compare_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["compare", *TINY, "--model", "mlp", "--depth", "3", "--width", "16",
                   "--methods", "default,kaiming+gradinit", "--set", "gradinit.steps=4",
                   "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["default", "kaiming+gradinit"]
    for entry in results["methods"].values():
        assert entry["error"] is None and len(entry["runs"]) == 2
        assert all(len(r["test_acc"]) == 2 for r in entry["runs"])
        assert entry["summary"]["runs"] == 2 and entry["summary"]["best_acc"]["n"] == 2
    run = results["methods"]["kaiming+gradinit"]["runs"][0]
    assert run["settings"]["gradinit"]["steps"] == 4 and run["settings"]["gradinit"]["lr"] == 0.1
    assert run["init_seconds"] > 0
    outcome = run["init_outcome"]["gradinit"]     # the default search's report reaches the run
    assert outcome["search"] == "default" and outcome["iterations"] <= 4
    assert set(outcome["guard"]) >= {"start", "searched", "returned", "fell_back_to"}
    assert results["methods"]["default"]["runs"][0]["init_outcome"] == {}
    assert (out / "accuracy.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "kaiming+gradinit" in printed and "results.json" in printed
    assert format_table(results).splitlines()[0].split()[:2] == ["method", "first-epoch"]
    assert "| default |" in format_table(results, markdown=True)


# Each command a user reported: it ran (or crashed with a traceback) instead of refusing.
BASE = ["compare", "--data", "digits", "--model", "mlp", "--depth", "4", "--epochs", "1",
        "--seeds", "1"]
BAD = {
    "epochs 0": (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    "negative lr": (["--lr", "-1"], "--lr must be a positive number"),
    "seeds 0": (["--seeds", "0"], "--seeds must be an integer >= 1"),
    "unknown setting": (["--set", "gradinit.stepz=5"], "did you mean 'steps'"),
    "bad setting value": (["--set", "gradinit.steps=-1"], "steps must be an integer >= 0"),
    "setting of a method not run": (["--set", "lsuv.tol=0.2"], "'lsuv' is not among --methods"),
    "fixup on an MLP": (["--methods", "default,fixup"], "--methods fixup cannot initialize "
                        "--model mlp: fixup needs the model's residual branches"),
    "unknown method": (["--methods", "default,nosuchinit"], "'nosuchinit' is unknown"),
    "unknown activation": (["--activation", "swish"], "--activation 'swish' is unknown; use "
                           "one of: relu, tanh"),
    "depth 0": (["--depth", "0"], "--depth must be an integer >= 1"),
    "missing data dir": (["--data", "fashion-mnist", "--data-dir", "no-such-folder"],
                         "--data-dir 'no-such-folder' is not a folder"),
    "out not creatable": (["--out", "a-file/run"], "--out 'a-file/run' cannot be created"),
    "bad choice": (["--model", "transformer"], "argument --model: invalid choice"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path):
    args, message = BAD[case]
    (tmp_path / "a-file").write_text("")
    out = [] if "--out" in args else ["--out", "out"]
    proc = run_initlab(*BASE, *args, *out, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("initlab compare: error: ") and message in lines[0], lines[0]
    assert proc.stdout == "" and not (tmp_path / "out" / "results.json").exists()


def test_a_run_that_fails_exits_1_naming_it_and_the_others_still_run(tmp_path, capsys):
    # GradInit at an absurd target rate, with objective steps only: its look-ahead loss is
    # non-finite, an error (a run that only diverges in training is a result, and exits 0: see
    # the next test).
    rc = cli.main(["compare", *TINY, "--model", "mlp", "--depth", "3", "--width", "16",
                   "--methods", "gradinit,default", "--set", "gradinit.steps=2",
                   "--set", "gradinit.lr=1e30", "--set", "gradinit.gamma=1e30",
                   "--out", str(tmp_path)])
    assert rc == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert "FloatingPointError" in results["methods"]["gradinit"]["error"]
    assert len(results["methods"]["default"]["runs"]) == 2
    err = capsys.readouterr().err
    assert "initlab compare: failed: gradinit: FloatingPointError" in err


def test_a_diverged_run_is_a_result_exit_0(tmp_path):
    rc = cli.main(["compare", *TINY, "--model", "mlp", "--depth", "3", "--width", "16",
                   "--methods", "default", "--lr", "1e6", "--seeds", "1", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["methods"]["default"]["summary"]["diverged"] == 1
    assert rc == 0


def test_python_m_initlab_is_the_command(tmp_path, capsys):
    proc = run_initlab("methods", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert cli.main(["methods"]) == 0
    assert proc.stdout == capsys.readouterr().out
    for name in initlab.available_methods():
        assert name in proc.stdout and initlab.method_info(name).paper in proc.stdout


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: digits)", "(default: vgg)", "(default: default,gradinit)",
                  "(default: 3)", "(default: runs/compare)", "(default: cpu)", "(default: relu)",
                  "(default: lab-default)"):
        assert shown in text, shown
    # options a recipe sets are unset (None) by default and name lab-default's value
    text = text.replace("lab- default", "lab-default")  # argparse wraps at the hyphen
    for shown in ("lab-default: 10)", "lab-default: 0.1)", "lab-default: 0.0005)",
                  "lab-default: cosine)", "lab-default: 128)", "lab-default: None)"):
        assert f"(None: the recipe's; {shown} (default: None)" in text, shown
    parser = cli.parser()._subparsers._group_actions[0].choices["compare"]
    missing = [a.dest for a in parser._actions if a.dest != "help" and not a.help]
    assert not missing, f"options without help (their default is not shown): {missing}"


def test_demo_parses_to_a_deep_plain_network():
    a = cli.parser().parse_args(["demo"])
    cfg = cli.config_from_args(a)
    assert cfg.data == "digits" and not cfg.bn and cfg.depth >= 8
    assert any("gradinit" in m for m in cfg.methods) and a.out == "runs/demo"


def test_bad_setting_syntax_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--set", "steps=3"])
    assert info.value.code == 2
    assert "expected METHOD.KEY=VALUE" in capsys.readouterr().err


def test_without_a_terminal_a_line_per_epoch(tmp_path):
    proc = run_initlab(*BASE, "--epochs", "2", "--subset", "100", "--test-subset", "50",
                       "--width", "8", "--methods", "default", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    epochs = [ln for ln in proc.stderr.splitlines() if ln.startswith("default seed 0 epoch")]
    assert [ln.split(":")[0] for ln in epochs] == ["default seed 0 epoch 1/2",
                                                   "default seed 0 epoch 2/2"]
    assert "test acc" in epochs[0]


def test_on_a_terminal_the_bars_cover_the_search(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    args = ["compare", *[t for t in TINY if t != "--quiet"], "--model", "mlp", "--depth", "3",
            "--width", "16", "--methods", "gradinit", "--seeds", "1", "--epochs", "1",
            "--set", "gradinit.steps=3", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "gradinit: 100%" in err and "3/3" in err          # the search's bar
    assert "gradinit seed 0: 100%" in err                     # the training's bar
