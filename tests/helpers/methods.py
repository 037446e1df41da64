"""Shared pieces of the method tests: tiny models, model snapshots, data that fails on purpose."""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

import initlab


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a method must leave as it was on failure: tensors bitwise, modes, flags."""
    return dict(
        params={n: p.detach().clone() for n, p in model.named_parameters()},
        buffers={n: b.detach().clone() for n, b in model.named_buffers()},
        training={n: m.training for n, m in model.named_modules()},
        tracking={n: m.track_running_stats for n, m in model.named_modules()
                  if hasattr(m, "track_running_stats")},
    )


def assert_same(model: nn.Module, before: dict[str, Any], params: bool = True) -> None:
    now = snapshot(model)
    keys = ("params", "buffers") if params else ("buffers",)
    for key in keys:
        assert now[key].keys() == before[key].keys()
        for name, t in before[key].items():
            assert torch.equal(now[key][name], t), f"{key[:-1]} {name} changed"
            assert now[key][name].dtype == t.dtype
    assert now["training"] == before["training"]
    assert now["tracking"] == before["tracking"]


def mlp(widths=(6, 16, 16, 3), act=nn.Tanh, dtype=torch.float32) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(dtype)


def bn_dropout_mlp() -> nn.Module:
    """Train-mode model with batch norm and dropout: the search must leave both as they were."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                      nn.Linear(16, 3))
    m.train()
    m(torch.randn(8, 6))  # non-trivial running statistics
    return m


def batches(n: int = 4, size: int = 32, features: int = 6, classes: int = 3, seed: int = 0,
            dtype=torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, features, generator=g, dtype=dtype),
             torch.randint(0, classes, (size,), generator=g)) for _ in range(n)]


class RaisesAfter:
    """An iterable that yields `n` good batches, then raises."""

    def __init__(self, good: list, n: int):
        self.good, self.n = good, n

    def __iter__(self) -> Iterator:
        for i in range(self.n):
            yield self.good[i % len(self.good)]
        raise RuntimeError("the data loader broke")


def with_nan(good: list, at: int) -> list:
    bad = [(x.clone(), y) for x, y in good]
    bad[at][0][0, 0] = float("nan")
    return bad


def inf_loss(model, batch) -> torch.Tensor:
    x, y = batch
    return model(x).sum() * float("inf")


FAILURE_CASES = ["loader raises", "nan batch", "inf loss", "inf activation"]


def failure_case(case: str, good: list, raise_after: int):
    """(data, loss_fn, expected error type) for one of `FAILURE_CASES`."""
    if case == "loader raises":
        return RaisesAfter(good, raise_after), None, RuntimeError
    if case == "nan batch":
        return with_nan(good, 2), None, FloatingPointError
    if case == "inf loss":
        return good, inf_loss, FloatingPointError
    return [(x * 1e38, y) for x, y in good], None, FloatingPointError  # inf activation


class Block(nn.Module):
    """x + scale * branch(x), branch = m Linear layers with ReLU between, marked for Fixup."""

    def __init__(self, width: int, m: int, with_scale: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(m):
            layers.append(nn.Linear(width, width))
            if i < m - 1:
                layers.append(nn.ReLU())
        self.branch = nn.Sequential(*layers)
        self.scale = nn.Parameter(torch.full((), 0.5)) if with_scale else None
        initlab.mark_residual_branch(self.branch, scale=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return x + (out if self.scale is None else self.scale * out)


class ResMLP(nn.Module):
    def __init__(self, n_blocks: int = 4, m: int = 2, width: int = 64, with_scale: bool = True):
        super().__init__()
        self.stem = nn.Linear(6, width)
        self.blocks = nn.Sequential(*[Block(width, m, with_scale) for _ in range(n_blocks)])
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
