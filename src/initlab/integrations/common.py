"""What the training-framework callbacks share: a method run on every rank with one result.
(Random states are kept with `core.rng.kept_rng`.)"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from torch import nn

from ..core.distributed import broadcast_module
from ..core.report import InitReport
from ..registry import MethodInfo

__all__ = ["run_everywhere"]


def run_everywhere(info: MethodInfo, model: nn.Module, data: Optional[Iterable],
                   **settings: Any) -> Optional[InitReport]:
    """A method that is not distributed-aware, on every rank; then rank 0's result on all of
    them (its random draws may differ per rank)."""
    out = info.fn(model, data, **settings) if info.needs_data else info.fn(model, **settings)
    broadcast_module(model)
    return out if isinstance(out, InitReport) else None
