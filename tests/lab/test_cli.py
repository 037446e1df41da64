"""The `initlab` command in-process, on tiny configurations."""
import json

import pytest

import initlab
from initlab.lab import cli
from initlab.lab.compare import format_table

TINY = ["--data", "digits", "--subset", "200", "--test-subset", "100", "--batch-size", "50",
        "--epochs", "2", "--seeds", "2", "--quiet"]


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
    assert (out / "accuracy.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "kaiming+gradinit" in printed and "results.json" in printed
    assert format_table(results).splitlines()[0].split()[:2] == ["method", "first-epoch"]
    assert "| default |" in format_table(results, markdown=True)


def test_compare_records_a_method_that_cannot_handle_the_model(tmp_path, capsys):
    # Fixup needs residual branches; a plain VGG has none: reported, the others still run.
    cli.main(["compare", *TINY, "--model", "vgg", "--depth", "4", "--width", "2",
              "--methods", "fixup,default", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["methods"]["fixup"]["error"]
    assert len(results["methods"]["default"]["runs"]) == 2
    assert "fixup failed" in capsys.readouterr().out


def test_unknown_method_fails_early_listing_the_names(tmp_path):
    with pytest.raises(KeyError, match="gradinit"):
        cli.main(["compare", *TINY, "--methods", "default,nosuchinit", "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()


def test_methods_lists_the_registry(capsys):
    assert cli.main(["methods"]) == 0
    printed = capsys.readouterr().out
    for name in initlab.available_methods():
        assert name in printed
        assert initlab.method_info(name).paper in printed


def test_demo_parses_to_a_deep_plain_network():
    a = cli.parser().parse_args(["demo"])
    cfg = cli.config_from_args(a)
    assert cfg.data == "digits" and not cfg.bn and cfg.depth >= 8
    assert any("gradinit" in m for m in cfg.methods) and a.out == "runs/demo"


def test_bad_setting_syntax_is_refused():
    with pytest.raises(SystemExit):
        cli.main(["compare", "--set", "steps=3"])
