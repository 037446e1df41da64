"""The baselines: the model's constructor initialization, kept (`default`) or drawn again
with PyTorch's own layer rules (`torch-default`).

`torch-default` calls every module's `reset_parameters()` (and `_reset_parameters()`, which
`nn.MultiheadAttention` and `nn.Transformer` use), children before parents as their
constructors do, so a model whose constructor applied its own init (the GradInit authors' CNNs,
a Transformer's Xavier) gets PyTorch's layer defaults instead: Linear/Conv Kaiming-uniform with
a = sqrt(5), biases uniform in ±1/sqrt(fan_in), norms 1 and 0. Parameters a module creates
directly (a residual multiplier) keep their values; batch-norm running statistics are reset
with their layers.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch
from torch import nn

from ..core.finish import unchanged_on_error
from ..registry import register

log = logging.getLogger(__name__)


@register("default", description="leave the model's constructor initialization untouched",
          paper="PyTorch defaults (Kaiming-uniform, a=sqrt(5)) unless the constructor sets its own")
def default(model: nn.Module) -> None:
    return None


@register("torch-default", description="re-draw every layer with PyTorch's own init "
          "(reset_parameters), whatever the constructor did",
          paper="PyTorch defaults (Kaiming-uniform, a=sqrt(5))")
def torch_default(model: nn.Module, *, seed: Optional[int] = None) -> None:
    """Reset every module that has `reset_parameters` (or `_reset_parameters`), descendants
    first. `seed`: draw from this seed (None: torch's global generator). All or nothing."""
    resets = [(name, getattr(m, attr)) for name, m in reversed(list(model.named_modules()))
              for attr in ("reset_parameters", "_reset_parameters")
              if callable(getattr(m, attr, None))]
    if not resets:
        raise ValueError("torch-default found no module with reset_parameters(); the model's "
                         "layers define no PyTorch default to re-draw")
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    forked = contextlib.nullcontext() if seed is None else torch.random.fork_rng(
        devices=[torch.cuda.current_device()] if torch.cuda.is_available() else [])
    with unchanged_on_error("torch-default"), forked:
        if seed is not None:
            torch.manual_seed(int(seed))
        try:
            for _name, reset in resets:
                reset()
        except BaseException:
            with torch.no_grad():
                for key, value in model.state_dict().items():
                    value.copy_(saved[key])
            raise
    log.info("torch-default: %d modules re-drawn", len(resets))
