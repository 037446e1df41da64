"""Collectives for an initialization search that runs on every rank of `torch.distributed`.

Contract (what a method built on these helpers assumes and guarantees):
- Every rank calls the method with the same settings on the same architecture, each with its own
  shard of the data. Values the search depends on are *averaged* across ranks, so every rank
  takes the same decisions and ends with the same parameters, equal to a one-process run on the
  union of the ranks' batches. A mean loss over a union equals the mean of the per-rank mean
  losses only when every rank's batches are equally large: use equal per-rank batch sizes
  (`drop_last=True` with a `DistributedSampler`). Layers that use batch statistics (batch norm)
  see each rank's own batch, as in DDP training without SyncBatchNorm.
- Starting values come from rank 0 (as `DistributedDataParallel` does at construction).
- Failure: a rank whose local work raises still joins the next collective, with a flag set; then
  every rank raises (the failing rank its own error, the others a `RemoteRankError` naming the
  rank and its error), so no rank is left waiting in a collective. A rank that dies outright
  (killed) cannot join: the others then wait for the process group's timeout, unless the
  launcher stops them (torchrun does).

With no process group, or a group of one, `current_ranks()` is None and methods run as usual.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


class RemoteRankError(RuntimeError):
    """Raised on the ranks that did not fail, when another rank failed."""


@dataclass(frozen=True)
class Ranks:
    rank: int
    size: int
    device: torch.device  # where collective buffers live (the model's device: gloo CPU, NCCL GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def attempt(self, fn: Callable[[], T]) -> tuple[Optional[T], Optional[BaseException]]:
        """Run `fn` locally; an exception (even KeyboardInterrupt) is returned, not raised."""
        try:
            return fn(), None
        except BaseException as e:  # noqa: B036  (re-raised on every rank by `average`)
            return None, e

    def average(self, local: Optional[list[torch.Tensor]], like: list[torch.Tensor],
                error: Optional[BaseException], where: str) -> list[torch.Tensor]:
        """Mean over ranks of `local` (shapes and dtypes as `like`), detached.

        A rank with `error` sends zeros and a failure flag; then every rank raises. One
        all-reduce per (dtype, device) group; the flag rides in the first group.
        """
        send = [torch.zeros_like(t) for t in like] if error is not None or local is None else local
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, t in enumerate(send):
            groups.setdefault((t.dtype, t.device), []).append(i)
        out: list[Optional[torch.Tensor]] = [None] * len(send)
        flag = float(error is not None)
        if not groups:  # a flag-only check
            groups[(torch.float32, self.device)] = []
        failed = False
        for k, ((dtype, device), idx) in enumerate(groups.items()):
            parts = [send[i].detach().reshape(-1) for i in idx]
            if k == 0:
                parts.append(torch.full((1,), flag, dtype=dtype, device=device))
            flat = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)
            dist.all_reduce(flat)  # SUM: bitwise the same result on every rank
            if k == 0:
                failed, flat = bool(flat[-1] > 0), flat[:-1]
            for i, chunk in zip(idx, flat.split([send[i].numel() for i in idx])):
                out[i] = chunk.view(send[i].shape) / self.size
        if failed:
            self._raise(error, where)
        return out  # type: ignore[return-value]

    def check(self, error: Optional[BaseException], where: str) -> None:
        """A collective that raises on every rank if any rank has an `error`."""
        self.average([], [], error, where)

    def guarded(self, fn: Callable[[], T], where: str) -> T:
        """`fn()` on every rank; if it raises anywhere, every rank raises."""
        value, error = self.attempt(fn)
        self.check(error, where)
        return value  # type: ignore[return-value]

    def _raise(self, error: Optional[BaseException], where: str) -> None:
        messages: list[Any] = [None] * self.size
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [r for r, m in enumerate(messages) if m is not None]
        raise RemoteRankError(f"rank {failed[0]} of {self.size} failed ({where}): {messages[failed[0]]}; "
                              "every rank stopped")

    def agree(self, value: Any, what: str) -> None:
        """Raise on every rank unless `value` (picklable, comparable) is the same on all."""
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            raise ValueError(f"rank {differ[0]} has different {what} from rank 0; call the method "
                             "with the same settings on the same architecture on every rank")

    def from_main(self, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        """Rank 0's values of `tensors` on every rank, without writing them.

        Returns (tensors, replaced): the inputs themselves when every rank already holds the
        same values (compared by per-tensor sum and sum of squares), else broadcast copies.
        """
        stats = torch.stack([torch.stack([t.detach().sum(dtype=torch.float64),
                                          t.detach().square().sum(dtype=torch.float64)]).to(self.device)
                             for t in tensors]).reshape(-1)
        both = torch.cat([stats, -stats])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)  # [max, -min]
        n = stats.numel()
        if bool((both[:n] == -both[n:]).all()):
            return tensors, False
        copies = [t.detach().clone() for t in tensors]
        for c in copies:
            dist.broadcast(c, src=0)
        return copies, True


def current_ranks(device: torch.device | str = "cpu") -> Optional[Ranks]:
    """The ranks of the default process group when there are two or more, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    return Ranks(dist.get_rank(), size, torch.device(device)) if size > 1 else None


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's `module`, in place (for
    methods that are not distributed-aware: run them everywhere, then make the ranks agree)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)
