"""GradInit in 1 process vs 2 processes (torch.distributed, gloo, CPU) for the same global batches.

    python benchmarks/distributed_gradinit.py [--model vgg|mlp] [--steps 40] [--batch 128]

Every configuration runs the same search: the same model and the same global batches of
`--batch` rows (S = two of them); with 2 processes each rank takes every other row of each
global batch (`initlab.lab.distributed.Shard`), so the ranks' union is the one-process batch.
Measured: the whole `initlab.gradinit` call (after a 2-step warm-up) and the median time of each
kind of iteration, for 1 process with 1 and with 2 threads and for 2 processes of 1 thread;
and the largest relative difference of the final parameters from the 1-process, 1-thread run.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import initlab
from initlab.lab.data import Batches, load_dataset
from initlab.lab.distributed import Shard
from initlab.lab.models import build_model

MODELS = {  # name -> (data, build_model kwargs, gradinit scale_lr)
    "vgg": ("fashion-mnist", dict(name="vgg", depth=8, width=16), 1e-2),
    "mlp": ("digits", dict(name="mlp", depth=6, width=256), 1e-2),
}


def problem(args: argparse.Namespace) -> tuple[torch.nn.Module, list]:
    data_name, kwargs, _ = MODELS[args.model]
    data = load_dataset(data_name, subset=args.batch * (2 * args.steps + 8))
    torch.manual_seed(0)
    model = build_model(in_channels=data.in_channels, image_size=data.image_size, **kwargs)
    batches = list(Batches(data.x_train, data.y_train, args.batch, shuffle=True, seed=1,
                           drop_last=True))
    return model, batches


def run(args: argparse.Namespace, rank: int = 0, world: int = 1) -> dict[str, Any]:
    model, batches = problem(args)
    data = list(Shard(batches, rank, world)) if world > 1 else batches
    settings = dict(steps=args.steps, lr=0.1, scale_lr=MODELS[args.model][2], gamma=args.gamma,
                    faithful=True)  # the authors' search: a fixed number of iterations
    initlab.gradinit(copy.deepcopy(model), data, **dict(settings, steps=2))  # warm-up
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    report = initlab.gradinit(model, data, **settings)
    seconds = time.perf_counter() - start
    per = {kind: [h["seconds"] for h in report.history if h["branch"] == kind]
           for kind in ("objective", "constraint")}
    return dict(seconds=seconds, params={k: v.detach().clone() for k, v in model.state_dict().items()},
                median={k: statistics.median(v) if v else None for k, v in per.items()},
                count={k: len(v) for k, v in per.items()})


def worker(rank: int, init_file: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        result = run(args, rank, 2)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def rel_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).norm() / b[k].double().norm()) for k in b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=MODELS, default="vgg")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128, help="global rows per batch (S = 2 batches)")
    ap.add_argument("--gamma", type=float, default=1.0)
    args = ap.parse_args()
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows.append((f"1 process, {threads} thread{'s' * (threads > 1)}", run(args)))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(worker, args=(os.path.join(tmp, "rendezvous"), args, out), nprocs=2)
        rows.append(("2 processes (gloo), 1 thread each", torch.load(out, weights_only=False)))
    base = rows[0][1]
    print(f"{args.model}, {args.steps} GradInit iterations, global batch {args.batch} "
          f"(S = {2 * args.batch} rows), torch {torch.__version__}, {os.cpu_count()} CPUs\n")
    print("| configuration | total s | objective it. s (median, n) | constraint it. s (median, n) "
          "| max rel. diff of params vs 1 process |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        cells = [f"{r['median'][k]:.3f} ({r['count'][k]})" if r["median"][k] else f"- ({r['count'][k]})"
                 for k in ("objective", "constraint")]
        print(f"| {name} | {r['seconds']:.2f} | {cells[0]} | {cells[1]} | "
              f"{rel_diff(r['params'], base['params']):.1e} |")


if __name__ == "__main__":
    main()
