"""Emergence-promoting scaling: shrink the first half of the layers, grow the second half.

Li, George & Silva, "Advancing Neural Network Performance through Emergence-Promoting
Initialization Scheme", 2024 (arXiv 2407.19044). Starting from a standard initialization, the
weight layers are indexed by their signed distance j from the middle of the network
(-n ... -1, 1 ... n for 2n layers; an odd middle layer has j = 0) and layer j is multiplied by
alpha^j, so early layers shrink, late ones grow, and the product of all factors is 1.

Where initlab departs from the authors' code, and why: the layers are the model's Linear/Conv1d/
2d/3d in registration order (the forward order of most models, without needing data);
`alpha` defaults to 1.1, initlab's choice, as the paper tunes it per architecture (larger with
batch norm). `base="keep"` scales the model's current weights instead of redrawing them; biases
are zeroed with the Xavier/Kaiming base and kept with "keep".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..core.checks import positive, require
from ..core.finish import unchanged_on_error
from ..core.rules import Staged, detect_activation, draw, generator, leaky_slope, weighted_layers
from ..registry import register

log = logging.getLogger(__name__)


@dataclass
class EmergenceConfig:
    alpha: float = 1.1          # layer j is multiplied by alpha ** j
    base: str = "kaiming"       # "kaiming" (normal, fan_in), "xavier" (uniform), or "keep"
    nonlinearity: str = "auto"  # Kaiming gain; "auto": the model's activation modules, else relu
    seed: Optional[int] = None  # base draws; None: torch's global generator

    def validate(self) -> None:
        positive("alpha", self.alpha)
        require(self.base in ("kaiming", "xavier", "keep"),
                f"base must be 'kaiming', 'xavier' or 'keep', got {self.base!r}")


def signed_distances(n_layers: int) -> list[int]:
    """-n..-1, 1..n for 2n layers; -n..-1, 0, 1..n for 2n + 1."""
    half = n_layers // 2
    if n_layers % 2:
        return list(range(-half, half + 1))
    return list(range(-half, 0)) + list(range(1, half + 1))


@register("emergence", config=EmergenceConfig,
          description="standard init, then layer j from the middle times alpha^j",
          paper="Li, George & Silva 2024, arXiv 2407.19044")
def emergence(model: nn.Module, **settings: Any) -> None:
    """Re-initialize (or keep) every Linear/Conv weight of `model` and scale it by alpha^j."""
    cfg = EmergenceConfig(**settings)
    cfg.validate()
    layers = weighted_layers(model)
    require(bool(layers), "emergence scales Linear/Conv1d/2d/3d layers and the model has none")
    act = detect_activation(model) if cfg.nonlinearity == "auto" else cfg.nonlinearity
    act = act or "relu"
    gen, plan = generator(cfg.seed), Staged()
    with unchanged_on_error("emergence"):
        for (name, m), j in zip(layers, signed_distances(len(layers))):
            if cfg.base == "kaiming":
                a = leaky_slope(model) if act == "leaky_relu" else 0.0
                plan.set(m.weight, draw(m.weight, torch.nn.init.kaiming_normal_, gen, a=a,
                                        nonlinearity=act))
                plan.zero(m.bias)
            elif cfg.base == "xavier":
                plan.set(m.weight, draw(m.weight, torch.nn.init.xavier_uniform_, gen))
                plan.zero(m.bias)
            plan.scale(m.weight, cfg.alpha ** j)
            log.debug("emergence: %s j=%d factor %.4g", name, j, cfg.alpha ** j)
        plan.commit("emergence")
    return None
