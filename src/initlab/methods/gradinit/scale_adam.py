"""Per-tensor scales and the optimizer that learns them.

`ScaleAdam` is the GradInit authors' "RescaleAdam" written for a vector of scalars: Adam on each
scale alpha_i, with the gradient clipped to [-clip, clip] before the moment updates, first moments
kept apart for constraint and objective steps, one second moment shared between them and
bias-corrected with the total step count, then alpha_i <- clamp(alpha_i - step, floor_i, cap_i).
Everything is float64 on the CPU, as the authors' Python floats are.

Two quirks of the authors' code are kept so results match: a tensor whose scale reaches 0 (only
possible with a floor of 0, i.e. biases) is never updated again, and a tensor that received no
gradient in a step (unused by the loss) has none of its state advanced.
"""
from __future__ import annotations

import math

import torch


class ScaleAdam:
    def __init__(
        self,
        n: int,
        lr: float,
        floors: torch.Tensor,
        caps: torch.Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        clip: float | None = 1.0,
    ):
        f64 = dict(dtype=torch.float64)
        self.alpha = torch.ones(n, **f64)
        self.floors, self.caps = floors.to(**f64), caps.to(**f64)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.clip = clip if clip and clip > 0 else None
        self.m_obj = torch.zeros(n, **f64)
        self.m_con = torch.zeros(n, **f64)
        self.v = torch.zeros(n, **f64)
        self.steps_obj = torch.zeros(n, **f64)
        self.steps_con = torch.zeros(n, **f64)

    def step(self, grad: torch.Tensor, active: torch.Tensor, constraint: bool) -> None:
        """One update of the scales where `active` (bool, n) with `grad` (float64, n)."""
        active = active.cpu() & (self.alpha != 0)
        if not bool(active.any()):
            return
        g = grad.detach().to("cpu", torch.float64)  # scales live on the CPU, whatever the model
        if self.clip is not None:
            g = g.clamp(-self.clip, self.clip)
        b1, b2 = self.betas
        m, steps = (self.m_con, self.steps_con) if constraint else (self.m_obj, self.steps_obj)
        steps[active] += 1
        m[active] = m[active] * b1 + g[active] * (1 - b1)
        self.v[active] = self.v[active] * b2 + g[active] * g[active] * (1 - b2)
        bc1 = 1 - b1 ** steps[active]
        bc2 = 1 - b2 ** (self.steps_con[active] + self.steps_obj[active])
        denom = (self.v[active] / bc2).sqrt() + self.eps
        new = self.alpha[active] - (self.lr / bc1) * m[active] / denom
        self.alpha[active] = torch.minimum(torch.maximum(new, self.floors[active]), self.caps[active])

    def state_dict(self) -> dict:
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}


def caps_and_floors(
    is_bias: list[bool], is_norm_weight: list[bool], min_scale: float,
    max_scale: float | None, norm_max_scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Floors: `min_scale` for weights, 0 for biases. Caps: `max_scale` everywhere,
    `norm_max_scale` on normalization-layer weights (the authors' LayerNorm cap)."""
    floors = torch.tensor([0.0 if b else min_scale for b in is_bias], dtype=torch.float64)
    cap = math.inf if max_scale is None else max_scale
    norm_cap = math.inf if norm_max_scale is None else norm_max_scale
    caps = torch.tensor([min(cap, norm_cap) if nw else cap for nw in is_norm_weight],
                        dtype=torch.float64)
    return floors, caps


class LogScaleAdam:
    """Adam on log-scales, the default search's optimizer: beta_i = log alpha_i.

    A step moves each scale by a factor (about exp(+-lr) at most), so a scale that must grow by
    2.5x gets there in ~lr^-1 steps whatever its size, where the authors' additive step needs
    (2.5 - 1) / lr. The gradient is d/dbeta = alpha * d/dalpha. As in `ScaleAdam`, first moments
    are kept apart for constraint and objective steps and one second moment is shared; no
    clipping (Adam's normalization bounds the step). `lr` may be changed between steps (the
    stopping rule halves it on plateaus). Floors and caps clamp alpha.
    """

    def __init__(self, alpha: torch.Tensor, lr: float, floors: torch.Tensor, caps: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        f64 = dict(dtype=torch.float64)
        self.lo, self.hi = floors.to(**f64).log(), caps.to(**f64).log()  # log 0 = -inf: no floor
        self.beta = alpha.to(**f64).log().clamp(self.lo, self.hi)
        self.lr, self.betas, self.eps = lr, betas, eps
        n = len(alpha)
        self.m_obj, self.m_con, self.v = (torch.zeros(n, **f64) for _ in range(3))
        self.steps_obj, self.steps_con = torch.zeros(n, **f64), torch.zeros(n, **f64)

    @property
    def alpha(self) -> torch.Tensor:
        return self.beta.exp()

    def step(self, grad: torch.Tensor, active: torch.Tensor, constraint: bool) -> None:
        """One update where `active` (bool, n) with `grad` = d/dalpha (float64, n)."""
        active = active.cpu()
        if not bool(active.any()):
            return
        g = grad.detach().to("cpu", torch.float64) * self.alpha  # d/dbeta
        b1, b2 = self.betas
        m, steps = (self.m_con, self.steps_con) if constraint else (self.m_obj, self.steps_obj)
        steps[active] += 1
        m[active] = m[active] * b1 + g[active] * (1 - b1)
        self.v[active] = self.v[active] * b2 + g[active] * g[active] * (1 - b2)
        bc1 = 1 - b1 ** steps[active]
        bc2 = 1 - b2 ** (self.steps_con[active] + self.steps_obj[active])
        denom = (self.v[active] / bc2).sqrt() + self.eps
        new = self.beta[active] - (self.lr / bc1) * m[active] / denom
        self.beta[active] = torch.minimum(torch.maximum(new, self.lo[active]), self.hi[active])
