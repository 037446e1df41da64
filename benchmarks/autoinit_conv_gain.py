"""Why AutoInit's deep-CNN variance drifts: each conv's realized gain against its prediction.

On the benchmark's 30-layer plain CNN (`autoinit_variance.py`), after `initlab.autoinit`, for
every conv: its input patches (in-channels x 3x3 taps, all positions of 512 random normal
images), their covariance C, and
- the mean correlation between two different patch entries (same channel other tap, other
  channel same tap, both different);
- the realized gain `mean_j w_j^T C w_j` over the gain the same weights would have on
  uncorrelated inputs of the same variance, `mean_j |w_j|^2 * mean(diag C)` (what a
  mean/variance propagation can know);
- the measured output variance (AutoInit's target is 1).

    nice -n 10 .venv/bin/python benchmarks/autoinit_conv_gain.py --centered
"""
from __future__ import annotations

import argparse
import logging

import torch
import torch.nn.functional as F
from autoinit_variance import PlainCNN
from torch import nn

import initlab


def patch_covariance(h: torch.Tensor, conv: nn.Conv2d, rows: int) -> torch.Tensor:
    """Covariance of the (C_in * 9) entries a conv reads, over images and positions."""
    p = F.unfold(h, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (N, C*9, L)
    p = p.transpose(1, 2).reshape(-1, p.shape[1]).double()
    p = p[torch.randperm(p.shape[0])[:rows]]
    return torch.cov(p.T)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distribution", default="orthogonal")
    ap.add_argument("--centered", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=3, help="report every n-th conv")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    torch.manual_seed(args.seed)
    model = PlainCNN()
    initlab.autoinit(model, torch.randn(256, 3, 16, 16), seed=args.seed,
                     distribution=args.distribution, centered=args.centered)
    print(f"distribution={args.distribution} centered={args.centered} seed={args.seed}")
    print("| conv | map | corr same ch | corr same tap | corr other | realized / independent "
          "gain | output var |")
    print("|---|---|---|---|---|---|---|")
    h = torch.randn(512, 3, 16, 16)
    index = 0
    with torch.no_grad():
        for layer in model.features:
            if isinstance(layer, nn.Conv2d):
                if index % args.every == 0 and index > 0:
                    c = patch_covariance(h, layer, 40_000)
                    v = c.diagonal().mean()
                    k = layer.kernel_size[0] * layer.kernel_size[1]
                    chan = torch.arange(c.shape[0]) // k
                    tap = torch.arange(c.shape[0]) % k
                    same_c, same_t = chan[:, None] == chan, tap[:, None] == tap
                    off = ~torch.eye(c.shape[0], dtype=torch.bool)
                    corr = [float(c[m].mean() / v) for m in
                            (same_c & off, ~same_c & same_t, ~same_c & ~same_t)]
                    w = layer.weight.double().reshape(layer.out_channels, -1)
                    gain = torch.einsum("ji,ik,jk->j", w, c, w).mean() / (
                        w.pow(2).sum(1).mean() * v)
                    out = layer(h).var()
                    print(f"| {index} | {h.shape[-1]}x{h.shape[-1]} | {corr[0]:.3f} | "
                          f"{corr[1]:.3f} | {corr[2]:.3f} | {float(gain):.3f} | "
                          f"{float(out):.3f} |", flush=True)
                index += 1
            h = layer(h)


if __name__ == "__main__":
    main()
