"""The lab under `torchrun`: one process per rank, DDP training, distributed GradInit.

    torchrun --standalone --nproc_per_node=2 -m initlab.lab.cli compare --data digits ...

Launched this way (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK), `initlab compare` joins the
process group (gloo on CPU, NCCL on CUDA, one GPU per rank by LOCAL_RANK), and each rank takes
its share of every global batch: rows rank, rank + W, rank + 2W, ... So a run sees the same
global batches, in the same order, as a one-process run with the same `--batch-size` (keep it
divisible by the number of ranks: GradInit's contract wants equal per-rank batches).
Initialization runs on every rank (GradInit averages across ranks by itself; any other method's
result is made identical by DDP's broadcast from rank 0), then the model is wrapped in
`DistributedDataParallel`. Evaluation runs on the whole test set on every rank (the models are
identical); only rank 0 prints, logs progress and writes results.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def is_main() -> bool:
    return rank_and_size()[0] == 0


def setup(device: str) -> str:
    """Join the process group torchrun describes; returns this rank's device."""
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank, size = rank_and_size()
    log.info("rank %d of %d on %s", rank, size, device)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Shard:
    """This rank's rows (rank::world) of every batch of `batches`; all of them in one process."""

    def __init__(self, batches: Iterable, rank: int, size: int):
        self.batches, self.rank, self.size = batches, rank, size

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        for x, y in self.batches:
            yield x[self.rank::self.size], y[self.rank::self.size]


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if active():
        dist.barrier()


def shard(batches: Iterable) -> Iterable:
    rank, size = rank_and_size()
    return Shard(batches, rank, size) if size > 1 else batches


def wrap(model: nn.Module) -> nn.Module:
    """`DistributedDataParallel(model)` when running under torchrun (it broadcasts rank 0's
    parameters and buffers, so every rank starts training from the same model)."""
    if not active():
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (a no-op in one process); every rank gets the result."""
    if not active():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()
