"""`initlab recipes`: every recipe with its source and settings."""
from initlab.lab import cli
from initlab.lab.recipes import recipes


def test_recipes_lists_authors_cnn_with_its_source_and_settings(capsys):
    assert cli.main(["recipes"]) == 0
    printed = capsys.readouterr().out
    for r in recipes():
        assert f"{r.name}: {r.description}" in printed and r.source in printed
    assert "authors-cnn" in printed and "train.clip = 1.0" in printed
    assert "train.weight_decay = 0.0001" in printed and "augment = 'crop,flip,cutout'" in printed


def test_recipes_by_name_and_an_unknown_name(capsys):
    assert cli.main(["recipes", "authors-cnn"]) == 0
    assert "lab-default" not in capsys.readouterr().out
    assert cli.main(["recipes", "authors-cnm"]) == 2
    assert "lab-default" in capsys.readouterr().err   # the error lists the names
