"""What a GradInit iteration costs, as a ratio to one plain training step on the same model.

    python benchmarks/gradinit_cost.py [--device cuda] [--repeats 7] [--models resnet56,transformer]
                                       [--batch 64] [--threads N] [--json out.json]

For each model, one run measures the median wall time of:
  train        forward, backward, SGD-with-momentum step on a batch of 64 (the unit)
  objective    initlab's objective iteration: first gradient without the double-backward graph,
               look-ahead step, second forward/backward, scale update (|S| = |S~| = 64)
  constraint   initlab's constraint iteration: forward, backward with graph, double backward
               (Linear/Conv weights through the shortcut of methods/gradinit/shortcut.py)
  plain-con    the same without the shortcut (fast_constraint=False): every weight as p = a * w
  authors-obj  an objective iteration that always builds the graph, as the authors' code does
               (also what initlab pays when it wrongly predicts a constraint step)
  authors-con  a constraint iteration the authors' way: graph on the model's own parameters,
               gnorm.backward() into .grad, then <p.grad, p> per tensor
  pypi-obj / pypi-con   the PyPI package gradinit==0.1.1 (if installed): its two kinds of step
and the peak memory of each, as a ratio to the training step's (CUDA: max_memory_allocated;
CPU: the peak RSS increase of a fresh process running only that kind of step).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

from initlab.core.loss import default_loss
from initlab.core.modes import double_backward_attention
from initlab.core.params import trainable_params
from initlab.lab.models import ResNet
from initlab.methods.gradinit import GradInitConfig, GradInitSearch
from initlab.methods.gradinit.scale_adam import ScaleAdam, caps_and_floors

BATCH = int(os.environ.get("INITLAB_BENCH_BATCH", 64))
_KEEP: list = []


class Seq2Seq(nn.Module):
    """A small Post-LN encoder-decoder Transformer (d 256, 3+3 layers) on random tokens."""

    def __init__(self, vocab: int = 1000, d: int = 256):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.net = nn.Transformer(d, 4, 3, 3, 4 * d, dropout=0.1, batch_first=True)
        self.out = nn.Linear(d, vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        return self.out(self.net(self.emb(src), self.emb(tgt), tgt_mask=mask))


def seq_loss(model, batch):
    src, tgt = batch
    logits = model(src, tgt[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1))


def setup(name: str, device: str):
    torch.manual_seed(0)
    if name == "resnet56":
        model = ResNet(3, depth=56, width=16, bn=False).to(device)
        batch = lambda: (torch.randn(BATCH, 3, 32, 32, device=device),  # noqa: E731
                         torch.randint(0, 10, (BATCH,), device=device))
        return model, batch, default_loss, "sgd"
    model = Seq2Seq().to(device)
    batch = lambda: (torch.randint(0, 1000, (BATCH, 24), device=device),  # noqa: E731
                     torch.randint(0, 1000, (BATCH, 25), device=device))
    return model, batch, seq_loss, "adam"


def make_steps(name: str, device: str, kinds: list[str] | None = None) -> dict:
    """Each kind of step as a closure over one model and fixed batches."""
    model, batch, loss_fn, target = setup(name, device)
    S, S_tilde = batch(), batch()
    # lr=0: the step's arithmetic is all done, but repeated steps time the same model (a model
    # that trains while it is timed drifts, e.g. into denormal activations that slow CPUs 10x).
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def train():
        opt.zero_grad(set_to_none=True)
        loss_fn(model, S).backward()
        opt.step()

    model.eval()  # the search's modes (no BN in these models; dropout off)
    cfg = GradInitConfig(target=target, lr=0.1 if target == "sgd" else 1e-3)
    specs = trainable_params(model)
    search = GradInitSearch(model, specs, loss_fn, cfg)
    plain = GradInitSearch(model, specs, loss_fn, GradInitConfig(
        target=target, lr=cfg.lr, fast_constraint=False))
    floors, caps = caps_and_floors([s.is_bias for s in specs], [False] * len(specs), 0.01, None, None)
    scales = ScaleAdam(len(specs), 1e-3, floors, caps)
    active = torch.ones(len(specs), dtype=torch.bool)

    def objective(graph=False):
        first = search.first_pass(scales.alpha, S, graph=graph)
        first["gnorm"].item()  # the branch decision syncs here
        da, _, _ = search.objective_grad(first, S_tilde)
        scales.step(da, active, constraint=False)

    def constraint(search=search):
        first = search.first_pass(scales.alpha, S, graph=True)
        first["gnorm"].item()
        scales.step(search.constraint_grad(first), active, constraint=True)

    params = [s.param for s in specs]

    def authors_constraint():  # graph through the model's own leaves, gnorm.backward() into .grad
        with double_backward_attention():  # the fused attention kernels have no double backward
            gs = torch.autograd.grad(loss_fn(model, S), params, create_graph=True)
        sum(g.square().sum() for g in gs).sqrt().backward()
        [float((p.grad * p.detach()).sum()) for p in params]  # their per-tensor scale gradients
        for p in params:
            p.grad = None

    steps = dict(train=train, objective=objective, constraint=constraint,
                 **{"plain-con": lambda: constraint(plain),
                    "authors-obj": lambda: objective(graph=True), "authors-con": authors_constraint})
    if kinds is None or any(k.startswith("pypi") for k in kinds):
        steps.update(pypi_steps(name, device))
    return {k: v for k, v in steps.items() if kinds is None or k in kinds}


def pypi_steps(name: str, device: str) -> dict:
    try:
        from gradinit import GradInitWrapper  # the PyPI package gradinit==0.1.1
    except ImportError:
        return {}
    model, batch, loss_fn, target = setup(name, device)
    S = batch()
    wrapper = GradInitWrapper(model)
    _KEEP.append(wrapper)  # detached explicitly at exit: its __del__ at shutdown crashes torch
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    norm = 2 if target == "sgd" else 1

    def step(gamma):
        loss = wrapper.grad_loss(loss_fn(model, S), norm=norm, gamma=gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        wrapper.clamp_scales(0.01)

    return {"pypi-obj": lambda: step(1e30), "pypi-con": lambda: step(0.0)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(steps: dict, device: str, repeats: int) -> dict[str, float]:
    for fn in steps.values():  # warm up every kind first
        fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):  # interleaved, so drift in machine load hits all kinds alike
        for k, fn in steps.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_child(name: str, device: str, kind: str, queue) -> None:
    """Peak resident memory above the level just before the step, sampled every ~0.5 ms."""
    torch.set_flush_denormal(True)
    steps = make_steps(name, device, [kind])
    steps[kind]()  # first call: lazy allocations, optimizer state
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    base = _rss()
    watcher = threading.Thread(target=sample)
    watcher.start()
    steps[kind]()
    stop.set()
    watcher.join()
    queue.put(peak[0] - base)
    steps.clear()
    for wrapper in _KEEP:
        wrapper.detach()


def peak_memory(name: str, device: str, kinds: list[str]) -> dict[str, float]:
    out = {}
    if device.startswith("cuda"):
        steps = make_steps(name, device, kinds)
        for k in kinds:
            steps[k]()  # warm-up allocations (optimizer state, caches)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            steps[k]()
            torch.cuda.synchronize()
            out[k] = float(torch.cuda.max_memory_allocated() - base)
        return out
    # A fixed mmap threshold makes glibc hand every large block back to the OS when freed, so
    # the resident size tracks the live tensors; each kind runs in a fresh process.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    ctx = mp.get_context("spawn")
    for k in kinds:
        q = ctx.Queue()
        p = ctx.Process(target=_peak_rss_child, args=(name, device, k, q))
        p.start()
        out[k] = float(q.get())
        p.join()
    return out


def main() -> None:
    global BATCH
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--models", default="resnet56,transformer")
    ap.add_argument("--batch", type=int, default=BATCH, help="batch size of every kind of step")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    BATCH = args.batch
    os.environ["INITLAB_BENCH_BATCH"] = str(args.batch)  # read by the memory-measuring children
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the memory-measuring children
    torch.set_flush_denormal(True)
    results = {}
    for name in args.models.split(","):
        steps = make_steps(name, args.device)
        times = time_steps(steps, args.device, args.repeats)
        mem = peak_memory(name, args.device, list(steps))
        unit_t, unit_m = times["train"], mem["train"]
        results[name] = {k: dict(time_ratio=times[k] / unit_t, mem_ratio=mem[k] / unit_m,
                                 seconds=times[k], peak_bytes=mem[k]) for k in steps}
        print(f"\n{name} on {args.device} ({torch.get_num_threads()} threads), median of "
              f"{args.repeats}; train step {unit_t * 1e3:.1f} ms, peak +{unit_m / 2**20:.0f} MiB")
        print(f"{'kind':<12} {'time / train':>12} {'peak mem / train':>17}")
        for k, r in results[name].items():
            print(f"{k:<12} {r['time_ratio']:>11.2f}x {r['mem_ratio']:>16.2f}x")
    for wrapper in _KEEP:
        wrapper.detach()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
