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
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..diagnose import compare, diagnose
from ..methods.gradinit import TRANSFORMER_RECIPE
from ..registry import initialize, method_info
from .compare import CompareConfig, check_methods, method_settings
from .data import DATASETS, Batches, load_dataset
from .models import MODELS, build_model
from .train import TrainConfig

TEXT = ("bible",)  # the translation lab's English->Spanish verses


def add_subcommand(sub: Any) -> None:
    p = sub.add_parser("diagnose", help="measure a model at init (signal, gradients, one step, "
                       "residuals, attention) before and after initialization methods")
    p.add_argument("--model", default="mlp",
                   help=f"{', '.join(MODELS)}, transformer (with --data bible), or module:factory")
    p.add_argument("--data", default="digits", help=", ".join(DATASETS + TEXT))
    p.add_argument("--data-dir", default=None, help="default: $INITLAB_DATA, then the system's")
    p.add_argument("--depth", type=int, default=None, help="layers (Transformer: per stack)")
    p.add_argument("--width", type=int, default=None, help="width (Transformer: d_model)")
    p.add_argument("--bn", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--activation", default="relu", help="MLP activation")
    p.add_argument("--heads", type=int, default=4, help="Transformer heads")
    p.add_argument("--ffn", type=int, default=512, help="Transformer feed-forward width")
    p.add_argument("--norm", choices=("post", "pre"), default="post", help="Transformer norm")
    p.add_argument("--vocab-size", type=int, default=2000, help="bible: SentencePiece pieces")
    p.add_argument("--max-words", type=int, default=16, help="bible: longest verse kept")
    p.add_argument("--methods", default="default", help="comma-separated; a+b chains methods")
    p.add_argument("--set", dest="settings", action="append", default=[],
                   metavar="METHOD.KEY=VALUE", help="a method setting (repeatable)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=None, help="the learning rate you will train with")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (bible: 32)")
    p.add_argument("--batches", type=int, default=4, help="measured batches + 1 held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/diagnose", help="folder for the figures and JSON")
    p.add_argument("--quiet", action="store_true", help="print only the comparison")
    p.add_argument("-v", "--verbose", action="store_true")


def validate(a: argparse.Namespace) -> Callable[..., nn.Module] | None:
    """Check every argument before any work; returns the imported factory, if one is named."""
    from .cli import _setting
    factory = None
    if ":" in a.model:
        module, _, name = a.model.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot import the model factory {a.model!r}: {e}") from None
        if not callable(factory):
            raise ValueError(f"{a.model!r} is not callable; name a function or class")
    elif a.model not in MODELS + ("transformer",):
        raise ValueError(f"unknown --model {a.model!r}; use {', '.join(MODELS)}, transformer or "
                         "module:factory")
    if a.data not in DATASETS + TEXT:
        raise ValueError(f"unknown --data {a.data!r}; use {', '.join(DATASETS + TEXT)}")
    if (a.model == "transformer") != (a.data in TEXT) and factory is None:
        raise ValueError("--model transformer goes with --data bible (and bible with it)")
    if a.lr is None or not a.lr > 0:
        raise ValueError("--lr must be given and positive: the learning rate you will train with")
    if a.batches < 2 or (a.batch_size is not None and a.batch_size < 2):
        raise ValueError("--batches must be >= 2 and --batch-size >= 2")
    if any(v is not None and v < 1 for v in (a.depth, a.width)):
        raise ValueError("--depth and --width must be >= 1")
    if not 0 <= a.momentum < 1 or a.weight_decay < 0:
        raise ValueError("--momentum must lie in [0, 1) and --weight-decay be >= 0")
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if not a.methods:
        raise ValueError("--methods names no method")
    for spec in a.methods:
        try:
            check_methods(spec)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
    try:
        a.settings = [_setting(s) for s in a.settings]
    except argparse.ArgumentTypeError as e:
        raise ValueError(str(e)) from None
    return factory


def main_from_args(a: argparse.Namespace) -> int:
    try:
        factory = validate(a)
        lab = ImageLab(a, factory) if a.data in DATASETS else TextLab(a, factory)
    except (ValueError, FileNotFoundError) as e:
        print(f"initlab diagnose: error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    found = []
    for spec in a.methods:
        torch.manual_seed(a.seed)  # the same constructor draws for every method
        model = lab.build().to(a.device)
        for name in spec.split("+"):
            lab.initialize(model, name)
        d = diagnose(model, lab.batches, lr=a.lr, loss_fn=lab.loss_fn, optimizer=a.optimizer,
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
    """digits / Fashion-MNIST: cross-entropy, the batches and method settings of `compare`."""

    def __init__(self, a: argparse.Namespace, factory: Callable[..., nn.Module] | None):
        self.a, self.factory, self.loss_fn = a, factory, None
        self.data = load_dataset(a.data, a.data_dir)
        size = a.batch_size or 64
        self.batches = Batches(self.data.x_train, self.data.y_train, size, shuffle=True,
                               seed=1000 * a.seed, device=a.device)
        self.init_batches = Batches(self.data.x_train, self.data.y_train, max(1, size // 2),
                                    shuffle=True, seed=1000 * a.seed + 500, drop_last=True,
                                    device=a.device)
        self.cfg = CompareConfig(data=a.data, model=a.model, bn=a.bn, batch_size=size,
                                 train=TrainConfig(optimizer="adam" if "adam" in a.optimizer
                                                   else "sgd", lr=a.lr))
        for method, key, value in a.settings:
            self.cfg.method_settings.setdefault(method, {})[key] = value

    def build(self) -> nn.Module:
        d, a = self.data, self.a
        shape = dict(in_channels=d.in_channels, image_size=d.image_size, num_classes=d.num_classes)
        if self.factory is not None:
            return _call(self.factory, dict(shape, depth=a.depth, width=a.width))
        return build_model(a.model, depth=a.depth, width=a.width, bn=a.bn,
                           activation=a.activation, **shape)

    def initialize(self, model: nn.Module, name: str) -> None:
        settings = method_settings(name, self.cfg, self.batches)
        info = method_info(name)
        takes_data = info.needs_data or "example_input" in inspect.signature(info.fn).parameters
        initialize(model, name, data=self.init_batches if takes_data else None, **settings)


class TextLab:
    """Bible verses: label-smoothed seq2seq loss, the settings of `translate-grid`."""

    def __init__(self, a: argparse.Namespace, factory: Callable[..., nn.Module] | None):
        from .translation.data import TokenBatches, load_translation_data
        from .translation.training import seq2seq_loss
        self.a, self.factory = a, factory
        self.data = load_translation_data(a.data_dir, max_words=a.max_words,
                                          vocab_size=a.vocab_size)
        train = self.data.src["train"], self.data.tgt["train"]
        size = a.batch_size or 32
        self.batches = TokenBatches(*train, size, shuffle=True, seed=a.seed, device=a.device)
        self.init_batches = TokenBatches(*train, size, shuffle=True, seed=a.seed + 7919,
                                         device=a.device)
        self.loss_fn = partial(seq2seq_loss, label_smoothing=0.1)
        self.settings: dict[str, dict[str, Any]] = {
            "gradinit": dict(TRANSFORMER_RECIPE, batching="split"), "tfixup": {"seed": a.seed}}
        for method, key, value in a.settings:
            self.settings.setdefault(method, {})[key] = value

    def build(self) -> nn.Module:
        a = self.a
        if self.factory is not None:
            return _call(self.factory, dict(vocab_size=self.data.vocab_size, depth=a.depth,
                                             width=a.width))
        return build_model("transformer", depth=a.depth or 6, width=a.width or 128,
                           vocab_size=self.data.vocab_size, nhead=a.heads, ffn=a.ffn,
                           norm=a.norm)

    def initialize(self, model: nn.Module, name: str) -> None:
        settings = dict(self.settings.get(name, {}))
        if method_info(name).needs_data:
            initialize(model, name, data=self.init_batches, loss_fn=self.loss_fn, **settings)
        else:
            initialize(model, name, **settings)
