"""What `initlab.diagnose` costs, as a ratio to one plain training step on the same model.

    python benchmarks/diagnose_cost.py [--repeats 5] [--threads 1] [--models mlp,resnet,transformer]
                                       [--device cpu] [--json out.json]

For each model, interleaved, the median wall time of:
  train       forward, backward and an optimizer step on one batch (the unit)
  diagnose    `initlab.diagnose(model, batches, lr=...)` with the default batches=4: three
              measured batches (forward and backward each, hooks, traced sums on the first one,
              attention weights and token SVDs for Transformers), one optimizer step on copies,
              and the held-out loss before and after it
  diagnose-2  the same with batches=2 (one measured batch and the held-out one)
Models: the demo's MLP (10 Linear layers, width 64, 8x8 inputs, batch 64, SGD); a ResNet-20
without batch norm (width 16, 1x28x28 inputs, batch 64, SGD; its branches are marked); and the
translation lab's Post-LN Transformer (6+6 layers, d 64, FFN 256, vocabulary 2000, batch 32
of 12-20 random tokens, Adam). The first call of each kind is a warm-up and is not counted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import initlab
from initlab.lab.models import build_model
from initlab.lab.translation.training import seq2seq_loss


def setup(name: str, device: str):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "transformer":
        model = build_model("transformer", depth=6, width=64, vocab_size=2000, nhead=4, ffn=256)
        batches = [(torch.randint(4, 2000, (32, int(torch.randint(12, 21, (1,), generator=g))),
                                  generator=g),
                    torch.randint(4, 2000, (32, 18), generator=g)) for _ in range(4)]
        return model.to(device), batches, seq2seq_loss, "adam", 1e-3
    if name == "mlp":
        model = build_model("mlp", depth=10, width=64, in_channels=1, image_size=8)
        shape = (64, 1, 8, 8)
    else:
        model = build_model("resnet", depth=20, width=16, in_channels=1, image_size=28)
        shape = (64, 1, 28, 28)
    batches = [(torch.randn(*shape, generator=g), torch.randint(0, 10, (shape[0],), generator=g))
               for _ in range(4)]
    loss = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
    return model.to(device), batches, loss, "sgd", 0.1


def run(name: str, device: str, repeats: int) -> dict:
    model, batches, loss_fn, optimizer, lr = setup(name, device)
    batches = [tuple(t.to(device) for t in b) for b in batches]
    opt = (torch.optim.Adam(model.parameters(), lr=0.0) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9))  # lr 0: no drift

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model, batches[0]).backward()
        opt.step()

    kinds = {
        "train": train,
        "diagnose": lambda: initlab.diagnose(model, batches, lr=lr, loss_fn=loss_fn,
                                             optimizer=optimizer),
        "diagnose-2": lambda: initlab.diagnose(model, batches, lr=lr, loss_fn=loss_fn,
                                               optimizer=optimizer, batches=2),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for rep in range(repeats + 1):
        for kind, fn in kinds.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if rep:  # the first round warms up
                times[kind].append(time.perf_counter() - start)
    unit = statistics.median(times["train"])
    return {k: {"median_s": statistics.median(v), "ratio": statistics.median(v) / unit}
            for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mlp,resnet,transformer")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    results = {}
    for name in a.models.split(","):
        results[name] = run(name, a.device, a.repeats)
        row = results[name]
        print(f"{name:12s} train {1e3 * row['train']['median_s']:7.1f} ms   "
              + "   ".join(f"{k} {row[k]['ratio']:.2f}x" for k in row if k != "train"),
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
