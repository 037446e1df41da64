"""SkipInit: start every residual branch switched off, through a learnable scalar.

De & Smith, "Batch Normalization Biases Residual Blocks Towards the Identity Function in Deep
Networks", NeurIPS 2020. Each residual branch is multiplied by a learnable scalar, initialized to
0 (or to a value no larger than 1/sqrt(d), d the number of residual branches), so the network
starts as (nearly) the identity through its skip connections.

Branches and their scalars are those marked with `initlab.mark_residual_branch(branch,
scale=...)` (see `core.residual`); the model owns the scalar and multiplies the branch by it.
No departure from the paper: the rule only writes those scalars.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.checks import require
from ..core.residual import residual_branches
from ..core.rules import Staged
from ..registry import register
from .fixup import NO_BRANCHES

log = logging.getLogger(__name__)


@dataclass
class SkipInitConfig:
    value: float = 0.0  # the branch scalars' value: 0, or at most 1/sqrt(number of branches)

    def validate(self, n_branches: int) -> None:
        bound = 1 / math.sqrt(n_branches)
        ok = isinstance(self.value, (int, float)) and 0 <= self.value <= bound * (1 + 1e-12)
        require(ok, f"value must lie in [0, 1/sqrt(depth)] = [0, {bound:.4g}] for {n_branches} "
                f"residual branches, got {self.value!r}")


@register("skipinit", config=SkipInitConfig,
          description="a learnable scalar per residual branch, initialized to 0",
          paper="De & Smith, NeurIPS 2020")
def skipinit(model: nn.Module, **settings: Any) -> None:
    """Set every marked residual branch's scalar multiplier to `value` (default 0).

    Refuses (model unchanged) when no branch is marked or a branch has no `scale=` parameter.
    """
    cfg = SkipInitConfig(**settings)
    branches = residual_branches(model)
    if not branches:
        raise ValueError(NO_BRANCHES.format(method="skipinit"))
    missing = [br.name or "<model>" for br in branches if br.scale is None]
    if missing:
        raise ValueError(
            f"skipinit needs a scalar multiplier on every residual branch; these have none: "
            f"{', '.join(missing)}. Give the block `self.scale = nn.Parameter(torch.ones(()))`, "
            "use `x + self.scale * self.branch(x)` and mark it with "
            "initlab.mark_residual_branch(self.branch, scale=self.scale)")
    cfg.validate(len(branches))
    plan = Staged()
    for br in branches:
        plan.set(br.scale, torch.full_like(br.scale, float(cfg.value)))
    plan.commit("skipinit")
    log.info("skipinit: %d residual branch scalars set to %g", len(branches), cfg.value)
    return None
