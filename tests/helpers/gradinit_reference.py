"""An independent GradInit written the way the authors' CIFAR code works, for comparison.

Differences from initlab's implementation are deliberate: the model's parameters are rescaled
in place after every step, the scales and Adam moments are Python floats updated one tensor at a
time, the first gradient always carries the double-backward graph, scale gradients come from
`p.grad` as <dL/dp, p> * |w0| / |p|, and the look-ahead step is a separate forward on p - lr*A.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def reference_gradinit(model: nn.Module, batches, *, target="sgd", lr=0.1, steps=10,
                       scale_lr=1e-2, gamma=1.0, normalize_grad=True, min_scale=0.01,
                       clip=1.0, overlap=True, betas=(0.9, 0.999), eps=1e-8) -> nn.Module:
    model = copy.deepcopy(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    floors = [0.0 if "bias" in n else min_scale for n, _ in named]
    state = [dict(alpha=1.0, init_norm=p.norm().item(), step=0, cons_step=0, exp_avg=0.0,
                  exp_avg_sq=0.0, cons_exp_avg=0.0) for p in params]
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.training, m.track_running_stats = True, False
    it = iter(batches)

    def draw():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(batches)
            return next(it)

    for _ in range(steps):
        x0, y0 = draw()
        x1, y1 = draw()
        loss = F.cross_entropy(model(torch.cat([x0, x1])), torch.cat([y0, y1]))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        if target == "adam":
            gnorm = sum(g.abs().sum() for g in grads)
        else:
            gnorm = sum(g.square().sum() for g in grads).sqrt()
        for p in params:
            p.grad = None
        constraint = gnorm.item() > gamma
        if constraint:
            gnorm.backward()
        else:
            if target == "adam":
                steps_ = [g.sign().detach() for g in grads]
            elif normalize_grad:
                steps_ = [(g / gnorm).detach() for g in grads]
            else:
                steps_ = [g.detach() for g in grads]
            x2, y2 = draw()
            if not overlap:
                x0, y0 = draw()
            moved = {n: p - lr * s for (n, p), s in zip(named, steps_)}
            out = functional_call(model, moved, (torch.cat([x0, x2]),))
            (F.cross_entropy(out, torch.cat([y0, y2])) / lr).backward()
        with torch.no_grad():
            for p, st, floor in zip(params, state, floors):
                if p.grad is None:
                    continue
                curr = p.norm().item()
                if st["init_norm"] == 0 or curr == 0:
                    continue
                g = torch.sum(p.grad * p).item() * st["init_norm"] / curr
                if clip:
                    g = max(min(g, clip), -clip)
                b1, b2 = betas
                if constraint:
                    st["cons_step"] += 1
                    st["cons_exp_avg"] = st["cons_exp_avg"] * b1 + g * (1 - b1)
                    k, m = st["cons_step"], st["cons_exp_avg"]
                else:
                    st["step"] += 1
                    st["exp_avg"] = st["exp_avg"] * b1 + g * (1 - b1)
                    k, m = st["step"], st["exp_avg"]
                st["exp_avg_sq"] = st["exp_avg_sq"] * b2 + g * g * (1 - b2)
                denom = math.sqrt(st["exp_avg_sq"] / (1 - b2 ** (st["step"] + st["cons_step"]))) + eps
                st["alpha"] = max(st["alpha"] - scale_lr / (1 - b1 ** k) * m / denom, floor)
                p.mul_(st["alpha"] * st["init_norm"] / curr)
    model.reference_scales = {n: st["alpha"] for (n, _), st in zip(named, state)}
    return model
