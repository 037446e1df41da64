"""GradInit on an accelerator agrees with the CPU: same model, batches and settings.

    python benchmarks/device_check.py --device cuda

Runs a short search (objective and constraint steps) on a ResNet-20 without BN on both devices
and prints the largest relative difference between the scales. Round-off differs between
devices, so agreement is to ~1e-4 over a few dozen steps, not bitwise.
"""
from __future__ import annotations

import argparse
import copy

import torch

import initlab
from initlab.lab.models import ResNet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = ResNet(3, depth=20, width=16, bn=False)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g))
            for _ in range(8)]
    probe = initlab.gradinit(copy.deepcopy(model), data, steps=1, gamma=1e30, faithful=True)
    gamma = 0.95 * probe.history[0]["grad_norm"]  # a few constraint steps, then objective ones
    results = {}
    for device in ("cpu", args.device):
        m = copy.deepcopy(model).to(device)
        results[device] = initlab.gradinit(m, data, steps=args.steps, gamma=gamma, scale_lr=1e-2,
                                           faithful=True)
    cpu, dev = results["cpu"], results[args.device]
    worst = max(abs(dev.scales[k] - v) / abs(v) for k, v in cpu.scales.items() if v != 0)
    branches = [h["branch"][0] for h in cpu.history]
    same = branches == [h["branch"][0] for h in dev.history]
    print(f"{args.device} vs cpu, {args.steps} steps ({''.join(branches)}): "
          f"branches identical: {same}; largest relative scale difference {worst:.2e}")


if __name__ == "__main__":
    main()
