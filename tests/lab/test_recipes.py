"""The recipe registry: lookup, variants by context, registration."""
import importlib

import pytest

from initlab.lab.recipes import Recipe, Variant, recipe, recipes, register_recipe

registry = importlib.import_module("initlab.lab.recipes")  # the module (the lab exports recipes())


def test_authors_cnn_resolves_per_model():
    r = recipe("authors-cnn")
    plain_resnet = r.resolve(model="resnet", bn=False)
    assert plain_resnet["train.clip"] == 1.0 and plain_resnet["train.bias_lr_scale"] == 0.1
    assert plain_resnet["train.weight_decay"] == 1e-4 and plain_resnet["pad_to"] == 32
    assert plain_resnet["method.gradinit-authors"]["scale_lr"] == 5e-2
    assert plain_resnet["method.metainit"] == {"eps": 1e-5, "steps": "epoch",
                                               "batch_fraction": 0.5}
    bn_vgg = r.resolve(model="cifar-vgg", bn=True)
    assert bn_vgg["train.clip"] is None and bn_vgg["train.bias_lr_scale"] == 1.0
    assert bn_vgg["method.gradinit-authors"]["scale_lr"] == 1e-1
    assert bn_vgg["method.metainit"]["batch_fraction"] == 1.0
    assert r.resolve(model="cifar-vgg", bn=False)["train.clip"] == 1.0
    # resolving does not change the registered recipe
    assert "scale_lr" not in r.settings["method.gradinit-authors"]


def test_lab_default_is_todays_protocol():
    d = recipe("lab-default").resolve(model="vgg", bn=False)
    assert (d["train.weight_decay"], d["train.clip"], d["augment"], d["pad_to"]) == \
        (5e-4, None, "none", 0)
    assert d["method.gradinit-authors"]["scale_lr"] == 1e-2


def test_registry_lookup_and_registration(monkeypatch):
    monkeypatch.setattr(registry, "_RECIPES", dict(registry._RECIPES))  # a test's own registry
    names = [r.name for r in recipes()]
    assert names[:2] == ["lab-default", "authors-cnn"]
    with pytest.raises(KeyError, match="authors-cnn"):
        recipe("authors-cnm")
    mine = Recipe("test-only", "a test", "here", {"batch_size": 7},
                  (Variant({"model": ("a", "b")}, {"batch_size": 8}),))
    assert register_recipe(mine) is mine and recipe("test-only") is mine
    assert mine.resolve(model="b")["batch_size"] == 8 and mine.resolve(model="c")["batch_size"] == 7
    with pytest.raises(ValueError, match="already registered"):
        register_recipe(Recipe("test-only", "another", "there", {}))


def test_describe_names_every_setting_and_the_source():
    text = recipe("authors-cnn").describe()
    assert "777c407" in text and "train.clip" in text and "where bn=False" in text
    for key in recipe("authors-cnn").settings:
        assert key in text
