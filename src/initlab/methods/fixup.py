"""Fixup: train residual networks without normalization by initializing their branches small.

Zhang, Dauphin & Ma, "Fixup Initialization: Residual Learning Without Normalization", ICLR 2019.
With L residual branches of m weighted layers each:
1. zero the last layer of every branch and the classifier (weights and biases);
2. He-init the other branch layers and multiply them by L^(-1/(2m-2));
3. set each branch's scalar multiplier to 1 (the model declares it; scalar biases are the
   model's own parameters and keep their initial value, 0 in the authors' blocks).
Branches are those marked with `initlab.mark_residual_branch` (see `core.residual`).

Where initlab departs from the authors' code, and why:
- m is counted per branch (the paper has one m for the whole network); a branch with one layer
  has nothing to scale. Biases of every branch layer are zeroed.
- He-init uses fan_out with the ReLU gain, as the authors' code does (`mode="fan_in"` is the
  paper's wording); layers outside the branches other than the classifier (stem, projection
  shortcuts) keep their initialization, as in the authors' code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..core.checks import require
from ..core.finish import unchanged_on_error
from ..core.residual import residual_branches
from ..core.rules import Staged, draw, generator
from ..registry import register

log = logging.getLogger(__name__)

NO_BRANCHES = (
    "{method} needs the model's residual branches, and none are marked. Mark each branch in "
    "the block's __init__ with initlab.mark_residual_branch(self.branch, last=self.conv2, "
    "scale=self.scale), or use a model from initlab.lab.models that does"
)


@dataclass
class FixupConfig:
    classifier: Optional[str] = "auto"  # module name of the classifier; "auto": the model's
    #                                     last Linear outside the branches; None: no classifier
    mode: str = "fan_out"               # He fan for the branch layers (authors' code: fan_out)
    nonlinearity: str = "relu"          # gain of the He init
    seed: Optional[int] = None          # He draws; None: torch's global generator

    def validate(self) -> None:
        require(self.mode in ("fan_in", "fan_out"), f"mode must be 'fan_in' or 'fan_out', "
                f"got {self.mode!r}")
        torch.nn.init.calculate_gain(self.nonlinearity)  # raises on an unknown name


def branch_factor(n_branches: int, m: int) -> float:
    """L^(-1/(2m-2)); 1 for a one-layer branch (nothing but its zeroed last layer)."""
    return 1.0 if m < 2 else n_branches ** (-1.0 / (2 * m - 2))


def find_classifier(model: nn.Module, name: Optional[str], inside: set[int]) -> Optional[nn.Module]:
    if name is None:
        return None
    if name != "auto":
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"classifier={name!r} is not a submodule of the model") from None
        require(hasattr(module, "weight"), f"classifier {name!r} has no weight")
        return module
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in inside]
    require(bool(linears), "found no Linear classifier outside the residual branches; pass "
            "classifier=<module name>, or classifier=None to leave the head alone")
    return linears[-1]


@register("fixup", config=FixupConfig,
          description="zero each residual branch's last layer and the classifier, "
          "He-init the rest scaled by L^(-1/(2m-2))", paper="Zhang, Dauphin & Ma, ICLR 2019")
def fixup(model: nn.Module, **settings: Any) -> None:
    """Initialize the marked residual branches and the classifier of `model` with Fixup.

    Refuses (model unchanged) when no branch is marked. Settings: fields of `FixupConfig`.
    """
    cfg = FixupConfig(**settings)
    cfg.validate()
    branches = residual_branches(model)
    if not branches:
        raise ValueError(NO_BRANCHES.format(method="fixup"))
    inside = {id(m) for br in branches for m in br.branch.modules()}
    head = find_classifier(model, cfg.classifier, inside)
    gen, plan, L = generator(cfg.seed), Staged(), len(branches)
    with unchanged_on_error("fixup"):
        for br in branches:
            layers = br.weighted_layers
            factor = branch_factor(L, len(layers))
            for layer in layers:
                if layer is br.last:
                    plan.zero(layer.weight)
                else:
                    w = draw(layer.weight, torch.nn.init.kaiming_normal_, gen, mode=cfg.mode,
                             nonlinearity=cfg.nonlinearity)
                    plan.set(layer.weight, w * factor)
                plan.zero(layer.bias)
            if br.scale is not None:
                plan.set(br.scale, torch.ones_like(br.scale))
            log.debug("fixup: branch '%s', %d layers, factor %.4g", br.name, len(layers), factor)
        if head is not None:
            plan.zero(head.weight)
            plan.zero(getattr(head, "bias", None))
        plan.commit("fixup")
    log.info("fixup: %d residual branches initialized%s", L,
             "" if head is None else ", classifier zeroed")
    return None


__all__ = ["FixupConfig", "branch_factor", "fixup"]
