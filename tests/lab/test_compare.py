"""`compare` under a recipe: its settings reach training (checked at the optimizer, not through
the recipe code), explicit settings override it, and a table resumes run by run."""
import importlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from initlab.lab import cli
from initlab.lab.compare import CompareConfig, compare
from initlab.lab.train import TrainConfig

compare_module = importlib.import_module("initlab.lab.compare")  # the module, not the function

TINY = ["--data", "digits", "--subset", "96", "--test-subset", "50", "--batch-size", "32",
        "--epochs", "1", "--seeds", "1", "--methods", "default", "--quiet"]


class Spy:
    """What training saw: the model at its start, its first input, and at every optimizer step
    each parameter group (lr, weight decay, parameter names) and the global gradient norm as
    the optimizer received it (after any clipping) and as clipping found it."""

    def __init__(self, monkeypatch):
        self.models, self.inputs, self.steps, self.unclipped = [], [], [], []
        real_train, real_step = compare_module.train, torch.optim.SGD.step
        real_clip = torch.nn.utils.clip_grad_norm_

        def train(model, *args, **kw):
            self.models.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            self.names = {id(p): n for n, p in model.named_parameters()}
            model.register_forward_pre_hook(lambda m, a: self.inputs.append(tuple(a[0].shape)))
            return real_train(model, *args, **kw)

        def step(opt, *args, **kw):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            self.steps.append(dict(
                norm=math.sqrt(sum(float(g.pow(2).sum()) for g in grads)),
                groups=[(g["lr"], g["weight_decay"], {self.names[id(p)] for p in g["params"]})
                        for g in opt.param_groups]))
            return real_step(opt, *args, **kw)

        def clip(params, max_norm, *args, **kw):
            norm = real_clip(params, max_norm, *args, **kw)
            self.unclipped.append(float(norm))
            return norm

        monkeypatch.setattr(compare_module, "train", train)
        monkeypatch.setattr(torch.optim.SGD, "step", step)
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)

    def lr_wd(self, name):
        """(lr, weight decay) of parameter `name` at the first step."""
        return next((lr, wd) for lr, wd, names in self.steps[0]["groups"] if name in names)


def test_authors_cnn_trains_a_plain_vgg_at_lr_01_on_digits(tmp_path):
    # 8x8 digits padded to 32x32 for the paper's VGG layer list; a quarter-image cutout hole
    # is too much for 8x8 digits in 4 epochs, so this run keeps the other settings only.
    rc = cli.main(["compare", "--recipe", "authors-cnn", "--no-bn", "--data", "digits",
                   "--model", "cifar-vgg", "--depth", "11", "--width", "8", "--batch-size", "32",
                   "--augment", "none", "--epochs", "4", "--seeds", "1", "--methods", "default",
                   "--quiet", "--out", str(tmp_path)])
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    train = results["config"]["train"]
    assert (train["lr"], train["clip"], train["weight_decay"]) == (0.1, 1.0, 1e-4)
    assert results["methods"]["default"]["summary"]["best_acc"]["mean"] > 0.6  # chance: 0.1


def test_plain_resnet_settings_reach_the_optimizer(tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    cli.main(["compare", "--recipe", "authors-cnn", "--no-bn", "--model", "resnet", "--depth",
              "8", "--width", "8", *TINY, "--out", str(tmp_path)])
    for name in spy.names.values():  # the authors' rule, by name: 'bias' or 'scale' at lr/10
        expected = 0.01 if "bias" in name or "scale" in name else 0.1
        assert spy.lr_wd(name) == (pytest.approx(expected), 1e-4), name
    assert len(spy.steps) == 3 and all(s["norm"] <= 1 + 1e-5 for s in spy.steps)
    assert spy.inputs[0] == (32, 1, 32, 32)              # 8x8 digits padded to 32x32
    start = spy.models[0]                                # the authors' constructor init
    for name, w in start.items():
        if name.endswith("weight") and w.dim() == 4:
            fan_out = w.shape[0] * w.shape[2] * w.shape[3]
            assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.25), name
        if name.endswith("bias"):
            assert torch.all(w == 0), name


def test_gradient_norm_is_clipped_to_1_at_every_step(tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    cli.main(["compare", "--recipe", "authors-cnn", "--no-bn", "--model", "resnet", "--depth",
              "8", "--width", "8", *TINY, "--methods", "kaiming", "--epochs", "2",
              "--out", str(tmp_path)])
    assert len(spy.steps) == 6 and all(s["norm"] <= 1 + 1e-5 for s in spy.steps)
    assert max(spy.unclipped) > 1                        # the clipping did act


def test_bn_vgg_exempts_bn_from_decay_and_does_not_clip(tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    cli.main(["compare", "--recipe", "authors-cnn", "--bn", "--model", "cifar-vgg", "--depth",
              "11", "--width", "4", *TINY, "--out", str(tmp_path)])
    bn = {n for n in spy.names.values() if torch.Size([]) != spy.models[0][n].shape
          and spy.models[0][n].dim() == 1 and not n.startswith("classifier")}
    assert bn and all(spy.lr_wd(n) == (0.1, 0.0) for n in bn)
    assert all(spy.lr_wd(n) == (0.1, 1e-4) for n in set(spy.names.values()) - bn)
    assert spy.unclipped == []
    classifier = spy.models[0]["classifier.weight"]
    assert classifier.std().item() == pytest.approx(0.01, rel=0.25)


def test_explicit_flags_override_the_recipe(tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    cli.main(["compare", "--recipe", "authors-cnn", "--no-bn", "--model", "vgg", "--depth", "4",
              "--width", "4", "--clip", "0", "--weight-decay", "5e-4", "--pad-to", "0",
              "--lr", "0.05", *TINY, "--out", str(tmp_path)])
    assert spy.unclipped == [] and spy.inputs[0] == (32, 1, 8, 8)
    assert {(lr, wd) for lr, wd, _ in spy.steps[0]["groups"]} == {(0.05, 5e-4)}
    config = json.loads((tmp_path / "results.json").read_text())["config"]
    assert config["constructor_init"] == "authors" and config["augment"] == "crop,flip,cutout"
    # not given: the recipe's; the CLI leaves them unset
    a = cli.parser().parse_args(["compare"])
    assert a.lr is None and a.clip is None and a.batch_size is None and a.recipe == "lab-default"


def test_results_record_the_recipe_and_every_resolved_setting(tmp_path):
    cfg = CompareConfig(recipe="authors-cnn", model="resnet", depth=8, width=4, data="digits",
                        subset=64, test_subset=32, methods=["default+gradinit-authors"], seeds=1,
                        train=TrainConfig(epochs=1), method_settings={"gradinit-authors":
                                                                      {"steps": 3}})
    results = compare(cfg, out=tmp_path)
    assert results["recipe"]["name"] == "authors-cnn" and "777c407" in results["recipe"]["source"]
    groups = {(round(g["lr"], 6), g["weight_decay"]) for g in results["optimizer_groups"]}
    assert groups == {(0.1, 1e-4), (0.01, 1e-4)}
    assert results["augmentation"]["cutout"] == 4 and results["config"]["pad_to"] == 32
    run = results["methods"]["default+gradinit-authors"]["runs"][0]
    assert run["settings"]["gradinit-authors"] == dict(steps=3, scale_lr=5e-2, target="sgd",
                                                       lr=0.1, batch_fraction=0.5)
    assert run["init_steps"] > 0 and run["step_seconds"] > 0
    # the recipe's counts: MetaInit one pass over its batches (the ResNet's are half batches),
    # GradInit-authors the training steps of an epoch, clamped to [100, 390]
    resnet = CompareConfig(recipe="authors-cnn", model="resnet").resolved()
    vgg = CompareConfig(recipe="authors-cnn", model="cifar-vgg").resolved()
    steps = lambda name, cfg, n: compare_module.method_settings(name, cfg, n)["steps"]  # noqa: E731
    assert (steps("metainit", resnet, 20000), steps("metainit", vgg, 20000)) == (312, 156)
    assert [steps("gradinit-authors", vgg, n) for n in (1000, 20000, 60000)] == [100, 157, 390]


def _tiny(tmp_path, methods=("default", "kaiming"), **kw):
    cfg = CompareConfig(data="digits", model="mlp", depth=2, width=8, subset=64, test_subset=32,
                        methods=list(methods), seeds=2, batch_size=32,
                        train=TrainConfig(epochs=1, **kw))
    return compare(cfg, out=tmp_path)


def _count_runs(monkeypatch):
    ran = []
    real = compare_module.run_one
    monkeypatch.setattr(compare_module, "run_one",
                        lambda cfg, data, name, seed: ran.append((name, seed)) or
                        real(cfg, data, name, seed))
    return ran


def test_a_stopped_table_continues_where_it_stopped(tmp_path, monkeypatch):
    first = _tiny(tmp_path)
    (tmp_path / "runs" / "kaiming--seed1.json").unlink()   # as if stopped during that run
    ran = _count_runs(monkeypatch)
    again = _tiny(tmp_path)
    assert ran == [("kaiming", 1)]
    assert again["methods"]["kaiming"]["runs"][1]["test_acc"] == \
        first["methods"]["kaiming"]["runs"][1]["test_acc"]
    assert [len(e["runs"]) for e in again["methods"].values()] == [2, 2]
    assert _tiny(tmp_path) and ran == [("kaiming", 1)]  # nothing left to run
    with pytest.raises(ValueError, match="another --out"):
        _tiny(tmp_path, lr=0.05)


def test_processes_share_a_table_through_claims(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "default--seed0.claim").write_text(str(os.getppid()))     # a live process's run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (runs / "kaiming--seed0.claim").write_text(str(dead.pid))         # its process is gone
    ran = _count_runs(monkeypatch)
    results = _tiny(tmp_path)
    assert sorted(ran) == [("default", 1), ("kaiming", 0), ("kaiming", 1)]
    assert [r["seed"] for r in results["methods"]["default"]["runs"]] == [1]
    assert (runs / "default--seed0.claim").exists() and not (runs / "kaiming--seed0.claim").exists()


def test_max_minutes_starts_no_new_run(tmp_path, monkeypatch):
    ran = _count_runs(monkeypatch)
    cfg = CompareConfig(data="digits", model="mlp", depth=2, width=8, subset=64, methods=["default"],
                        seeds=1, batch_size=32, train=TrainConfig(epochs=1))
    results = compare(cfg, out=tmp_path, max_minutes=0)
    assert ran == [] and results["methods"] == {}
    assert not list((tmp_path / "runs").glob("*.claim"))
