"""AutoInit on a held-out family of architectures: does variance preservation generalize?

Fifteen networks that AutoInit's own benchmark (`autoinit_variance.py`) does not contain, built
to cover what people use: concatenation with smooth activations, 1-d convolutions with average
and max pooling, deep SELU/GELU/SiLU MLPs, gated units, depthwise-separable and grouped convs,
a small ViT with `nn.MultiheadAttention`, a residual net without normalization, a dilated gated
1-d conv net, an MLP-Mixer and a small U-Net. Sizes and input shapes are fixed here; the family
is measured as it is, not tuned against.

For each network and seed: build it (PyTorch's default init, train mode), run
`initlab.autoinit(model, x, seed=seed)` at the default settings on a batch of 32 standard normal
inputs, then measure the output variance of every Linear/Conv layer (and every
`nn.MultiheadAttention`, whose output is its `out_proj`'s) on a fresh batch of 512, and report
the worst layer's relative error |var / sigma^2 - 1| (sigma^2 = 1). Results go to a JSON-lines
file, one line per (network, seed); a rerun skips what is there (resumable).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/autoinit_family.py --seeds 10 \
        --out runs/autoinit_family.jsonl
    python benchmarks/autoinit_family.py --table runs/autoinit_family.jsonl   # the table only
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import initlab


# -- the family -----------------------------------------------------------------------------------
class DenseConcat(nn.Module):
    """DenseNet-style blocks with GELU: each 3x3 conv sees the concatenation of all maps before
    it; 1x1 transitions with 2x2 average pooling; global mean + Linear. Input (3, 16, 16)."""

    def __init__(self, blocks: int = 3, layers: int = 4, growth: int = 12, c0: int = 16):
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
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for b, convs in enumerate(self.blocks):
            for conv in convs:
                h = torch.cat([h, conv(F.gelu(h))], dim=1)
            if b < len(self.transitions):
                h = F.avg_pool2d(self.transitions[b](F.gelu(h)), 2)
        return self.head(F.gelu(h).mean(dim=(2, 3)))


class DenseMLP(nn.Module):
    """Densely connected MLP with SiLU: layer i reads the concatenation of the input and every
    earlier layer's output (growth 32, 8 layers). Input (32,)."""

    def __init__(self, d_in: int = 32, growth: int = 32, layers: int = 8):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in + i * growth, growth) for i in range(layers))
        self.head = nn.Linear(d_in + layers * growth, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.layers:
            h = torch.cat([h, F.silu(layer(h))], dim=-1)
        return self.head(h)


class Conv1dPool(nn.Module):
    """1-d conv net: 3 stages (widths 16, 32, 64) of two k=5 convs + activation, then 2x
    pooling (average or max); a global pool of the same kind, Linear. Input (4, 64)."""

    def __init__(self, pool: str, act: Callable[[], nn.Module],
                 widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        c = 4
        for width in widths:
            for _ in range(2):
                layers += [nn.Conv1d(c, width, 5, padding=2), act()]
                c = width
            layers.append(nn.AvgPool1d(2) if pool == "avg" else nn.MaxPool1d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1) if pool == "avg" else nn.AdaptiveMaxPool1d(1)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def deep_mlp(act: Callable[[], nn.Module], depth: int, width: int, d_in: int = 64) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth - 1):
        layers += [nn.Linear(d_in if i == 0 else width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


class SwiGLU(nn.Module):
    """Six gated blocks on tokens, h = down(silu(gate(h)) * up(h)), no residual, no norm.
    Input (16 tokens, 64)."""

    def __init__(self, d: int = 64, hidden: int = 128, blocks: int = 6):
        super().__init__()
        self.gate = nn.ModuleList(nn.Linear(d, hidden) for _ in range(blocks))
        self.up = nn.ModuleList(nn.Linear(d, hidden) for _ in range(blocks))
        self.down = nn.ModuleList(nn.Linear(hidden, d) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for g, u, d in zip(self.gate, self.up, self.down):
            x = d(F.silu(g(x)) * u(x))
        return x


class Separable(nn.Module):
    """MobileNet-style: depthwise 3x3 (stride 2 in three blocks) then pointwise 1x1, ReLU6 after
    each; global mean + Linear. Input (3, 32, 32)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 32, 64, 64, 64, 128, 128),
                 strides: tuple[int, ...] = (1, 2, 1, 2, 1, 1, 2, 1)):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, stride=1, padding=1), nn.ReLU6()]
        c = 16
        for w, s in zip(widths, strides):
            layers += [nn.Conv2d(c, c, 3, stride=s, padding=1, groups=c), nn.ReLU6(),
                       nn.Conv2d(c, w, 1), nn.ReLU6()]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class ViTBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Patch embedding (4x4 conv, 64 tokens), learned position embedding, 4 pre-LN blocks with
    `nn.MultiheadAttention` (d 48, 4 heads) and a GELU MLP, final LayerNorm, mean over tokens,
    Linear. Input (3, 32, 32)."""

    def __init__(self, d: int = 48, heads: int = 4, depth: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 64, d) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(d, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos     # (B, 64, d)
        return self.head(self.norm(self.blocks(h)).mean(1))


class Grouped(nn.Module):
    """Grouped 3x3 convs (4 groups) each followed by a 1x1 and LeakyReLU(0.1), 4 stages of two,
    stride 2 at the second and fourth; global mean + Linear. Input (3, 16, 16)."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.1)]
        for i in range(8):
            layers += [nn.Conv2d(width, width, 3, stride=2 if i in (2, 5) else 1, padding=1,
                                 groups=4), nn.LeakyReLU(0.1),
                       nn.Conv2d(width, width, 1), nn.LeakyReLU(0.1)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.proj = nn.Conv2d(c_in, c_out, 1, stride=stride) if stride > 1 or c_in != c_out \
            else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.proj is None else self.proj(x)) + h


class PreActResNet(nn.Module):
    """Pre-activation residual net without normalization: stem conv, 3 stages of 2 blocks
    (widths 16, 32, 64; 1x1 projections at stage changes), ReLU, global mean + Linear.
    Input (3, 16, 16)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        blocks, c = [], 16
        for stage, w in enumerate((16, 32, 64)):
            for i in range(2):
                blocks.append(PreActBlock(c, w, 2 if stage > 0 and i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.blocks(self.stem(x))).mean(dim=(2, 3)))


class WaveNet(nn.Module):
    """Dilated causal 1-d convs (k = 2, dilations 1..32) with gated units tanh * sigmoid,
    1x1 residual and skip convs, ReLU, 1x1 head. Input (8, 128)."""

    def __init__(self, c: int = 32, dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32)):
        super().__init__()
        self.inp = nn.Conv1d(8, c, 1)
        self.dilations = dilations
        self.filt = nn.ModuleList(nn.Conv1d(c, c, 2, dilation=d) for d in dilations)
        self.gate = nn.ModuleList(nn.Conv1d(c, c, 2, dilation=d) for d in dilations)
        self.res = nn.ModuleList(nn.Conv1d(c, c, 1) for _ in dilations)
        self.skip = nn.ModuleList(nn.Conv1d(c, c, 1) for _ in dilations)
        self.out = nn.Conv1d(c, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        skips = 0
        for d, f, g, r, s in zip(self.dilations, self.filt, self.gate, self.res, self.skip):
            p = F.pad(h, (d, 0))                                     # causal: pad on the left
            z = torch.tanh(f(p)) * torch.sigmoid(g(p))
            h = h + r(z)
            skips = skips + s(z)
        return self.out(F.relu(skips))


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, d: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.tok = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(),
                                 nn.Linear(2 * tokens, tokens))
        self.ch = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:            # (B, T, d)
        x = x + self.tok(self.ln1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.ch(self.ln2(x))


class Mixer(nn.Module):
    """MLP-Mixer: 16 tokens of 32, Linear embedding to 64, 4 blocks (token and channel MLPs,
    pre-LN, residual), LayerNorm, mean over tokens, Linear. Input (16, 32)."""

    def __init__(self, tokens: int = 16, d: int = 64, depth: int = 4):
        super().__init__()
        self.embed = nn.Linear(32, d)
        self.blocks = nn.Sequential(*(MixerBlock(tokens, d) for _ in range(depth)))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))).mean(1))


class UNet(nn.Module):
    """A small U-Net with tanh: two down stages (conv, max-pool), a bottleneck, two up stages
    (nearest upsampling, concatenation with the skip, conv), 1x1 head. Input (3, 32, 32)."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.d1, self.d2 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 2 * c, 3, padding=1)
        self.mid = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.u2 = nn.Conv2d(4 * c, c, 3, padding=1)
        self.u1 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.d1(x))                                   # (B, c, 32, 32)
        b = torch.tanh(self.d2(F.max_pool2d(a, 2)))                  # (B, 2c, 16, 16)
        m = torch.tanh(self.mid(F.max_pool2d(b, 2)))                 # (B, 2c, 8, 8)
        u = torch.tanh(self.u2(torch.cat([self.up(m), b], 1)))       # (B, c, 16, 16)
        u = torch.tanh(self.u1(torch.cat([self.up(u), a], 1)))       # (B, c, 32, 32)
        return self.head(u)


FAMILY: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "DenseNet-style concat, GELU (2-d)": (DenseConcat, (3, 16, 16)),
    "dense MLP concat, SiLU": (DenseMLP, (32,)),
    "1-d conv, ReLU, average pooling": (lambda: Conv1dPool("avg", nn.ReLU), (4, 64)),
    "1-d conv, ELU, max pooling": (lambda: Conv1dPool("max", nn.ELU), (4, 64)),
    "MLP 32 layers x 128, SELU": (lambda: deep_mlp(nn.SELU, 32, 128), (64,)),
    "MLP 24 layers x 96, GELU": (lambda: deep_mlp(nn.GELU, 24, 96), (64,)),
    "MLP 24 layers x 96, SiLU": (lambda: deep_mlp(nn.SiLU, 24, 96), (64,)),
    "SwiGLU blocks, no residual": (SwiGLU, (16, 64)),
    "depthwise-separable, ReLU6": (Separable, (3, 32, 32)),
    "ViT, nn.MultiheadAttention": (ViT, (3, 32, 32)),
    "grouped convs, LeakyReLU": (Grouped, (3, 16, 16)),
    "pre-act ResNet without BN": (PreActResNet, (3, 16, 16)),
    "WaveNet: dilated gated 1-d": (WaveNet, (8, 128)),
    "MLP-Mixer": (Mixer, (16, 32)),
    "U-Net, tanh, upsampling": (UNet, (3, 32, 32)),
}


# -- ablations: AutoInit without one of its mechanisms (benchmark only) ----------------------------
def ablate(names: list[str]) -> None:
    """Switch AutoInit mechanisms off by patching the library (this process only):
    "scales" (per-sample scale classes), "laws" (non-normal laws), "fusion" (elementwise chains
    on one tensor as one function)."""
    from initlab.methods.autoinit import arithmetic, elementwise, laws, layers, pooling, propagate
    for name in names:
        if name == "scales":
            propagate.chi_square_scales = lambda n, classes=16: None
            elementwise.spread = lambda scales, tau2: scales
        elif name == "laws":
            elementwise.is_normal = lambda law, *a, **k: True
            layers.cornish_fisher = lambda k3, k4: None
            pooling.channel_law = lambda x: None
            laws.is_normal = arithmetic.is_normal = elementwise.is_normal
        elif name == "fusion":
            propagate.elementwise_root = lambda *args: None
        else:
            raise SystemExit(f"unknown ablation {name!r}: scales, laws, fusion")


# -- measurement ----------------------------------------------------------------------------------
MEASURED = (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention)


def output_variances(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Variance over all elements of every Linear/Conv/MultiheadAttention output (first call),
    one forward without gradients. A Linear that belongs to an attention module (its out_proj,
    which attention calls functionally) is measured as the attention's output."""
    out: dict[str, float] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: object) -> None:
            y = output[0] if isinstance(output, tuple) else output
            if name not in out:
                out[name] = float(y.detach().double().var(unbiased=False))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, MEASURED)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def forward_seconds(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - start) / repeats


def run_one(name: str, seed: int, example: int, batch: int, settings: dict) -> dict:
    build, shape = FAMILY[name]
    torch.manual_seed(seed)
    model = build().train()
    x = torch.randn(example, *shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        initlab.autoinit(model, x, seed=seed, **settings)
        seconds = time.perf_counter() - start
    forward = forward_seconds(model, x)
    var = output_variances(model, torch.randn(batch, *shape))
    worst = max(var, key=lambda n: abs(var[n] - 1))
    return dict(network=name, seed=seed, settings=settings, seconds=seconds, forward=forward,
                layers=len(var), worst_layer=worst, worst=var[worst] - 1,
                within_35=all(abs(v - 1) <= 0.35 for v in var.values()),
                variances=var, warnings=sorted({str(w.message)[:200] for w in caught}))


# -- table ----------------------------------------------------------------------------------------
def percent(x: float, signed: bool = False) -> str:
    """A relative error in percent; a blown-up one (over 1000 %) in scientific notation."""
    p = 100 * x
    if abs(p) >= 1000:
        return f"{p:{'+' if signed else ''}.0e}"
    return f"{p:{'+' if signed else ''}.{0 if signed else 1}f}"


def table(rows: list[dict]) -> str:
    """Markdown: per network, the worst layer's |var - 1| median and max over seeds, the seeds
    with every layer within 35 %, each seed's signed worst, and seconds per call."""
    lines = ["| network | layers | worst layer, median (max) | seeds within 35 % | worst layer "
             "per seed, % (signed, seed order) | AutoInit s (× forward) |", "|---" * 6 + "|"]
    for name in FAMILY:
        runs = sorted((r for r in rows if r["network"] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        devs = [abs(r["worst"]) for r in runs]
        secs = statistics.median(r["seconds"] for r in runs)
        ratio = statistics.median(r["seconds"] / r["forward"] for r in runs)
        per_seed = ", ".join(percent(r["worst"], signed=True) for r in runs)
        ok = sum(r["within_35"] for r in runs)
        lines.append(f"| {name} | {runs[0]['layers']} | {percent(statistics.median(devs))} % "
                     f"({percent(max(devs))}) | {ok} / {len(runs)} | {per_seed} | "
                     f"{secs:.2f} ({ratio:.0f}×) |")
    total = sum(r["within_35"] for r in rows)
    lines.append(f"\n(network, seed) runs with every layer within 35 %: {total} / {len(rows)}")
    return "\n".join(lines)


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--example", type=int, default=32, help="example batch given to autoinit")
    p.add_argument("--batch", type=int, default=512, help="fresh batch the variances are measured on")
    p.add_argument("--only", default="", help="comma-separated name prefixes")
    p.add_argument("--settings", default="{}", help="AutoInitConfig fields as JSON (default: none)")
    p.add_argument("--ablate", default="", help="comma-separated mechanisms to switch off: "
                   "scales, laws, fusion (see `ablate`)")
    p.add_argument("--out", default="runs/autoinit_family.jsonl")
    p.add_argument("--table", default=None, help="print the table of this JSON-lines file and exit")
    args = p.parse_args()
    if args.table:
        print(table(load(Path(args.table))))
        return
    torch.set_num_threads(1)
    if args.ablate:
        ablate(args.ablate.split(","))
    settings = json.loads(args.settings)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["network"], r["seed"]) for r in load(out)}
    names = [n for n in FAMILY if not args.only or n.startswith(tuple(args.only.split(",")))]
    for name in names:
        for seed in range(args.seeds):
            if (name, seed) in done:
                continue
            row = run_one(name, seed, args.example, args.batch, settings)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} seed {seed}: worst {row['worst_layer']} {100 * row['worst']:+.1f} % "
                  f"({row['seconds']:.2f} s)", flush=True)
    print(table([r for r in load(out) if r["network"] in names]))


if __name__ == "__main__":
    main()
