"""Every argument of `initlab compare` / `initlab demo`, checked before any work.

`check_compare_args(args)` raises `UsageError` (one line naming the fix, exit status 2) for:
numbers out of range, an unknown method or activation, a `--set` key the method does not have
or a value its settings refuse, a `--set` for a method not run, a model the options cannot
build, a fixed rule that cannot handle that model (tried once on a probe model: Fixup and
SkipInit need residual branches), a missing data folder, an `--out` that cannot be created and a
device this machine lacks. Options left at None ("not given") are not checked here.
"""
from __future__ import annotations

import argparse
import copy
import inspect
from typing import Any

from ..registry import available_methods, check_settings, method_info
from . import usage
from .data import DATASETS, DataNotFoundError, fashion_mnist_dir
from .models import ACTIVATIONS, build_model
from .recipes import recipes
from .usage import UsageError

#: Per-method settings the lab itself reads (not the method's own), accepted by `--set`.
LAB_METHOD_SETTINGS = ("batch_fraction",)


def method_names(spec: str) -> list[str]:
    """`--methods a,b+c` -> [["a"], ["b", "c"]] flattened, each a registered name."""
    specs = [m.strip() for m in spec.split(",") if m.strip()]
    if not specs:
        raise UsageError("--methods is empty; give comma-separated names (see `initlab methods`)")
    parts = [p.strip() for s in specs for p in s.split("+")]
    for part in parts:
        usage.one_of("--methods: method", part, available_methods())
    return parts


def check_settings_args(settings: list[tuple[str, str, Any]], parts: list[str]) -> None:
    """Each `--set METHOD.KEY=VALUE` names a method being run and a setting it has, and the
    values of one method together pass its settings' checks."""
    by_method: dict[str, dict[str, Any]] = {}
    for method, key, value in settings:
        flag = f"--set {method}.{key}"
        if method not in parts:
            raise UsageError(f"{flag}: {method!r} is not among --methods ({', '.join(parts)}); "
                             "set only methods that run")
        if key not in LAB_METHOD_SETTINGS:
            try:
                check_settings(method, {key: value}, values=False)
            except TypeError as e:
                usage.reraise(flag, e)
        by_method.setdefault(method, {})[key] = value
    for method, given in by_method.items():
        own = {k: v for k, v in given.items() if k not in LAB_METHOD_SETTINGS
               and not (k == "steps" and isinstance(v, str))}  # the lab resolves "epoch" steps
        try:
            check_settings(method, own)
        except (TypeError, ValueError) as e:
            usage.reraise(f"--set {method}", e)


def check_numbers(a: argparse.Namespace) -> None:
    for flag in ("epochs", "seeds", "depth", "width", "batch_size", "subset", "test_subset"):
        usage.at_least("--" + flag.replace("_", "-"), getattr(a, flag, None))
    usage.positive("--lr", getattr(a, "lr", None))
    usage.fraction("--momentum", getattr(a, "momentum", None))
    usage.non_negative("--weight-decay", getattr(a, "weight_decay", None))
    usage.non_negative("--warmup", getattr(a, "warmup", None))
    usage.non_negative("--clip", getattr(a, "clip", None))
    usage.positive("--bias-lr-scale", getattr(a, "bias_lr_scale", None))
    usage.at_least("--pad-to", getattr(a, "pad_to", None), minimum=0)
    usage.non_negative("--max-minutes", getattr(a, "max_minutes", None))


def check_data(a: argparse.Namespace) -> None:
    usage.one_of("--data", a.data, DATASETS)
    usage.existing_dir("--data-dir", a.data_dir)
    if a.data == "fashion-mnist":
        try:
            fashion_mnist_dir(a.data_dir)
        except DataNotFoundError as e:
            raise UsageError(str(e)) from None


def probe_model(a: argparse.Namespace):
    """The model the options describe, built once (on 8x8 one-channel inputs, 32x32 for the
    CIFAR VGG: the structure, not the sizes, decides whether a method applies)."""
    usage.one_of("--activation", a.activation, list(ACTIVATIONS))
    if a.activation != "relu" and a.model != "mlp":
        raise UsageError(f"--activation {a.activation} applies to --model mlp only ({a.model} "
                         "uses ReLU)")
    try:
        size = 32 if a.model == "cifar-vgg" else 8
        return build_model(a.model, in_channels=1, image_size=size, num_classes=10, depth=a.depth,
                           width=a.width, bn=a.bn, activation=a.activation)
    except ValueError as e:
        usage.reraise(f"--model {a.model}", e)


def check_fixed_rules(a: argparse.Namespace, parts: list[str], model: Any) -> None:
    """Run each fixed rule (no data, no example input) once on a copy of the probe model."""
    given: dict[str, dict[str, Any]] = {}
    for method, key, value in a.settings:
        given.setdefault(method, {})[key] = value
    for part in dict.fromkeys(parts):
        info = method_info(part)
        if info.needs_data or "example_input" in inspect.signature(info.fn).parameters:
            continue
        try:
            info.fn(copy.deepcopy(model), **given.get(part, {}))
        except (ValueError, TypeError, RuntimeError) as e:
            raise UsageError(f"--methods {part} cannot initialize --model {a.model}: {e}; choose "
                             f"another --model or leave {part} out") from None


def check_recipe(a: argparse.Namespace) -> None:
    """A registered --recipe, and an --augment it can read."""
    usage.one_of("--recipe", a.recipe, [r.name for r in recipes()])
    if a.augment is not None:
        parts = {p.strip() for p in a.augment.split(",") if p.strip()} - {"none"}
        for part in sorted(parts):
            usage.one_of("--augment", part, ["none", "crop", "flip", "cutout"])


def check_compare_args(a: argparse.Namespace) -> None:
    """Every check above, cheapest first; raises UsageError on the first failure."""
    check_numbers(a)
    check_recipe(a)
    parts = method_names(a.methods)
    check_settings_args(a.settings, parts)
    check_data(a)
    usage.device("--device", a.device)
    model = probe_model(a)
    check_fixed_rules(a, parts, model)
    usage.writable_dir("--out", a.out)
