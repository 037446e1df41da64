"""GradInit's settings: `GradInitConfig` (the authors' CIFAR defaults) and the authors'
Post-LN Transformer recipe (Zhu et al., NeurIPS 2021, arXiv 2102.08098, Appendix and their
IWSLT'14 launch script)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

TARGETS = ("sgd", "adam")


@dataclass
class GradInitConfig:
    target: str = "sgd"            # optimizer the scales are tuned for: "sgd" or "adam"
    lr: float = 0.1                # that optimizer's learning rate (eta)
    steps: int = 390               # search iterations (390 ~ one CIFAR epoch at batch 128)
    scale_lr: float = 1e-2         # learning rate of the scales' Adam (tau)
    gamma: float = 1.0             # bound on the first gradient's norm (L2 sgd, L1 adam);
                                   # inf: no constraint step ever (the authors' train_cifar.py default)
    normalize_grad: bool = True    # sgd target: step along g/|g|, so its length is exactly lr
    min_scale: float = 0.01        # floor for weights' scales (biases: 0)
    max_scale: Optional[float] = None       # cap for every scale
    norm_max_scale: Optional[float] = None  # cap for normalization-layer weights (authors: 100)
    clip: Optional[float] = 1.0    # clip each scale gradient to [-clip, clip]; None/0: off
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    overlap: bool = True           # S~ = B0 u B2 (shares half of S); False: S~ = B3 u B2
    second_order: bool = False     # differentiate the objective through A[g] (sgd target)
    fast_constraint: bool = True   # constraint steps: Linear/Conv through their outputs (same
                                   # gradient, fewer convolutions; shortcut.py)
    batching: str = "auto"         # "concat": S = B0 u B1; "split": thirds of one batch; "auto"
    faithful: bool = False         # True: the authors' algorithm exactly, batch drawing included

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}: use 'sgd' or 'adam'")
        if self.batching not in ("auto", "concat", "split"):
            raise ValueError(f"unknown batching {self.batching!r}: use 'auto', 'concat' or 'split'")
        positive = dict(lr=self.lr, scale_lr=self.scale_lr, gamma=self.gamma)
        for name, value in positive.items():
            ok = isinstance(value, (int, float)) and value > 0 and (
                math.isfinite(value) or (name == "gamma" and value == math.inf))
            if not ok:
                what = "a positive number or inf" if name == "gamma" else "a positive finite number"
                raise ValueError(f"{name} must be {what}, got {value!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not (0 <= self.min_scale < math.inf):
            raise ValueError(f"min_scale must be >= 0, got {self.min_scale!r}")
        for name in ("max_scale", "norm_max_scale"):
            cap = getattr(self, name)
            if cap is not None and not cap >= self.min_scale:
                raise ValueError(f"{name}={cap!r} is below min_scale={self.min_scale!r}")
        if self.clip is not None and not self.clip >= 0:
            raise ValueError(f"clip must be >= 0 or None, got {self.clip!r}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas!r}")


#: The authors' IWSLT'14 Post-LN Transformer recipe: `gradinit(model, data, **TRANSFORMER_RECIPE)`.
TRANSFORMER_RECIPE: dict[str, Any] = dict(
    target="adam", lr=1e-3, gamma=1000.0, scale_lr=2.5e-3, betas=(0.9, 0.98),
    norm_max_scale=100.0, clip=None, steps=780,
)
