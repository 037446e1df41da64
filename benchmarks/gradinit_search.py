"""How GradInit's searches do from different starting inits: the study behind the default search.

    python benchmarks/gradinit_search.py --case mlp10 [--seeds 3] [--methods a,b] [--starts x,y]
                                         [--jitter 0,1,2] [--out runs/gradinit_search]
                                         [--table [--compact]]

Every run is the lab's protocol (`initlab compare`): for seed s the same model draws, the same
training batches and test set for every method; the model is built, started from an init, given
one GradInit variant (or none), then trained with SGD (momentum 0.9) at the case's lr. Besides
the accuracies it records what the search reported: iterations, why it stopped, and the guard's
one-step losses on the held-out batch (start vs returned). Results go to one JSON line per run
in OUT/CASE.jsonl; a run already there is skipped, so a stopped study resumes where it stopped.

Starts: `default` (the constructor's, PyTorch's init), `kaiming`, `xavier`, `kaiming3` (He x 3).
Methods (the candidates, written down before measuring; "default" is what `gradinit` does):
  none          no GradInit (the start alone)
  authors       the authors' search (faithful=True) with the lab's per-model authors settings
  warm          the default search's warm start alone (`gradinit-warmstart`)
  default       the default search: warm start, log-scale Adam with a scale lr halved on
                plateaus, the stopping rule, the plain SGD step in the objective, the guard,
                no scale grown above its warm-start value (max_growth=1)
  grow          the default search without that bound (max_growth=inf), as it was chosen
  normalized    `grow` with the authors' normalized step g/|g| in the objective
  nowarm        `grow` without the warm start
  warm+authors  the warm start, then the authors' search
  normalized-X  ablations of `normalized`: nowarm (no warm start); fixed (100 iterations at a
                fixed scale lr, no stopping rule); slow (first scale lr 0.03); gamma0.5,
                gamma2, nogamma (gamma 0.5, 2, infinite)
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import initlab
from initlab.lab.data import Batches, load_dataset
from initlab.lab.models import build_model
from initlab.lab.train import TrainConfig, train

CASES: dict[str, dict[str, Any]] = {
    # the demo: a 10-layer plain ReLU MLP on digits
    "mlp10": dict(data="digits", model="mlp", depth=10, width=64, batch=64, lr=0.1, epochs=15,
                  scale_lr=1e-2),
    "mlp10-tanh": dict(data="digits", model="mlp", depth=10, width=64, batch=64, lr=0.1,
                       epochs=15, scale_lr=1e-2, activation="tanh"),
    "vgg11": dict(data="digits", model="vgg", depth=11, width=8, batch=64, lr=0.1, epochs=8,
                  scale_lr=1e-2, clip=1.0),
    "resnet20": dict(data="digits", model="resnet", depth=20, width=8, batch=64, lr=0.1,
                     epochs=8, scale_lr=5e-2, clip=1.0),
}
STARTS = ["default", "kaiming", "xavier", "kaiming3"]
UNBOUNDED = dict(max_growth=float("inf"))  # the search before its growth bound
METHODS: dict[str, dict[str, Any]] = {
    "none": {},
    "authors": dict(faithful=True),
    "warm": dict(warm_only=True),
    "default": {},
    "grow": UNBOUNDED,
    "normalized": dict(normalize_grad=True, **UNBOUNDED),
    "nowarm": dict(warm_start=False, **UNBOUNDED),
    "warm+authors": dict(faithful=True, warm_first=True),
    "normalized-nowarm": dict(normalize_grad=True, warm_start=False, **UNBOUNDED),
    "normalized-fixed": dict(normalize_grad=True, steps=100, patience=1000, **UNBOUNDED),
    "normalized-slow": dict(normalize_grad=True, scale_lr=0.03, **UNBOUNDED),
    "normalized-gamma0.5": dict(normalize_grad=True, gamma=0.5, **UNBOUNDED),
    "normalized-gamma2": dict(normalize_grad=True, gamma=2.0, **UNBOUNDED),
    "normalized-nogamma": dict(normalize_grad=True, gamma=1e30, **UNBOUNDED),
}
MAIN = "none,authors,warm,grow,normalized,nowarm,default"


def start(model: torch.nn.Module, name: str) -> None:
    if name in ("kaiming", "xavier"):
        initlab.initialize(model, name)
    elif name == "kaiming3":
        initlab.initialize(model, "kaiming")
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                    m.weight.mul_(3.0)


def run(case: dict[str, Any], start_name: str, method: str, seed: int,
        jitter: int = 0) -> dict[str, Any]:
    """One run; `jitter` j > 0 multiplies every parameter by 1 + j * 1e-6 after the init (the
    same network up to round-off level, to see how chaotic the training itself is)."""
    data = load_dataset(case["data"])
    torch.manual_seed(seed)
    model = build_model(case["model"], in_channels=data.in_channels, image_size=data.image_size,
                        num_classes=data.num_classes, depth=case["depth"], width=case["width"],
                        activation=case.get("activation", "relu"))
    train_batches = Batches(data.x_train, data.y_train, case["batch"], shuffle=True,
                            seed=1000 * seed)
    test_batches = Batches(data.x_test, data.y_test, 1000)
    start(model, start_name)
    settings = dict(METHODS[method])
    outcome: dict[str, Any] = {}
    began = time.perf_counter()
    if method != "none":
        authors = settings.get("faithful", False)
        # the lab's loaders: half-size batches for the authors' S = B0 u B1, full size otherwise
        init_batches = Batches(data.x_train, data.y_train,
                               case["batch"] // 2 if authors else case["batch"], shuffle=True,
                               seed=1000 * seed + 500, drop_last=True)
        if authors:
            settings.update(steps=min(390, max(100, len(train_batches))),
                            scale_lr=case["scale_lr"])
        if settings.pop("warm_first", False):
            initlab.initialize(model, "gradinit-warmstart", data=init_batches)
        name = "gradinit-warmstart" if settings.pop("warm_only", False) else "gradinit"
        report = initlab.initialize(model, name, data=init_batches, target="sgd", lr=case["lr"],
                                    **settings)
        outcome = dict(report.outcome, iterations=len(report.history))
    init_seconds = time.perf_counter() - began
    if jitter:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + jitter * 1e-6)
    torch.manual_seed(seed)
    cfg = TrainConfig(epochs=case["epochs"], lr=case["lr"], clip=case.get("clip"))
    result = train(model, train_batches, test_batches, cfg)
    return dict(start=start_name, method=method, seed=seed, jitter=jitter, init_seconds=init_seconds,
                outcome=outcome, **result.to_dict())


def table(rows: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["start"], r["method"]), []).append(r)
    head = ("start", "method", "seeds", "first-epoch", "best", "worst best", "iters", "stop",
            "one-step loss: start -> returned (runs no worse)", "fallbacks")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{100 * statistics.fmean(xs):.1f} ± {100 * sd:.1f}"
    for (s, m), rs in sorted(groups.items(), key=lambda kv: (STARTS.index(kv[0][0]),
                                                             list(METHODS).index(kv[0][1]))):
        first = [r["first_epoch_acc"] or 0.0 for r in rs]
        best = [r["best_acc"] or 0.0 for r in rs]
        its = [r["outcome"].get("iterations", 0) for r in rs]
        stops = sorted({r["outcome"].get("stop", "-") for r in rs})
        guards = [r["outcome"]["guard"] for r in rs if "guard" in r["outcome"]]
        held = sum(x["returned"] <= x["start"] for x in guards)  # the guard's promise, per run
        g = "-" if not guards else (f"{statistics.fmean(x['start'] for x in guards):.3g} -> "
                                    f"{statistics.fmean(x['returned'] for x in guards):.3g} "
                                    f"({held}/{len(guards)})")
        falls = sum(1 for x in guards if x["fell_back_to"])
        lines.append(" | ".join([s, m, str(len(rs)), ms(first), ms(best), f"{100 * min(best):.1f}",
                                 f"{statistics.fmean(its):.0f}", "/".join(stops), g,
                                 f"{falls}/{len(rs)}" if guards else "-"]).join(["| ", " |"]))
    return "\n".join(lines)


def compact(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """One row per start, one column per method: best accuracy mean (worst seed) / first epoch."""
    lines = ["| start | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in STARTS:
        cells = []
        for m in methods:
            rs = [r for r in rows if r["start"] == s and r["method"] == m]
            if not rs:
                cells.append("-")
                continue
            best = [100 * (r["best_acc"] or 0.0) for r in rs]
            first = [100 * (r["first_epoch_acc"] or 0.0) for r in rs]
            cells.append(f"{statistics.fmean(best):.1f} ({min(best):.1f}) / "
                         f"{statistics.fmean(first):.1f}")
        if any(c != "-" for c in cells):
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=CASES, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--starts", default=",".join(STARTS))
    ap.add_argument("--methods", default=MAIN)
    ap.add_argument("--out", default="runs/gradinit_search")
    ap.add_argument("--jitter", default="0",
                    help="e.g. 0,1,2: per seed, also the runs whose parameters are multiplied by "
                         "1 + j * 1e-6 after the init (how chaotic training is)")
    ap.add_argument("--table", action="store_true", help="print the table of what is done")
    ap.add_argument("--compact", action="store_true",
                    help="with --table: starts x methods, best (worst seed) / first epoch")
    a = ap.parse_args()
    torch.set_num_threads(1)
    path = Path(a.out) / f"{a.case}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    jitters = [int(j) for j in a.jitter.split(",")]
    done = {(r["start"], r["method"], r["seed"], r.get("jitter", 0)) for r in rows}
    if not a.table:
        for seed, start_name, m, j in itertools.product(range(a.seeds), a.starts.split(","),
                                                        a.methods.split(","), jitters):
            if (start_name, m, seed, j) in done:
                continue
            r = run(CASES[a.case], start_name, m, seed, j)
            print(f"{a.case} {start_name} {m} seed {seed} jitter {j}: best {r['best_acc'] or 0:.4f}"
                  f" first {r['first_epoch_acc'] or 0:.4f} {r['outcome'].get('stop', '')} "
                  f"{r['outcome'].get('iterations', '')} init {r['init_seconds']:.1f}s "
                  f"train {r['seconds']:.0f}s", flush=True)
            with path.open("a") as f:
                f.write(json.dumps(r) + "\n")
            rows.append(r)
    chosen = [r for r in rows if r["start"] in a.starts.split(",")
              and r["method"] in a.methods.split(",") and r["seed"] < a.seeds
              and r.get("jitter", 0) in jitters]
    print(compact(chosen, a.methods.split(",")) if a.compact else table(chosen))


if __name__ == "__main__":
    main()
