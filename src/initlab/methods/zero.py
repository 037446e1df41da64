"""ZerO: a deterministic initialization with only zeros, ones and Hadamard entries.

Zhao, Schäfer & Anandkumar, "ZerO Initialization: Initializing Neural Networks with only Zeros
and Ones", 2021 (arXiv 2110.12661), Algorithm 1. For a weight of shape (out, in):

    out <= in:  W = I                         (partial identity, I[i, i] = 1)
    out >  in:  W = I* (H_p / sqrt(p)) I*     p = 2^ceil(log2 out), H_p Sylvester-Hadamard

i.e. the top-left (out, in) block of the normalized Hadamard matrix. A convolution gets that
matrix at its kernel center (index k // 2 along each spatial dim) and zeros elsewhere; a grouped
convolution gets it per group, so a depthwise one is the identity. Biases are zeroed.

Where initlab departs from the authors' code: normalization by 1/sqrt(p) as in their code (some
renderings of Algorithm 1 write 2^(-(m-1)/2)); grouped convolutions handled per group. The
authors' ResNet recipe (zeroed last layer per residual block) is not part of this rule: combine
it with a marked-branch rule if wanted.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.finish import unchanged_on_error
from ..core.rules import Staged, weighted_layers
from ..registry import register

log = logging.getLogger(__name__)


@dataclass
class ZerOConfig:
    zero_bias: bool = True  # zero the biases of the layers it initializes


def sylvester_hadamard(p: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """H_1 = [1], H_2k = [[H_k, H_k], [H_k, -H_k]]: the p x p Sylvester-Hadamard matrix."""
    if p < 1 or p & (p - 1):
        raise ValueError(f"a Sylvester-Hadamard matrix needs a power of 2, got {p}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < p:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def zero_matrix(n_out: int, n_in: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ZerO's (n_out, n_in) matrix: partial identity, or a normalized Hadamard block."""
    if n_out <= n_in:
        return torch.eye(n_out, n_in, dtype=dtype)
    p = 2 ** math.ceil(math.log2(n_out))
    return sylvester_hadamard(p, dtype)[:n_out, :n_in] / math.sqrt(p)


def zero_weight(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """The ZerO value of a Linear (out, in) or Conv (out, in / groups, *kernel) weight."""
    n_out, n_in = weight.shape[0], weight.shape[1]
    if n_out % groups:
        raise ValueError(f"{n_out} output channels do not split into {groups} groups")
    per_group = n_out // groups
    block = zero_matrix(per_group, n_in)                      # (out / groups, in / groups)
    full = torch.zeros(weight.shape, dtype=torch.float64)
    center = tuple(k // 2 for k in weight.shape[2:])
    for g in range(groups):
        full[(slice(g * per_group, (g + 1) * per_group), slice(None)) + center] = block
    return full.to(device=weight.device, dtype=weight.dtype)


@register("zero", config=ZerOConfig,
          description="deterministic identity / Hadamard weights, no randomness",
          paper="Zhao, Schäfer & Anandkumar 2021, arXiv 2110.12661")
def zero(model: nn.Module, **settings: Any) -> None:
    """Set every Linear/Conv1d/2d/3d weight of `model` to ZerO's deterministic value."""
    cfg = ZerOConfig(**settings)
    layers = weighted_layers(model)
    if not layers:
        raise ValueError("ZerO initializes Linear/Conv1d/2d/3d layers and the model has none")
    plan = Staged()
    with unchanged_on_error("zero"):
        for _name, m in layers:
            plan.set(m.weight, zero_weight(m.weight, getattr(m, "groups", 1)))
            if cfg.zero_bias:
                plan.zero(m.bias)
        plan.commit("zero")
    log.info("zero: %d layers initialized", len(layers))
    return None
