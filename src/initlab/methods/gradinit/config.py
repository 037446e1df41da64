"""GradInit's settings: `GradInitConfig` and the authors' Post-LN Transformer recipe (Zhu et al.,
NeurIPS 2021, arXiv 2102.08098, Appendix and their IWSLT'14 launch script).

Two algorithms share the settings. `faithful=True` is the authors' search: a fixed number of
iterations of their RescaleAdam on the scales themselves, S = B0 u B1. The default
(`faithful=False`) is initlab's search: a warm start, Adam on log-scales with a learning rate that
adapts to the objective and no scale grown above its warm-start value, a stopping rule,
S = one batch, and a guard. Settings left at `None` take
the chosen algorithm's own default (`resolved()`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional

TARGETS = ("sgd", "adam")

# Defaults of the `None` settings: (authors' search, default search). gamma: (sgd, adam) targets.
FAITHFUL_DEFAULTS = dict(steps=390, scale_lr=1e-2, gamma=(1.0, 1.0), normalize_grad=True,
                         max_growth=math.inf)
SEARCH_DEFAULTS = dict(steps=200, scale_lr=0.1, gamma=(1.0, 1000.0), normalize_grad=False,
                       max_growth=1.0)


@dataclass
class GradInitConfig:
    target: str = "sgd"            # optimizer the scales are tuned for: "sgd" or "adam"
    lr: float = 0.1                # that optimizer's learning rate (eta)
    steps: Optional[int] = None    # faithful: the iterations (390 ~ one CIFAR epoch at batch
    #                                128); default search: the most it may take (200; 0: the
    #                                warm start alone)
    scale_lr: Optional[float] = None  # faithful: tau of the scales' Adam (1e-2); default search:
    #                                   the first step on log-scales (0.1), halved on plateaus
    gamma: Optional[float] = None  # bound on the first gradient's norm (L2 sgd, L1 adam):
    #                                1 (faithful, and the default search's sgd), 1000 (adam);
    #                                inf: no constraint step ever (the authors' train_cifar.py
    #                                default)
    normalize_grad: Optional[bool] = None  # sgd target: step along g/|g| (length exactly lr;
    #                                faithful) or g (the plain SGD step; default search)
    min_scale: float = 0.01        # floor for weights' scales (biases: 0)
    max_scale: Optional[float] = None       # cap for every scale
    max_growth: Optional[float] = None      # default search: each scale's cap as a factor of
    #                                         its warm-start value (1 for tensors the warm start
    #                                         leaves); 1: the search may only shrink; inf: no cap
    norm_max_scale: Optional[float] = None  # cap for normalization-layer weights (authors: 100)
    clip: Optional[float] = 1.0    # faithful: clip each scale gradient to [-clip, clip]; None/0: off
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    overlap: bool = True           # faithful: S~ = B0 u B2 (shares half of S); False: B3 u B2
    second_order: bool = False     # differentiate the objective through A[g] (sgd target)
    fast_constraint: bool = True   # constraint steps: Linear/Conv through their outputs (same
    #                                gradient, fewer convolutions; shortcut.py)
    batching: str = "auto"         # faithful: "concat" (S = B0 u B1), "split" (thirds), "auto"
    faithful: bool = False         # True: the authors' algorithm exactly, batch drawing included
    warm_start: bool = True        # default search: each layer's scale from one forward pass first
    patience: int = 10             # default search: iterations per window of the stopping rule
    guard: bool = True             # default search: never return scales that do worse than the
    #                                start after one step of the target optimizer (held-out batch;
    #                                0.1 % slack against a start that one step does not move)

    def resolved(self) -> "GradInitConfig":
        """A copy with every `None` default filled in for the chosen algorithm (self if none)."""
        if None not in (self.steps, self.scale_lr, self.gamma, self.normalize_grad,
                        self.max_growth):
            return self
        d = FAITHFUL_DEFAULTS if self.faithful else SEARCH_DEFAULTS
        gamma = d["gamma"][TARGETS.index(self.target)] if self.target in TARGETS else 1.0
        return replace(self, steps=d["steps"] if self.steps is None else self.steps,
                       scale_lr=d["scale_lr"] if self.scale_lr is None else self.scale_lr,
                       gamma=gamma if self.gamma is None else self.gamma,
                       normalize_grad=(d["normalize_grad"] if self.normalize_grad is None
                                       else self.normalize_grad),
                       max_growth=d["max_growth"] if self.max_growth is None else self.max_growth)

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}: use 'sgd' or 'adam'")
        if self.batching not in ("auto", "concat", "split"):
            raise ValueError(f"unknown batching {self.batching!r}: use 'auto', 'concat' or 'split'")
        positive = dict(lr=self.lr, scale_lr=self.scale_lr, gamma=self.gamma)
        for name, value in positive.items():
            if value is None:
                continue
            ok = isinstance(value, (int, float)) and value > 0 and (
                math.isfinite(value) or (name == "gamma" and value == math.inf))
            if not ok:
                what = "a positive number or inf" if name == "gamma" else "a positive finite number"
                raise ValueError(f"{name} must be {what}, got {value!r}")
        least = 1 if self.faithful or not self.warm_start else 0  # 0: the warm start alone
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < least):
            raise ValueError(f"steps must be an integer >= {least}, got {self.steps!r}")
        if not isinstance(self.patience, int) or self.patience < 2:
            raise ValueError(f"patience must be an integer >= 2, got {self.patience!r}")
        if not (0 <= self.min_scale < math.inf):
            raise ValueError(f"min_scale must be >= 0, got {self.min_scale!r}")
        for name in ("max_scale", "norm_max_scale"):
            cap = getattr(self, name)
            if cap is not None and not cap >= self.min_scale:
                raise ValueError(f"{name}={cap!r} is below min_scale={self.min_scale!r}")
        if self.max_growth is not None:
            if self.faithful and self.max_growth != math.inf:
                raise ValueError("max_growth applies to the default search (faithful=False); the "
                                 "authors' search takes max_scale")
            if not (isinstance(self.max_growth, (int, float)) and self.max_growth >= 1):
                raise ValueError(f"max_growth must be a number >= 1 (1: scales may only shrink "
                                 f"from the warm start; inf: no cap), got {self.max_growth!r}")
        if self.clip is not None and not self.clip >= 0:
            raise ValueError(f"clip must be >= 0 or None, got {self.clip!r}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas!r}")


#: The authors' IWSLT'14 Post-LN Transformer recipe: `gradinit(model, data, **TRANSFORMER_RECIPE)`.
TRANSFORMER_RECIPE: dict[str, Any] = dict(
    target="adam", lr=1e-3, gamma=1000.0, scale_lr=2.5e-3, betas=(0.9, 0.98),
    norm_max_scale=100.0, clip=None, steps=780, faithful=True,
)
