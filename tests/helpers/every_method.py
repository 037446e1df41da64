"""Every registered method on a tiny model it accepts, and how it is called: for the property
tests that hold for all of them (restore on failure, replay of saved reports)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

import initlab
from helpers.methods import ResMLP, batches, mlp
from initlab.lab.translation.model import TransformerConfig, TranslationTransformer


class PostLN(nn.Module):
    """x_i = LN(omega_i x_{i-1} + tanh(W_i x_{i-1})): Admin's residual sums on a 6-feature input."""

    def __init__(self, n: int = 2, d: int = 8):
        super().__init__()
        self.stem = nn.Linear(6, d)
        self.f = nn.ModuleList(nn.Linear(d, d) for _ in range(n))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n))
        self.sums = nn.ModuleList(initlab.ResidualSum(branch=f) for f in self.f)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for f, norm, s in zip(self.f, self.norms, self.sums):
            x = norm(s(x, torch.tanh(f(x))))
        return self.head(x)


def bn_mlp() -> nn.Module:
    m = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Dropout(0.2),
                      nn.Linear(12, 3))
    m.train()
    m(torch.randn(8, 6))  # running statistics that must survive
    return m


def transformer() -> nn.Module:
    return nn.Transformer(8, 2, 1, 1, 16, dropout=0.0)


def translation() -> nn.Module:
    return TranslationTransformer(TransformerConfig(20, d_model=8, nhead=2, ffn=16,
                                                    encoder_layers=1, decoder_layers=1))


@dataclass
class Case:
    build: Callable[[], nn.Module]    # called under a fixed seed
    settings: dict[str, Any] = field(default_factory=dict)
    data: bool = False                # takes data= and loss_fn=
    example: bool = False             # takes example_input=


CASES: dict[str, Case] = {
    "gradinit": Case(bn_mlp, dict(steps=3, gamma=0.5), data=True),
    "gradinit-authors": Case(bn_mlp, dict(steps=3, gamma=0.5), data=True),
    "gradinit-warmstart": Case(bn_mlp, data=True),
    "metainit": Case(bn_mlp, dict(steps=3), data=True),
    "lsuv": Case(bn_mlp, dict(tol=1e-3, max_tries=3), data=True),
    "admin": Case(PostLN, data=True),
    "fixup": Case(lambda: ResMLP(n_blocks=2, width=8)),
    "skipinit": Case(lambda: ResMLP(n_blocks=2, width=8)),
    "zero": Case(mlp),
    "tfixup": Case(transformer),
    "emergence": Case(mlp),
    "kaiming": Case(mlp),
    "xavier": Case(mlp),
    "orthogonal": Case(mlp),
    "autoinit": Case(mlp, example=True),
    "archscale": Case(mlp),
    "torch-default": Case(bn_mlp),
    "deepnet": Case(translation),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return CASES[name].build()


def run(name: str, model: nn.Module, data: Optional[Any] = None,
        loss_fn: Optional[Callable] = None, **settings: Any) -> Any:
    """`initlab.initialize(model, name, ...)` with the case's settings and what it takes."""
    case = CASES[name]
    kwargs = dict(case.settings, **settings)
    if case.data:
        kwargs.update(data=batches(4, size=8) if data is None else data, loss_fn=loss_fn)
    if case.example:
        kwargs["example_input"] = batches(1, size=16)[0][0]
    return initlab.initialize(model, name, **kwargs)
