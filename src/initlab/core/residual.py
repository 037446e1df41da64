"""Residual branches and residual sums, for rules that need to know them.

Branches (Fixup, SkipInit) are marked; sums (Admin, DeepNet) are `ResidualSum` modules (below).

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
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


# --- Residual sums: x_{l+1} = LN(multiplier * x_l + f(x_l)) (Admin, DeepNet) -------------------

LAYERS = {nn.TransformerEncoderLayer: "encoder", nn.TransformerDecoderLayer: "decoder"}
STACKS = ("encoder", "decoder")


class ResidualSum(nn.Module):
    """`multiplier * x + f_x`: a residual connection whose skip multiplier a method may set
    (Admin's omega, DeepNet's alpha). A model exposes its sums by building them from this module:

        self.attn_sum = initlab.ResidualSum(branch=self.attn)     # in __init__
        x = self.norm1(self.attn_sum(x, self.attn(x)))            # a Post-LN sublayer

    The multiplier is a scalar buffer: 1 by default (the plain `x + f_x`, bit for bit), saved in
    the state dict (a state dict from before it existed loads with 1), never trained.
    `branch`: the module(s) computing f_x, whose weights DeepNet re-draws (kept by reference, not
    registered twice). `stack`: "encoder" or "decoder"; default: the enclosing
    `nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer`'s, if any.
    """

    multiplier: torch.Tensor

    def __init__(self, branch: Union[nn.Module, Sequence[nn.Module], None] = None, *,
                 stack: Optional[str] = None):
        super().__init__()
        if stack is not None and stack not in STACKS:
            raise ValueError(f"stack must be 'encoder', 'decoder' or None, got {stack!r}")
        mods = [] if branch is None else [branch] if isinstance(branch, nn.Module) else list(branch)
        if not all(isinstance(m, nn.Module) for m in mods):
            raise TypeError("branch= takes a module or a sequence of modules")
        object.__setattr__(self, "branch", tuple(mods))   # references, not submodules
        self.stack = stack
        self.register_buffer("multiplier", torch.ones(()))

    def forward(self, x: torch.Tensor, f_x: torch.Tensor) -> torch.Tensor:
        return x * self.multiplier + f_x

    def extra_repr(self) -> str:
        return f"multiplier={float(self.multiplier):.4g}" + (f", stack={self.stack}"
                                                             if self.stack else "")

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        state_dict.setdefault(prefix + "multiplier", torch.ones(()))  # saved before it existed
        super()._load_from_state_dict(state_dict, prefix, *args)


@dataclass(eq=False)
class SumSite:
    """A residual sum of a model: its name, the module, its stack, and the Transformer layer
    (name, module) around it, if any."""
    name: str
    sum: ResidualSum
    stack: Optional[str]
    layer: Optional[tuple[str, nn.Module]]


def residual_sums(model: nn.Module) -> list[SumSite]:
    """The `ResidualSum` modules of `model` in module order, each with its stack."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, tuple(LAYERS))]
    found = []
    for name, m in model.named_modules():
        if not isinstance(m, ResidualSum):
            continue
        around = [(n, lay) for n, lay in layers if name.startswith(n + ".") or not n]
        layer = around[-1] if around else None   # the innermost
        kind = next((k for cls, k in LAYERS.items() if layer and isinstance(layer[1], cls)), None)
        found.append(SumSite(name, m, m.stack or kind, layer))
    return found


NO_SUMS = ("{method} needs residual sums it can weight, and the model has none: build each "
           "residual connection as `self.sum1 = initlab.ResidualSum(branch=...)` and "
           "`x = norm(self.sum1(x, f(x)))` (see initlab.core.residual); the lab's "
           "TranslationTransformer has them")


def pre_ln_layers(sites: list[SumSite]) -> list[str]:
    """Names of the Transformer layers around `sites` that normalize first (Pre-LN)."""
    return sorted({s.layer[0] for s in sites if s.layer and getattr(s.layer[1], "norm_first",
                                                                        False)})
