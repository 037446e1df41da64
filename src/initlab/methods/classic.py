"""The classic rules, applied per module type with `torch.nn.init`.

- Kaiming (He, Zhang, Ren & Sun, ICCV 2015): Var(W) = gain^2 / fan, fan_in or fan_out.
- Xavier (Glorot & Bengio, AISTATS 2010): Var(W) = gain^2 * 2 / (fan_in + fan_out).
- Orthogonal (Saxe, McClelland & Ganguli, ICLR 2014): W reshaped to (out, in * kernel) has
  orthonormal rows or columns, times gain.

Every Linear/Conv1d/2d/3d weight is drawn, its bias zeroed (`bias="keep"` leaves it). Kaiming's
gain comes from the activation: `nonlinearity="auto"` (its default) reads the model's activation
modules (ReLU, LeakyReLU with its slope, Tanh, Sigmoid, SELU) when they are all one kind, else
"relu". Xavier and orthogonal use gain 1 as in their papers (`nonlinearity="linear"`) unless
given `nonlinearity="auto"` or a name. Other modules (norms, embeddings) keep their values.
No departure from the papers (`scale` multiplies the drawn weights, 1 by default: He × 3 is an
init too large on purpose, for robustness studies).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..core.checks import require
from ..core.finish import unchanged_on_error
from ..core.rules import Staged, detect_activation, draw, generator, leaky_slope, weighted_layers
from ..registry import register

log = logging.getLogger(__name__)


@dataclass
class ClassicConfig:
    nonlinearity: str = "auto"      # activation for the gain; "auto": from the model
    #                                 (xavier / orthogonal default to "linear": gain 1)
    mode: str = "fan_in"            # Kaiming: "fan_in" (forward) or "fan_out" (backward)
    distribution: str = "normal"    # "normal" or "uniform" (Kaiming, Xavier)
    bias: str = "zero"              # "zero" or "keep"
    seed: Optional[int] = None      # draws; None: torch's global generator
    scale: float = 1.0              # multiplies every drawn weight (3: He x 3, an init too large
    #                                 on purpose, e.g. to test a method's robustness)

    def validate(self) -> None:
        require(self.mode in ("fan_in", "fan_out"), f"mode must be 'fan_in' or 'fan_out', "
                f"got {self.mode!r}")
        require(self.distribution in ("normal", "uniform"),
                f"distribution must be 'normal' or 'uniform', got {self.distribution!r}")
        require(self.bias in ("zero", "keep"), f"bias must be 'zero' or 'keep', got {self.bias!r}")
        require(isinstance(self.scale, (int, float)) and 0 < self.scale < float("inf"),
                f"scale must be a positive finite number, got {self.scale!r}")
        if self.nonlinearity != "auto":
            torch.nn.init.calculate_gain(self.nonlinearity, 0.01)  # raises on an unknown name


def activation(model: nn.Module, cfg: ClassicConfig) -> tuple[Optional[str], float]:
    """(nonlinearity name or None, leaky slope) for the gain."""
    act = detect_activation(model) if cfg.nonlinearity == "auto" else cfg.nonlinearity
    return act, leaky_slope(model) if act == "leaky_relu" else 0.0


def _apply(rule: str, model: nn.Module, settings: dict[str, Any]) -> None:
    cfg = ClassicConfig(**settings)
    cfg.validate()
    layers = weighted_layers(model)
    require(bool(layers), f"{rule} initializes Linear/Conv1d/2d/3d layers and the model has none")
    act, slope = activation(model, cfg)
    gain = torch.nn.init.calculate_gain(act, slope) if act else 1.0
    gen, plan = generator(cfg.seed), Staged()
    with unchanged_on_error(rule):
        for _name, m in layers:
            if rule == "kaiming":
                fill = (torch.nn.init.kaiming_normal_ if cfg.distribution == "normal"
                        else torch.nn.init.kaiming_uniform_)
                w = draw(m.weight, fill, gen, a=slope, mode=cfg.mode, nonlinearity=act or "relu")
            elif rule == "xavier":
                fill = (torch.nn.init.xavier_normal_ if cfg.distribution == "normal"
                        else torch.nn.init.xavier_uniform_)
                w = draw(m.weight, fill, gen, gain=gain)
            else:
                w = draw(m.weight, torch.nn.init.orthogonal_, gen, gain=gain)
            plan.set(m.weight, w * cfg.scale if cfg.scale != 1 else w)
            if cfg.bias == "zero":
                plan.zero(m.bias)
        plan.commit(rule)
    log.info("%s: %d layers, nonlinearity %s (gain %.4g)", rule, len(layers), act, gain)


@register("kaiming", config=ClassicConfig,
          description="He init: Var(W) = gain^2 / fan (fan_in by default)",
          paper="He, Zhang, Ren & Sun, ICCV 2015")
def kaiming(model: nn.Module, **settings: Any) -> None:
    """Kaiming-init every Linear/Conv weight (normal, fan_in, gain from the activation)."""
    _apply("kaiming", model, settings)


@register("xavier", config=ClassicConfig,
          description="Glorot init: Var(W) = 2 gain^2 / (fan_in + fan_out)",
          paper="Glorot & Bengio, AISTATS 2010")
def xavier(model: nn.Module, **settings: Any) -> None:
    """Xavier-init every Linear/Conv weight (uniform, gain 1 unless `nonlinearity=` is given)."""
    settings.setdefault("distribution", "uniform")
    settings.setdefault("nonlinearity", "linear")
    _apply("xavier", model, settings)


@register("orthogonal", config=ClassicConfig,
          description="orthogonal weights (reshaped to out x in*kernel), times gain",
          paper="Saxe, McClelland & Ganguli, ICLR 2014")
def orthogonal(model: nn.Module, **settings: Any) -> None:
    """Orthogonal-init every Linear/Conv weight (gain 1 unless `nonlinearity=` is given)."""
    settings.setdefault("nonlinearity", "linear")
    _apply("orthogonal", model, settings)
