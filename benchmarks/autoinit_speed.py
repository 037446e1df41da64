"""AutoInit's cost on one CPU thread, against one forward pass of the example input.

Models: MLPs of width 64 with SELU at depths 6, 12, 24, 48 (is the cost about linear in depth?),
VGG-19 (width 64, 32x32 inputs, the lab's `VGG`) and ResNet-56 (the lab's, no BN). For each:
the median of `--repeats` calls of `initlab.autoinit(model, x)` at the default settings (tracing
included), one forward pass of the same example batch (32 inputs), and their ratio. Wall time,
or with `--cpu-time` the process's CPU time (on a machine other jobs share).

    OMP_NUM_THREADS=1 python benchmarks/autoinit_speed.py --json runs/autoinit_speed.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from typing import Callable

import torch
from torch import nn

import initlab
from initlab.lab.models import VGG, ResNet


def selu_mlp(depth: int, width: int = 64) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.SELU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "MLP 6 x 64, SELU": (lambda: selu_mlp(6), (64,)),
    "MLP 12 x 64, SELU": (lambda: selu_mlp(12), (64,)),
    "MLP 24 x 64, SELU": (lambda: selu_mlp(24), (64,)),
    "MLP 48 x 64, SELU": (lambda: selu_mlp(48), (64,)),
    "VGG-19 (width 64, 32x32)": (lambda: VGG(3, depth=19, width=64, image_size=32), (3, 32, 32)),
    "ResNet-56 (width 16, 32x32, no BN)": (lambda: ResNet(3, depth=56), (3, 32, 32)),
}


def seconds(fn: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    """Median over `repeats` calls, on `clock` (wall time, or this process's CPU time, which a
    busy machine inflates less)."""
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "already initialized": a repeat, on purpose
        for _ in range(repeats):
            start = clock()
            fn()
            times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="example batch size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated name prefixes")
    p.add_argument("--cpu-time", action="store_true",
                   help="time.process_time instead of wall time (for a shared machine)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(1)
    rows = []
    print("| model | AutoInit s | forward s | ratio |")
    print("|---|---|---|---|")
    for name, (build, shape) in MODELS.items():
        if args.only and not name.startswith(tuple(args.only.split(","))):
            continue
        torch.manual_seed(0)
        model = build()
        x = torch.randn(args.batch, *shape)
        init = seconds(lambda m=model, x=x: initlab.autoinit(m, x, seed=0), args.repeats,
                       clock)
        with torch.no_grad():
            model(x)
            forward = seconds(lambda m=model, x=x: m(x), max(args.repeats, 5), clock)
        rows.append(dict(model=name, autoinit_s=init, forward_s=forward, ratio=init / forward))
        print(f"| {name} | {init:.2f} | {forward:.4f} | {init / forward:.0f}x |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
