"""What the training-framework callbacks share: random states left as they were, and a method
run on every rank with one result."""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterable, Iterator, Optional

import torch
from torch import nn

from ..core.distributed import broadcast_module
from ..core.report import InitReport
from ..registry import MethodInfo


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """torch (CPU + this CUDA device), Python and NumPy generators restored on exit, so that
    training draws the same data order and dropout masks as without the initialization."""
    py_state = random.getstate()
    np_state = None
    try:
        import numpy as np
        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover
        np = None
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        if np is not None:
            np.random.set_state(np_state)


def run_everywhere(info: MethodInfo, model: nn.Module, data: Optional[Iterable],
                   **settings: Any) -> Optional[InitReport]:
    """A method that is not distributed-aware, on every rank; then rank 0's result on all of
    them (its random draws may differ per rank)."""
    out = info.fn(model, data, **settings) if info.needs_data else info.fn(model, **settings)
    broadcast_module(model)
    return out if isinstance(out, InitReport) else None
