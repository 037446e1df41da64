"""What a method returns: the scales it chose, how it got there, and how to replay it.

    report = initlab.gradinit(model, data)
    report.save("init.pt")                    # plain Python data, loads with weights_only=True
    initlab.apply(fresh_model, "init.pt")     # multiply a fresh model's tensors by the scales
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .params import trainable_params

_APPLIED = "_initlab_applied"  # set on a model once scales are written, to refuse doing it twice


@dataclass
class InitReport:
    method: str
    scales: dict[str, float]                 # name -> scale, for every tensor that had one
    shapes: dict[str, list[int]]             # name -> shape, every trainable tensor (architecture)
    history: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    outcome: dict[str, Any] = field(default_factory=dict)  # how the method ended (plain values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        torch.save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InitReport":
        return cls(**torch.load(path, weights_only=True))

    def plot(self, path: str | os.PathLike | None = None):
        """Scales per tensor (left) and the search's losses per iteration (right)."""
        from .plotting import plot_report
        return plot_report(self.method, self.scales, self.history, path)

    def summary(self) -> str:
        vals = list(self.scales.values())
        branches = [h.get("branch") for h in self.history]
        lines = [f"{self.method}: {len(vals)} tensors scaled"]
        if vals:
            lines.append(f"  scales min {min(vals):.3g}  median {sorted(vals)[len(vals) // 2]:.3g}"
                         f"  max {max(vals):.3g}")
        if branches:
            lines.append(f"  {len(branches)} iterations: {branches.count('objective')} objective, "
                         f"{branches.count('constraint')} constraint")
        lines += [f"  {k}: {v}" for k, v in self.outcome.items()]
        return "\n".join(lines)


def mark_applied(model: nn.Module, method: str) -> None:
    object.__setattr__(model, _APPLIED, method)


def apply(model: nn.Module, report: InitReport | str | os.PathLike, *, force: bool = False) -> nn.Module:
    """Replay saved scales on a model of the same architecture: each tensor `*= scale`.

    Refuses a model whose trainable tensors differ in name or shape (naming the first mismatch),
    and a model that already had scales written (pass `force=True` to scale again).
    """
    if not isinstance(report, InitReport):
        report = InitReport.load(report)
    if getattr(model, _APPLIED, None) and not force:
        raise RuntimeError(
            f"this model already had {getattr(model, _APPLIED)} scales written; applying again "
            "would scale twice. Build a fresh model, or pass force=True."
        )
    specs = {s.name: s for s in trainable_params(model)}
    for name, shape in report.shapes.items():
        if name not in specs:
            raise ValueError(f"the model has no trainable tensor '{name}' that the report scales "
                             "(is it the same architecture?)")
        if list(specs[name].shape) != list(shape):
            raise ValueError(f"tensor '{name}' has shape {list(specs[name].shape)} in the model but "
                             f"{list(shape)} in the report")
    extra = [n for n in specs if n not in report.shapes]
    if extra:
        raise ValueError(f"the model has a trainable tensor '{extra[0]}' the report does not know "
                         "(is it the same architecture?)")
    with torch.no_grad():
        for name, scale in report.scales.items():
            specs[name].param.mul_(scale)
    mark_applied(model, report.method)
    return model
