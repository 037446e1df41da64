"""AutoInit variance preservation on ten architectures (Bingham & Miikkulainen, AAAI 2023).

For each architecture and seed: build the model (PyTorch's default init), measure every
Linear/Conv output's variance on a batch of random normal inputs (forward hooks, train mode),
then apply `initlab.autoinit` (sigma^2 = 1) to 32 inputs and measure again on a fresh batch.
Reported: the worst layer's relative deviation |var - 1| per architecture (median and max over
seeds).

    nice -n 10 .venv/bin/python benchmarks/autoinit_variance.py --seeds 3 --json runs/autoinit_variance.json

`--distributions normal,orthogonal+centered,normal+plain` adds a column per AutoInit setting
(each on the same model, batch and seed; see `settings`); the default (normal only) is the
default settings. "AutoInit s" is the first column's time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import initlab
from initlab.diagnostics import layer_moments
from initlab.lab.models import ResNet


class MLP(nn.Sequential):
    def __init__(self, act: type, depth: int = 20, width: int = 512, d_in: int = 64):
        layers: list[nn.Module] = []
        for i in range(depth - 1):
            layers += [nn.Linear(d_in if i == 0 else width, width), act()]
        super().__init__(*layers, nn.Linear(width, 10))


class DropoutMLP(nn.Sequential):
    def __init__(self, depth: int = 12, width: int = 512, p: float = 0.3):
        layers: list[nn.Module] = []
        for i in range(depth - 1):
            layers += [nn.Linear(64 if i == 0 else width, width), nn.ReLU(), nn.Dropout(p)]
        super().__init__(*layers, nn.Linear(width, 10))


class PlainCNN(nn.Module):
    """30 conv layers 3x3 + ReLU, no normalization, two stride-2 convs, GAP + Linear."""

    def __init__(self, depth: int = 30, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for i in range(depth):
            stride = 2 if i in (depth // 3, 2 * depth // 3) else 1
            layers += [nn.Conv2d(c, width, 3, stride=stride, padding=1), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class DenseNet(nn.Module):
    """Dense blocks (each layer sees the concatenation of all before), 1x1 transitions."""

    def __init__(self, blocks: int = 3, layers: int = 4, growth: int = 12, c0: int = 24):
        super().__init__()
        self.stem = nn.Conv2d(3, c0, 3, padding=1)
        self.blocks, self.transitions = nn.ModuleList(), nn.ModuleList()
        c = c0
        for b in range(blocks):
            convs = nn.ModuleList()
            for _ in range(layers):
                convs.append(nn.Conv2d(c, growth, 3, padding=1))
                c += growth
            self.blocks.append(convs)
            if b < blocks - 1:
                self.transitions.append(nn.Conv2d(c, c // 2, 1))
                c //= 2
        self.classifier = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for b, convs in enumerate(self.blocks):
            for conv in convs:
                h = torch.cat([h, conv(F.relu(h))], dim=1)
            if b < len(self.transitions):
                h = F.avg_pool2d(self.transitions[b](F.relu(h)), 2)
        return self.classifier(F.relu(h).mean(dim=(2, 3)))


class Gated(nn.Module):
    """GLU-style blocks: h = tanh(f(h)) * sigmoid(g(h))."""

    def __init__(self, depth: int = 10, width: int = 256):
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.f = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.g = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for f, g in zip(self.f, self.g):
            h = torch.tanh(f(h)) * torch.sigmoid(g(h))
        return self.out(h)


class EncoderLayer(nn.Module):
    """Pre-LN Transformer encoder layer written out (q, k, v, out projections; GELU FFN)."""

    def __init__(self, d: int = 64, heads: int = 4, ff: int = 256):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)                # (b, heads, t, d/heads)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class Transformer(nn.Module):
    def __init__(self, layers: int = 6, d: int = 64):
        super().__init__()
        self.layers = nn.Sequential(*(EncoderLayer(d) for _ in range(layers)))
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:               # x: (b, t, d)
        return self.head(self.layers(x).mean(1))


class SeparableCNN(nn.Module):
    """Depthwise 3x3 (groups = channels) then pointwise 1x1 + ReLU, repeated; GAP + Linear."""

    def __init__(self, blocks: int = 10, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(blocks):
            layers += [nn.Conv2d(width, width, 3, padding=1, groups=width),
                       nn.Conv2d(width, width, 1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


IMAGE = (3, 16, 16)
ARCHITECTURES = {
    "MLP 20 layers, tanh": (lambda: MLP(nn.Tanh), (64,)),
    "MLP 20 layers, GELU": (lambda: MLP(nn.GELU), (64,)),
    "MLP 20 layers, SiLU": (lambda: MLP(nn.SiLU), (64,)),
    "plain CNN, 30 conv layers": (PlainCNN, IMAGE),
    "ResNet-20 without BN (lab)": (lambda: ResNet(3, depth=20, bn=False), IMAGE),
    "DenseNet-style concat blocks": (DenseNet, IMAGE),
    "gated (tanh x sigmoid) MLP": (Gated, (64,)),
    "MLP + dropout 0.3 (train mode)": (DropoutMLP, (64,)),
    "Transformer encoder, 6 pre-LN layers": (Transformer, (16, 64)),
    "depthwise-separable CNN": (SeparableCNN, IMAGE),
}


def layer_variances(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Output variance of every Linear/Conv on `x` (first call of each): the library's
    diagnostic `initlab.diagnostics.layer_moments`, without the means."""
    return {name: var for name, (_, var) in layer_moments(model, x).items()}


def worst(variances: dict[str, float]) -> tuple[str, float]:
    name = max(variances, key=lambda n: abs(variances[n] - 1))
    return name, variances[name] - 1


def settings(column: str) -> dict:
    """'orthogonal' -> distribution='orthogonal'; a '+centered' suffix adds centered=True, a
    '+plain' suffix rescale=False (the paper's draw as it falls)."""
    dist, *extra = column.split("+")
    unknown = set(extra) - {"centered", "plain"}
    if unknown:
        raise SystemExit(f"unknown column suffix {sorted(unknown)}: use +centered, +plain")
    return dict(distribution=dist, centered="centered" in extra, rescale="plain" not in extra)


def run(seeds: int, batch: int, distributions: list[str]) -> list[dict]:
    rows = []
    for arch, (build, shape) in ARCHITECTURES.items():
        per_seed = []
        for seed in range(seeds):
            found: dict[str, tuple[str, float]] = {}
            seconds: dict[str, float] = {}
            for dist in distributions:  # the same model, batch and seed for every distribution
                torch.manual_seed(seed)
                model = build()
                x = torch.randn(batch, *shape)
                default = worst(layer_variances(model, x))
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # no unknown operation may pass silently
                    initlab.autoinit(model, x[:32], seed=seed, **settings(dist))
                seconds[dist] = time.perf_counter() - start
                found[dist] = worst(layer_variances(model, torch.randn(batch, *shape)))
            first = distributions[0]
            per_seed.append(dict(seed=seed, default=default, autoinit=found[first],
                                 seconds=seconds[first], by_distribution=found,
                                 seconds_by_distribution=seconds,
                                 layers=len(layer_variances(model, x))))
        rows.append(dict(architecture=arch, runs=per_seed))
        print(format_row(rows[-1], distributions), flush=True)
    return rows


def format_row(row: dict, distributions: list[str]) -> str:
    def stat(devs: list[float]) -> str:
        devs = [abs(d) for d in devs]
        return f"{100 * statistics.median(devs):.1f} % (max {100 * max(devs):.1f} %)"
    r0 = row["runs"][0]
    cells = [stat([r["default"][1] for r in row["runs"]])]
    cells += [stat([r["by_distribution"][d][1] for r in row["runs"]]) for d in distributions]
    secs = statistics.fmean(r["seconds"] for r in row["runs"])
    return f"| {row['architecture']} | {r0['layers']} | {' | '.join(cells)} | {secs:.2f} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--distributions", default="normal",
                   help="AutoInit weight distributions, comma-separated (normal, uniform, "
                        "orthogonal, delta-orthogonal); one column each")
    p.add_argument("--only", default="",
                   help="comma-separated name prefixes: run only these architectures")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.only:
        keep = tuple(args.only.split(","))
        for name in [n for n in ARCHITECTURES if not n.startswith(keep)]:
            del ARCHITECTURES[name]
    torch.set_num_threads(1)
    dists = args.distributions.split(",")
    names = " | ".join(("AutoInit" if d == "normal" and len(dists) == 1 else f"AutoInit {d}")
                       + ": worst layer |var-1|" for d in dists)
    print(f"| architecture | weighted layers | default init: worst layer |var-1| | {names} | "
          "AutoInit s |")
    print("|---" * (4 + len(dists)) + "|")
    rows = run(args.seeds, args.batch, dists)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
