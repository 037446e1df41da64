"""The `initlab` command: compare initialization methods on real data, a short demo, the methods.

    initlab compare --data fashion-mnist --model vgg --depth 11 --no-bn \\
        --methods default,gradinit --epochs 5 --seeds 3 --lr 0.1 --out runs/vgg11
    initlab demo
    initlab methods
    initlab diagnose --model mlp --depth 10 --width 64 --methods default,kaiming --lr 0.1
    python -m initlab ...        # the same command

Exit status: 0 when every run finished (a run that diverged is a result, recorded as such);
1 when some run failed with an error (each is named on stderr); 2 for bad input, reported as
one line naming the fix, before any work; 130 when interrupted.

A subcommand lives in its own module with `add_subcommand(sub)` (which adds its parser to
`sub`) and `main_from_args(args) -> int`; this file registers and dispatches it in two lines.
To refuse bad input it raises `initlab.lab.usage.UsageError("--flag must ..., got ...")` from
`main_from_args` (before any work); `main` prints `initlab <command>: error: <message>` on
stderr and returns 2, as for the built-in commands. Its parser is a `usage.Parser` (as `sub`
makes it), so argparse's own errors are one line too; pass
`formatter_class=argparse.ArgumentDefaultsHelpFormatter` and a `help=` for every option so that
`--help` shows each default.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..registry import available_methods, method_info, setting_names
from . import distributed, recipes_cli
from .checks import check_compare_args
from .compare import CompareConfig, compare, format_table
from .data import DATASETS
from .models import ACTIVATIONS, MODELS
from .recipes import LAB_DEFAULT
from .train import TrainConfig
from .usage import EXIT_FAILED, EXIT_USAGE, Parser, UsageError, method_setting

# The demo: a 10-layer plain ReLU MLP (no normalization) on digits at SGD lr 0.1. PyTorch's
# default init leaves it untrainable (its variance shrinks ~6x per layer); GradInit's default
# search trains it from there; beside it its warm start alone, He (Kaiming) init, and the
# paper's setting (He init, then the authors' search). Training at this rate is chaotic: a
# seed's best accuracy can move by 20 points when the init moves by one part in a million.
# About a minute on 2 CPU cores.
DEMO = {"data": "digits", "model": "mlp", "depth": 10, "width": 64, "bn": False,
        "methods": "default,gradinit,gradinit-warmstart,kaiming,kaiming+gradinit-authors",
        "epochs": 15, "seeds": 5, "lr": 0.1, "batch_size": 64}


def _recipe_default(key: str) -> str:
    """Help text for an option a recipe sets: None means the recipe's value."""
    return f"(None: the recipe's; lab-default: {LAB_DEFAULT.settings[key]})"


def _add_compare_args(p: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    # Options a recipe sets default to None: "not given", the recipe's value.
    d = {"data": "digits", "model": "vgg", "depth": None, "width": None, "bn": False,
         "methods": "default,gradinit", "epochs": None, "seeds": 3, "lr": None,
         "batch_size": None, **defaults}
    p.add_argument("--recipe", default="lab-default",
                   help="training protocol that sets every option left at None "
                        "(`initlab recipes`)")
    p.add_argument("--data", choices=DATASETS, default=d["data"], help="data set")
    p.add_argument("--data-dir", default=None,
                   help="folder with the data set's files (None: $INITLAB_DATA, then the "
                        "Debian package's folder)")
    p.add_argument("--model", choices=MODELS, default=d["model"], help="network")
    p.add_argument("--depth", type=int, default=d["depth"],
                   help="MLP: Linear layers; VGG: conv layers; ResNet: 6n+2 (None: the model's)")
    p.add_argument("--width", type=int, default=d["width"],
                   help="MLP: hidden width; VGG/ResNet: channels of the first stage (None: the "
                        "model's)")
    p.add_argument("--bn", action=argparse.BooleanOptionalAction, default=d["bn"],
                   help="batch normalization (VGG, ResNet)")
    p.add_argument("--activation", default="relu",
                   help=f"MLP activation: {', '.join(ACTIVATIONS)}")
    p.add_argument("--methods", default=d["methods"],
                   help="comma-separated registry names (see `initlab methods`); a+b: a, then b")
    p.add_argument("--epochs", type=int, default=d["epochs"],
                   help=f"training epochs per run {_recipe_default('train.epochs')}")
    p.add_argument("--seeds", type=int, default=d["seeds"], help="number of seeds (0 .. n-1)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help=f"training optimizer {_recipe_default('train.optimizer')}")
    p.add_argument("--lr", type=float, default=d["lr"],
                   help=f"learning rate {_recipe_default('train.lr')}")
    p.add_argument("--momentum", type=float, default=None,
                   help=f"SGD momentum {_recipe_default('train.momentum')}")
    p.add_argument("--weight-decay", type=float, default=None,
                   help=f"weight decay {_recipe_default('train.weight_decay')}")
    p.add_argument("--decay-norm", action=argparse.BooleanOptionalAction, default=None,
                   help=f"weight decay on normalization layers' parameters too "
                        f"{_recipe_default('train.decay_norm')}")
    p.add_argument("--bias-lr-scale", type=float, default=None,
                   help=f"learning-rate factor for biases and scalar multipliers "
                        f"{_recipe_default('train.bias_lr_scale')}")
    p.add_argument("--schedule", choices=("cosine", "constant"), default=None,
                   help=f"learning-rate schedule {_recipe_default('train.schedule')}")
    p.add_argument("--warmup", type=float, default=None,
                   help=f"linear warmup, in epochs {_recipe_default('train.warmup_epochs')}")
    p.add_argument("--clip", type=float, default=None,
                   help=f"clip the gradient norm; 0: off {_recipe_default('train.clip')}")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help=f"training batch size {_recipe_default('batch_size')}")
    p.add_argument("--constructor-init", choices=("pytorch", "authors"), default=None,
                   help=f"the init `default` keeps: PyTorch's layers' or the GradInit code's "
                        f"{_recipe_default('constructor_init')}")
    p.add_argument("--pad-to", type=int, default=None,
                   help=f"zero-pad images to this side; 0: no padding {_recipe_default('pad_to')}")
    p.add_argument("--augment", default=None,
                   help=f"'none' or a comma list of crop, flip, cutout "
                        f"{_recipe_default('augment')}")
    p.add_argument("--subset", type=int, default=None,
                   help="training examples to keep (None: all)")
    p.add_argument("--test-subset", type=int, default=None, help="test examples to keep (None: all)")
    p.add_argument("--set", dest="settings", type=method_setting, action="append", default=[],
                   metavar="METHOD.KEY=VALUE",
                   help="a method setting, e.g. --set gradinit.steps=50 (repeatable)")
    p.add_argument("--out", default=d.get("out"),
                   help="the table's folder: results.json, accuracy.png and the stored runs (the "
                        "same command again continues a stopped table)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new run after this long (finished runs are kept)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars or logs, only the table")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also the methods' own logs and every epoch under the progress bars")


def parser() -> argparse.ArgumentParser:
    ap = Parser(prog="initlab", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    show = argparse.ArgumentDefaultsHelpFormatter
    c = sub.add_parser("compare", help="methods x seeds on real data: table, JSON, plot",
                       formatter_class=show)
    _add_compare_args(c, {"out": "runs/compare"})
    d = sub.add_parser("demo", help="default vs GradInit on digits with a deep plain network "
                                    "(under a minute on a laptop CPU)", formatter_class=show)
    _add_compare_args(d, dict(DEMO, out="runs/demo"))
    sub.add_parser("methods", help="list the initialization methods")
    from .translation.cli import add_subcommand  # the translation lab's grid
    add_subcommand(sub)
    recipes_cli.add_subcommand(sub)
    from .diagnose_cli import add_subcommand as add_diagnose
    add_diagnose(sub)
    return ap


def show_progress(a: argparse.Namespace) -> bool:
    """Progress bars: for a person at a terminal, on rank 0; otherwise a log line per epoch."""
    return not a.quiet and sys.stderr.isatty() and distributed.is_main()


def config_from_args(a: argparse.Namespace) -> CompareConfig:
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    settings: dict[str, dict[str, Any]] = {}
    for method, key, value in a.settings:
        settings.setdefault(method, {})[key] = value
    if show_progress(a):  # the bars cover the initialization searches too
        parts = {p for m in methods for p in m.split("+")}
        for part in sorted(parts):
            if "progress" in (setting_names(part) or ()):
                settings.setdefault(part, {}).setdefault("progress", True)
    train = TrainConfig(epochs=a.epochs, optimizer=a.optimizer, lr=a.lr, momentum=a.momentum,
                        weight_decay=a.weight_decay, decay_norm=a.decay_norm,
                        bias_lr_scale=a.bias_lr_scale, schedule=a.schedule,
                        warmup_epochs=a.warmup, clip=a.clip, device=a.device,
                        progress=show_progress(a))
    return CompareConfig(recipe=a.recipe, data=a.data, data_dir=a.data_dir, model=a.model,
                         depth=a.depth, width=a.width, bn=a.bn, activation=a.activation,
                         methods=methods, seeds=a.seeds, batch_size=a.batch_size,
                         constructor_init=a.constructor_init, pad_to=a.pad_to,
                         augment=a.augment, subset=a.subset, test_subset=a.test_subset,
                         train=train, method_settings=settings)


def failed_runs(results: dict[str, Any]) -> list[str]:
    """"method: error" for every method whose runs stopped on an error (not a divergence)."""
    return [f"{name}: {entry['error']}" for name, entry in results["methods"].items()
            if entry.get("error")]


def run_compare(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    if a.device.startswith("cuda"):
        import torch
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    results = compare(cfg, out=a.out, max_minutes=a.max_minutes)
    if not distributed.is_main():  # under torchrun, rank 0 reports
        return 0
    print()
    print(format_table(results))
    out = Path(a.out)
    print(f"\n{time.perf_counter() - start:.0f} s. Results: {out / 'results.json'}   "
          f"plot: {out / 'accuracy.png'}")
    failed = failed_runs(results)
    for line in failed:
        print(f"initlab {a.command}: failed: {line}", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def list_methods() -> int:
    names = available_methods()
    width = max(len(n) for n in names)
    for name in names:
        info = method_info(name)
        data = "  [learns from data]" if info.needs_data else ""
        print(f"{name.ljust(width)}  {info.description}{data}\n{' ' * width}  ({info.paper})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        return _run(a)
    except UsageError as e:
        print(f"initlab {a.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"initlab {a.command}: interrupted (finished runs are kept)", file=sys.stderr)
        return 130


def _run(a: argparse.Namespace) -> int:
    if a.command == "methods":
        return list_methods()
    if a.command == "recipes":
        return recipes_cli.main_from_args(a)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    verbose, quiet = getattr(a, "verbose", False), getattr(a, "quiet", False)
    logging.getLogger("initlab").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("initlab.lab").setLevel(
        logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if a.command == "translate-grid":
        from .translation.cli import main_from_args
        return main_from_args(a)
    if a.command == "diagnose":
        from .diagnose_cli import main_from_args as diagnose_main
        return diagnose_main(a)
    return compare_command(a)


def compare_command(a: argparse.Namespace) -> int:
    """`initlab compare` and `initlab demo`: every argument checked, then the runs."""
    check_compare_args(a)
    if distributed.launched_by_torchrun():  # DDP training, distributed GradInit
        a.device = distributed.setup(a.device)
        if not distributed.is_main():  # rank 0 logs; the others only their errors
            for name in ("initlab", "initlab.lab"):
                logging.getLogger(name).setLevel(logging.ERROR)
        try:
            return run_compare(a)
        finally:
            distributed.teardown()
    if a.command == "demo":
        print(f"initlab demo: {', '.join(a.methods.split(','))} on {a.data}; {a.model} of depth "
              f"{a.depth} {'with' if a.bn else 'without'} normalization, {a.seeds} seeds x "
              f"{a.epochs} epochs, {a.optimizer or 'sgd'} lr {a.lr}. ('a+b': method a, then b.)")
    return run_compare(a)


if __name__ == "__main__":
    sys.exit(main())
