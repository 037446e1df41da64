"""Random state kept: whatever runs inside leaves every generator where it found it."""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def kept_rng(device: torch.device | None = None) -> Iterator[None]:
    """torch's CPU generator (and `device`'s, if CUDA), Python's and NumPy's restored on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
