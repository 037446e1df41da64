"""Architecture-aware learning rates (Chen, Wu, Wang & Hanin, ICLR 2024) against a grid search
(digits or Fashion-MNIST).

A family of MLP and CNN DAGs (stem, cells of Linear/Conv(ReLU) and skip edges summed at nodes,
head) is initialized with `initlab.archscale_init`, then trained for one epoch of plain SGD at
each learning rate of a log grid. The searched maximal learning rate is the largest one with
the lowest training loss after that epoch (mean over seeds); the predicted one is
`initlab.archscale_lr(model, base_lr)` with base_lr the searched rate of the one-hidden-layer
base network of the same kind. Reported: both per network and Spearman's rank correlation.

Two protocols (`--data`):
- `digits` (the default, the first table in RESULTS.md): all 1,437 training images, 8x8, one
  epoch = 44 steps of batch 32. Short: the loss after one epoch is a noisy function of the rate.
- `fashion-mnist`: a fixed subset of `--subset` training images (default 9,600: one epoch = 300
  steps of batch 32, close to the paper's one CIFAR-10 epoch of 391 steps); MLPs read the full
  28x28 images, CNNs a 14x14 version (2x2 average pooling, to keep one core's time near 40 min).
  Chosen, before seeing its result, for a longer epoch and so a less noisy search.

    nice -n 10 .venv/bin/python benchmarks/archscale_lr.py --seeds 3 --json runs/archscale_lr.json
    nice -n 10 .venv/bin/python benchmarks/archscale_lr.py --data fashion-mnist --seeds 2 \\
        --json runs/archscale_lr_fmnist.json
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from initlab.lab.data import load_dataset

# Cells: (nodes, edges); an edge (i, j, kind) is "op" (ReLU then Linear/Conv) or "skip".
CHAIN = (2, [(0, 1, "op")])
RESIDUAL = (3, [(0, 1, "op"), (1, 2, "op"), (0, 2, "skip")])
PARALLEL = (3, [(0, 1, "op"), (0, 2, "op"), (1, 2, "skip")])
DENSE = (4, [(i, j, "op") for j in range(4) for i in range(j)])
NB201 = (4, [(0, 1, "op"), (0, 2, "op"), (1, 2, "op"), (0, 3, "skip"), (1, 3, "op"),
             (2, 3, "op")])
FAMILY = {  # name -> (cell, repeats); "base" has no cell: stem + head, one hidden layer
    "base (1 hidden layer)": (None, 0), "chain x1": (CHAIN, 1), "chain x3": (CHAIN, 3),
    "chain x6": (CHAIN, 6), "residual x2": (RESIDUAL, 2), "parallel x3": (PARALLEL, 3),
    "dense x1": (DENSE, 1), "nb201-like x2": (NB201, 2),
}


class DAGNet(nn.Module):
    def __init__(self, cell, repeats: int, conv: bool, width: int, d_in: int = 64):
        super().__init__()
        self.conv = conv
        layer = (lambda: nn.Conv2d(width, width, 3, padding=1)) if conv else \
            (lambda: nn.Linear(width, width))
        self.stem = nn.Conv2d(1, width, 3, padding=1) if conv else nn.Linear(d_in, width)
        self.cells = [] if cell is None else [cell] * repeats
        self.ops = nn.ModuleDict()
        for c, (_, edges) in enumerate(self.cells):
            for i, j, kind in edges:
                if kind == "op":
                    self.ops[f"c{c}_{i}_{j}"] = layer()
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x if self.conv else x.flatten(1))
        for c, (n, edges) in enumerate(self.cells):
            nodes = [h]
            for j in range(1, n):
                total = None
                for i, jj, kind in edges:
                    if jj != j:
                        continue
                    t = self.ops[f"c{c}_{i}_{j}"](F.relu(nodes[i])) if kind == "op" else nodes[i]
                    total = t if total is None else total + t
                nodes.append(total)
            h = nodes[-1]
        h = F.relu(h)
        return self.head(h.mean(dim=(2, 3)) if self.conv else h)


def train_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, batch: int,
               seed: int) -> float:
    """Training loss on the whole set after one epoch of SGD at `lr` (inf if it diverged)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for k in range(0, len(x) - batch + 1, batch):
        idx = order[k:k + batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            return math.inf
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = F.cross_entropy(model(x), y).item()
    return final if math.isfinite(final) else math.inf


def searched_lr(name: str, conv: bool, grid: list[float], seeds: int, width: int,
                x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, list[float]]:
    """The largest rate of `grid` with the lowest mean loss. Once two grid points in a row have
    diverged for every seed, the larger rates are not run (they count as diverged)."""
    cell, repeats = FAMILY[name]
    d_in = math.prod(x.shape[1:])
    losses: list[float] = []
    for lr in grid:
        if len(losses) >= 2 and losses[-1] == losses[-2] == math.inf:
            losses.append(math.inf)
            continue
        per_seed = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = DAGNet(cell, repeats, conv, width, d_in)
            initlab.archscale_init(model, seed=seed)
            per_seed.append(train_loss(model, x, y, lr, batch, seed))
        losses.append(float(np.mean(per_seed)))
    best = min(losses)
    return max(lr for lr, loss in zip(grid, losses) if loss <= best), losses


def images(name: str, subset: int, conv: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images of a protocol: digits whole; Fashion-MNIST a fixed subset (the same
    for every network and seed), 14x14 for the CNNs."""
    if name == "digits":
        data = load_dataset("digits")
        return data.x_train, data.y_train
    data = load_dataset("fashion-mnist", subset=subset, seed=0)
    x = F.avg_pool2d(data.x_train, 2) if conv else data.x_train
    return x, data.y_train


def ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):
        tie = v == value
        r[tie] = r[tie].mean()
    return r


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--data", choices=("digits", "fashion-mnist"), default="digits")
    p.add_argument("--subset", type=int, default=9600, help="Fashion-MNIST training images")
    p.add_argument("--kinds", default="MLP,CNN")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    grid = [2.0 ** (k / 2) for k in range(-12, 9)]          # 2^-6 .. 2^4, half-octave steps
    rows, results = [], {}
    for kind, conv, width in (("MLP", False, 64), ("CNN", True, 16)):
        if kind not in args.kinds.split(","):
            continue
        x, y = images(args.data, args.subset, conv)
        base_lr = None
        found, predicted = [], []
        for name, (cell, repeats) in FAMILY.items():
            lr, losses = searched_lr(name, conv, grid, args.seeds, width, x, y, args.batch)
            model = DAGNet(cell, repeats, conv, width, math.prod(x.shape[1:]))
            base_lr = base_lr or lr
            pred = initlab.archscale_lr(model, base_lr)
            depths = initlab.path_depths(model)
            found.append(lr)
            predicted.append(pred)
            rows.append(dict(kind=kind, name=name, paths=sum(depths.values()),
                             sum_l3=sum(c * d ** 3 for d, c in depths.items()), searched=lr,
                             predicted=pred, losses=losses))
            r = rows[-1]
            print(f"| {kind} | {name} | {r['paths']} | {r['sum_l3']} | {lr:.3g} | {pred:.3g} |",
                  flush=True)
        results[kind] = spearman(found, predicted)
        print(f"Spearman rho ({kind}): {results[kind]:.3f}", flush=True)
    everything = spearman([r["searched"] for r in rows], [r["predicted"] for r in rows])
    print(f"Spearman rho (all {len(rows)} networks): {everything:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, spearman=results, spearman_all=everything, grid=grid,
                           data=args.data, subset=args.subset, seeds=args.seeds), f, indent=1)


if __name__ == "__main__":
    main()
