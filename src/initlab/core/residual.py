"""Residual branches, for rules that need to know them (Fixup, SkipInit).

A model says where its residual branches are by marking them:

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.branch = nn.Sequential(conv3x3(c, c), nn.ReLU(), conv3x3(c, c))
            self.scale = nn.Parameter(torch.ones(()))       # optional branch multiplier
            initlab.mark_residual_branch(self.branch, scale=self.scale)
        def forward(self, x):
            return x + self.scale * self.branch(x)

`last` is the branch's final weighted layer (default: its last Linear/Conv in registration order);
`scale` a scalar parameter that multiplies the branch's output (SkipInit sets it to 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

_MARK = "_initlab_residual"
WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(eq=False)
class ResidualBranch:
    name: str
    branch: nn.Module
    last: nn.Module
    scale: Optional[nn.Parameter]

    @property
    def weighted_layers(self) -> list[nn.Module]:
        return [m for m in self.branch.modules() if isinstance(m, WEIGHTED)]


def mark_residual_branch(
    branch: nn.Module, *, last: Optional[nn.Module] = None, scale: Optional[nn.Parameter] = None
) -> nn.Module:
    if last is None:
        layers = [m for m in branch.modules() if isinstance(m, WEIGHTED)]
        if not layers:
            raise ValueError("a residual branch needs at least one Linear/Conv layer; pass last=")
        last = layers[-1]
    elif not any(m is last for m in branch.modules()):
        raise ValueError("last= must be a submodule of the branch")
    if scale is not None and scale.numel() != 1:
        raise ValueError(f"scale= must be a scalar parameter, got shape {tuple(scale.shape)}")
    object.__setattr__(branch, _MARK, (last, scale))
    return branch


def residual_branches(model: nn.Module) -> list[ResidualBranch]:
    """The marked branches of `model`, in module order."""
    found = []
    for name, m in model.named_modules():
        mark = getattr(m, _MARK, None)
        if mark is not None:
            found.append(ResidualBranch(name, m, *mark))
    return found
