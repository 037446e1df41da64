"""The baseline: keep whatever initialization the model's constructor gave it (PyTorch's own)."""
from __future__ import annotations

from torch import nn

from ..registry import register


@register("default", description="leave the model's constructor initialization untouched",
          paper="PyTorch defaults (Kaiming-uniform, a=sqrt(5))")
def default(model: nn.Module) -> None:
    return None
