"""Module modes during an initialization search, and the guarantee that the model comes back.

`search_mode(model)`: dropout (and every other train/eval switch) off via `eval()`, while every
batch-norm kind normalizes with the batch's own statistics *without* updating running statistics
(the GradInit authors' setting). On exit, every module's `training` flag and every norm layer's
`track_running_stats` is restored, and the buffers are restored bitwise if anything wrote them.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

BATCH_STAT_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@contextlib.contextmanager
def search_mode(model: nn.Module, batch_stats: bool = True) -> Iterator[None]:
    training = {m: m.training for m in model.modules()}
    tracking = {m: m.track_running_stats for m in model.modules() if isinstance(m, BATCH_STAT_NORMS)}
    buffers = snapshot_buffers(model)
    try:
        model.eval()
        if batch_stats:
            for m in tracking:
                m.training = True
                m.track_running_stats = False  # F.batch_norm then gets no running buffers
        yield
    finally:
        for m, flag in training.items():
            m.training = flag
        for m, flag in tracking.items():
            m.track_running_stats = flag
        restore_buffers(model, buffers)


def double_backward_attention() -> contextlib.AbstractContextManager:
    """Scaled-dot-product attention on its math kernel, the one with a double backward (the
    fused CPU/GPU kernels raise "derivative for ..._backward is not implemented")."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no fused-kernel selection to undo
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def snapshot_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in model.named_buffers() if b is not None}


def restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, b in model.named_buffers():
            old = saved.get(name)
            if old is not None and (b.shape != old.shape or not torch.equal(b, old)):
                b.copy_(old) if b.shape == old.shape else b.set_(old)


def write_params(targets: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """Copy `values` into `targets` in place, all or nothing (even under KeyboardInterrupt)."""
    with torch.no_grad():
        originals = [t.detach().clone() for t in targets]
        done = 0
        try:
            for t, v in zip(targets, values):
                t.copy_(v)
                done += 1
        except BaseException:
            for t, o in zip(targets[:done + 1], originals[:done + 1]):
                t.copy_(o)
            raise
