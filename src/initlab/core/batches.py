"""The batch protocol: draw batches from any iterable, move them to a device, join and split them.

A batch is any nest of tuples, lists, dicts and tensors (and non-tensor leaves such as strings or
ints). Two batches *concatenate* when they have the same structure, equal non-tensor leaves and
tensors that agree in every dimension but the first. A batch *splits* along the first dimension
of its tensors; leaves whose first dimension differs from the batch size are kept whole.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, Iterator

import torch


class EmptyDataError(ValueError):
    pass


class BatchStream:
    """Endless batches from `data`, re-iterating it when exhausted; `put_back` returns one."""

    def __init__(self, data: Iterable, device: torch.device | None = None):
        if isinstance(data, (torch.Tensor, Mapping)) or not isinstance(data, Iterable):
            raise TypeError(
                f"data must be an iterable of batches (a DataLoader, a list of (inputs, targets), "
                f"a generator function's result...), got {type(data).__name__}"
            )
        self.data = data
        self.device = device
        self._it: Iterator | None = None
        self._pending: list[Any] = []
        self.drawn = 0

    def next(self) -> Any:
        if self._pending:
            return self._pending.pop()
        if self._it is None:
            self._it = iter(self.data)
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = iter(self.data)  # an exhausted *iterator* returns itself: caught below
            try:
                batch = next(self._it)
            except StopIteration:
                if self.drawn == 0:
                    raise EmptyDataError("data yielded no batches") from None
                raise EmptyDataError(
                    f"data ran out after {self.drawn} batches and cannot be re-iterated: pass a "
                    "re-iterable (a DataLoader, a list) rather than a one-shot iterator/generator"
                ) from None
        self.drawn += 1
        return to_device(batch, self.device)

    def put_back(self, batch: Any) -> None:
        self._pending.append(batch)


def to_device(batch: Any, device: torch.device | None) -> Any:
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return _rebuild(batch, {k: to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return _rebuild(batch, [to_device(v, device) for v in batch])
    return batch


def _rebuildable(mapping: Mapping) -> bool:
    try:
        type(mapping)({})
        return True
    except Exception:
        return False


def _rebuild(like: Any, items: Any) -> Any:
    if isinstance(like, Mapping):
        return type(like)(items) if _rebuildable(like) else dict(items)
    if isinstance(like, tuple) and hasattr(like, "_fields"):
        return type(like)(*items)
    return type(like)(items)


def concat(a: Any, b: Any) -> Any:
    """Join two batches along the first dimension; raises ValueError when they do not fit."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dim() == 0 or a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
            raise ValueError(f"tensors of shapes {tuple(a.shape)} and {tuple(b.shape)} do not join")
        return torch.cat([a, b])
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if a.keys() != b.keys():
            raise ValueError("dict batches have different keys")
        return _rebuild(a, {k: concat(a[k], b[k]) for k in a})
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            raise ValueError("sequence batches differ in type or length")
        return _rebuild(a, [concat(x, y) for x, y in zip(a, b)])
    if type(a) is type(b) and a == b:
        return a
    raise ValueError(f"cannot join leaves {type(a).__name__} and {type(b).__name__}")


def batch_size(batch: Any) -> int:
    """First dimension of the first tensor found in the batch."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            raise ValueError("a batch needs tensors with a batch dimension")
        return batch.shape[0]
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, Iterable) and not isinstance(values, (str, bytes)):
        for v in values:
            try:
                return batch_size(v)
            except ValueError:
                continue
    raise ValueError(f"no tensor with a batch dimension in a {type(batch).__name__} batch")


def slice_batch(batch: Any, start: int, stop: int, n: int) -> Any:
    """Rows [start, stop) of every tensor whose first dimension is the batch size `n`."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.dim() > 0 and batch.shape[0] == n else batch
    if isinstance(batch, Mapping):
        return _rebuild(batch, {k: slice_batch(v, start, stop, n) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return _rebuild(batch, [slice_batch(v, start, stop, n) for v in batch])
    return batch


def batch_tensors(batch: Any) -> list[torch.Tensor]:
    """Every tensor of a batch, through mappings (a dict, a tokenizer's BatchEncoding) and
    sequences, in order."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [t for v in batch.values() for t in batch_tensors(v)]
    if isinstance(batch, (list, tuple)):
        return [t for v in batch for t in batch_tensors(v)]
    return []


def split_thirds(batch: Any) -> tuple[Any, Any]:
    """The authors' Transformer recipe: S = first two thirds, S~ = last two thirds."""
    n = batch_size(batch)
    third = n // 3
    if third < 1:
        raise ValueError(f"a batch of {n} rows cannot be split in thirds; use at least 3")
    return slice_batch(batch, 0, 2 * third, n), slice_batch(batch, third, n, n)
