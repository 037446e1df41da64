"""`initlab diagnose`: why a network will not train, and what each initialization changes.

    initlab diagnose --model mlp --depth 10 --width 64 --data digits \\
        --methods default,kaiming,gradinit --lr 0.1 --out runs/diagnose-mlp
    initlab diagnose --model transformer --data bible --depth 6 --width 64 --ffn 256 \\
        --vocab-size 2000 --methods default,gradinit --optimizer adam --lr 2e-3
    initlab diagnose --model mypkg.nets:make_net --data fashion-mnist --lr 0.05

For each method a fresh model is built from the same seed, initialized (methods that learn from
data get the lab's settings and their own batches, as in `initlab compare` and
`translate-grid`), then diagnosed on the same training batches. Prints each diagnosis and the
comparison; writes `<out>/<method>.png`, `<out>/compare.png` and `<out>/diagnoses.json`.
A `module:factory` model is built by calling `factory(...)` with those of `in_channels`,
`image_size`, `num_classes`, `vocab_size`, `depth`, `width` that its signature names.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import itertools
import json
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..diagnostics import compare, diagnose
from ..registry import initialize, method_info
from . import usage
from .checks import check_data, check_fixed_rules, check_settings_args, method_names, probe_model
from .compare import CompareConfig, init_model, method_settings, new_model
from .data import DATASETS, Batches, load_dataset
from .models import MODELS, build_model
from .train import TrainConfig
from .usage import UsageError, method_setting

TEXT = ("bible",)  # the translation lab's English->Spanish verses


def add_subcommand(sub: Any) -> None:
    p = sub.add_parser("diagnose", help="measure a model at init (signal, gradients, one step, "
                       "residuals, attention) before and after initialization methods",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="mlp",
                   help=f"{', '.join(MODELS)}, transformer (with --data bible), or module:factory")
    p.add_argument("--data", default="digits", help=", ".join(DATASETS + TEXT))
    p.add_argument("--data-dir", default=None,
                   help="folder with the data (None: $INITLAB_DATA, then the system's)")
    p.add_argument("--depth", type=int, default=None,
                   help="layers; Transformer: per stack (None: the model's)")
    p.add_argument("--width", type=int, default=None,
                   help="width; Transformer: d_model (None: the model's)")
    p.add_argument("--bn", action=argparse.BooleanOptionalAction, default=False,
                   help="batch normalization (VGG, ResNet)")
    p.add_argument("--activation", default="relu", help="MLP activation")
    p.add_argument("--heads", type=int, default=4, help="Transformer attention heads")
    p.add_argument("--ffn", type=int, default=512, help="Transformer feed-forward width")
    p.add_argument("--norm", choices=("post", "pre"), default="post", help="Transformer norm")
    p.add_argument("--vocab-size", type=int, default=2000, help="bible: SentencePiece pieces")
    p.add_argument("--max-words", type=int, default=16, help="bible: longest verse kept")
    p.add_argument("--methods", default="default",
                   help="comma-separated registry names; a+b: a, then b")
    p.add_argument("--set", dest="settings", type=method_setting, action="append", default=[],
                   metavar="METHOD.KEY=VALUE", help="a method setting (repeatable)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd",
                   help="the optimizer whose first step is diagnosed")
    p.add_argument("--lr", type=float, default=None,
                   help="the learning rate you will train with (required)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
    p.add_argument("--batch-size", type=int, default=None, help="None: 64 (bible: 32)")
    p.add_argument("--batches", type=int, default=4, help="measured batches + 1 held out")
    p.add_argument("--seed", type=int, default=0, help="model draws and batch order")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default="runs/diagnose", help="folder for the figures and JSON")
    p.add_argument("--quiet", action="store_true", help="print only the comparison")
    p.add_argument("-v", "--verbose", action="store_true", help="the methods' own logs")


def validate(a: argparse.Namespace) -> Callable[..., nn.Module] | None:
    """Check every argument before any work (UsageError: one line, exit 2); returns the
    imported factory, if `--model` names one."""
    for flag in ("depth", "width", "heads", "ffn", "vocab_size", "max_words", "batch_size"):
        usage.at_least("--" + flag.replace("_", "-"), getattr(a, flag))
    usage.at_least("--batches", a.batches, 2)
    if a.lr is None:
        raise UsageError("--lr is required: the learning rate you will train with")
    usage.positive("--lr", a.lr)
    usage.fraction("--momentum", a.momentum)
    usage.non_negative("--weight-decay", a.weight_decay)
    usage.one_of("--data", a.data, DATASETS + TEXT)
    factory = None
    if ":" in a.model:
        module, _, name = a.model.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"--model {a.model}: cannot import it ({e}); give module:factory "
                             "of an importable module") from None
        if not callable(factory):
            raise UsageError(f"--model {a.model} is not callable; name a function or class")
    else:
        usage.one_of("--model", a.model, MODELS + ("transformer",))
        if (a.model == "transformer") != (a.data in TEXT):
            raise UsageError("--model transformer goes with --data bible (and bible with it)")
    parts = method_names(a.methods)
    check_settings_args(a.settings, parts)
    if a.data in DATASETS:
        check_data(a)
        if factory is None:
            check_fixed_rules(a, parts, probe_model(a))
    usage.device("--device", a.device)
    usage.writable_dir("--out", a.out)
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    return factory


def main_from_args(a: argparse.Namespace) -> int:
    factory = validate(a)
    try:
        lab = ImageLab(a, factory) if a.data in DATASETS else TextLab(a, factory)
    except FileNotFoundError as e:  # the Bible corpus needs its Debian packages
        raise UsageError(str(e)) from None
    out = Path(a.out)
    batches = list(itertools.islice(lab.batches, a.batches))  # the same ones for every method
    found = []
    for spec in a.methods:
        model = lab.build().to(a.device)  # the seed's constructor draws, for every method
        for name in spec.split("+"):
            lab.initialize(model, name)
        d = diagnose(model, batches, lr=a.lr, loss_fn=lab.loss_fn, optimizer=a.optimizer,
                     momentum=a.momentum, weight_decay=a.weight_decay, batches=a.batches,
                     label=spec)
        d.plot(out / f"{spec}.png")
        if not a.quiet:
            print(d.summary(), end="\n\n")
        found.append(d)
    if len(found) > 1:
        c = compare(*found)
        c.plot(out / "compare.png")
        print(c.summary())
    (out / "diagnoses.json").write_text(json.dumps([d.to_dict() for d in found], indent=1,
                                                   default=str))
    print(f"\nfigures and diagnoses.json in {out}")
    return 0


def _call(factory: Callable[..., nn.Module], offered: dict[str, Any]) -> nn.Module:
    names = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in offered.items() if k in names and v is not None})


class ImageLab:
    """digits / Fashion-MNIST as `initlab compare` runs them (`compare.run_one`): the recipe's
    resolved settings, the seed's model, each method's settings and its own batches."""

    def __init__(self, a: argparse.Namespace, factory: Callable[..., nn.Module] | None):
        self.a, self.factory, self.loss_fn = a, factory, None
        settings: dict[str, dict[str, Any]] = {}
        for method, key, value in a.settings:
            settings.setdefault(method, {})[key] = value
        train = TrainConfig(optimizer="adam" if "adam" in a.optimizer else "sgd", lr=a.lr,
                            momentum=a.momentum, weight_decay=a.weight_decay, device=a.device)
        self.cfg = CompareConfig(data=a.data, data_dir=a.data_dir, model=a.model if factory is
                                 None else "mlp", depth=a.depth, width=a.width, bn=a.bn,
                                 activation=a.activation, batch_size=a.batch_size or 64,
                                 train=train, method_settings=settings).resolved()
        self.data = load_dataset(a.data, a.data_dir)
        self.batches = Batches(self.data.x_train, self.data.y_train, self.cfg.batch_size,
                               shuffle=True, seed=1000 * a.seed, device=a.device)

    def build(self) -> nn.Module:
        d, a = self.data, self.a
        if self.factory is None:
            return new_model(self.cfg, d, a.seed)
        torch.manual_seed(a.seed)
        return _call(self.factory, dict(in_channels=d.in_channels, image_size=d.image_size,
                                        num_classes=d.num_classes, depth=a.depth, width=a.width))

    def initialize(self, model: nn.Module, name: str) -> None:
        settings = method_settings(name, self.cfg, len(self.data.y_train))
        batches = Batches(self.data.x_train, self.data.y_train,
                          max(1, round(self.cfg.batch_size * settings["batch_fraction"])),
                          shuffle=True, seed=1000 * self.a.seed + 500, drop_last=True,
                          device=self.a.device)
        init_model(model, name, batches, {name: settings})


class TextLab:
    """Bible verses: the label-smoothed seq2seq loss; the methods of `translate-grid` as it
    applies them (`translation/inits.py`: GradInit for this optimizer and lr, the authors'
    recipe as `gradinit-authors`, Admin profiled on a batch, T-Fixup, DeepNet); any other
    registered method, or one given `--set` values, through the registry."""

    def __init__(self, a: argparse.Namespace, factory: Callable[..., nn.Module] | None):
        from .translation.data import TokenBatches, load_translation_data
        from .translation.training import seq2seq_loss
        self.a, self.factory = a, factory
        self.data = load_translation_data(a.data_dir, max_words=a.max_words,
                                          vocab_size=a.vocab_size)
        train = self.data.src["train"], self.data.tgt["train"]
        self.size = a.batch_size or 32
        self.batches = TokenBatches(*train, self.size, shuffle=True, seed=a.seed, device=a.device)
        self.init_batches = partial(TokenBatches, *train, self.size, shuffle=True,
                                    seed=a.seed + 7919, device=a.device)  # fresh per method
        self.loss_fn = partial(seq2seq_loss, label_smoothing=0.1)
        self.settings: dict[str, dict[str, Any]] = {}
        for method, key, value in a.settings:
            self.settings.setdefault(method, {})[key] = value

    def build(self) -> nn.Module:
        a = self.a
        torch.manual_seed(a.seed)  # the same constructor draws for every method
        if self.factory is not None:
            return _call(self.factory, dict(vocab_size=self.data.vocab_size, depth=a.depth,
                                             width=a.width))
        return build_model("transformer", depth=a.depth or 6, width=a.width or 128,
                           vocab_size=self.data.vocab_size, nhead=a.heads, ffn=a.ffn,
                           norm=a.norm)

    def initialize(self, model: nn.Module, name: str) -> None:
        from .translation.inits import METHODS, apply_method
        given = self.settings.get(name, {})
        a = self.a
        if name == "default":  # the model's own init (apply_method expects no call for it)
            initialize(model, "default")
        elif name in METHODS and (not given or (set(given) == {"steps"} and "authors" in name)):
            steps = given.get("steps", 780)
            apply_method(model, name, self.data, optimizer="adam" if "adam" in a.optimizer
                         else "sgd", lr=a.lr, seed=a.seed, batch_size=self.size,
                         label_smoothing=0.1, gradinit_steps=steps, gradinit_sgd_steps=200,
                         device=a.device)
        elif method_info(name).needs_data:
            initialize(model, name, data=self.init_batches(), loss_fn=self.loss_fn, **given)
        else:
            initialize(model, name, **given)
