"""Before and after: diagnoses of one architecture side by side, and a method tried on a copy.

    c = initlab.diagnostics.compare(before, after)            # two Diagnosis of one architecture
    c = initlab.diagnostics.compare_method(model, data, "gradinit", lr=0.1)   # model untouched
    print(c.summary()); c.plot("before-after.png")
"""
from __future__ import annotations

import copy
import inspect
import math
import os
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from torch import nn

from ..core.rng import kept_rng
from ..registry import initialize, method_info
from .api import diagnose
from .result import Diagnosis, fmt, text_table


@dataclass
class Comparison:
    diagnoses: list[Diagnosis]

    def summary(self) -> str:
        """Key figures per diagnosis side by side, then each one's verdict."""
        return compare_text(self.diagnoses)

    def plot(self, path: Optional[str | os.PathLike] = None):
        from .plot import plot_diagnoses
        return plot_diagnoses(self.diagnoses, path)


def compare(before: Diagnosis, after: Diagnosis, *more: Diagnosis) -> Comparison:
    """Diagnoses of the same architecture (e.g. before and after a method), in that order."""
    found = [before, after, *more]
    shapes = [[(t.name, t.shape) for t in d.tensors] for d in found]
    for d, s in zip(found[1:], shapes[1:]):
        if s != shapes[0]:
            raise ValueError(f"diagnoses {found[0].label!r} and {d.label!r} are of different "
                             "architectures (their parameter tensors differ); compare one model "
                             "before and after a method")
    return Comparison(found)


def compare_method(model: nn.Module, data: Iterable, method: str, *, lr: Optional[float] = None,
                   method_settings: Optional[dict[str, dict[str, Any]]] = None,
                   **diagnose_settings: Any) -> Comparison:
    """Diagnose `model`, apply `method` (a registry name, or "a+b": a, then b) to a deep copy,
    and diagnose the copy. The model and the random generators are left as they were. Methods
    that learn from data get `data` (and diagnose's `loss_fn`, if given); `method_settings`
    maps a method's name to its keyword settings, e.g. {"gradinit": {"steps": 50}}."""
    before = diagnose(model, data, lr=lr, label="before", **diagnose_settings)
    trial = copy.deepcopy(model)
    loss_fn = diagnose_settings.get("loss_fn")
    with kept_rng(next(model.parameters()).device):
        for name in method.split("+"):
            settings = dict((method_settings or {}).get(name, {}))
            info = method_info(name)
            if info.needs_data:
                if loss_fn is not None:
                    settings.setdefault("loss_fn", loss_fn)
                initialize(trial, name, data=data, **settings)
            elif "example_input" in inspect.signature(info.fn).parameters:
                initialize(trial, name, data=data, **settings)
            else:
                initialize(trial, name, **settings)
    after = diagnose(trial, data, lr=lr, label=method, **diagnose_settings)
    return compare(before, after)


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def compare_text(diagnoses: list[Diagnosis]) -> str:
    def figures(d: Diagnosis) -> dict[str, str]:
        weighted = [x for x in d.layers if x.weighted]
        gains = [x.gain for x in weighted if x.gain is not None and not x.in_branch]
        ratios = [t.ratio for t in d.tensors if t.is_matrix and t.ratio is not None]
        rows = {
            "held-out loss before": f"{d.loss_before:.4g}",
            "after one step": f"{d.loss_after:.4g}",
            "change": f"{100 * d.loss_change / abs(d.loss_before):+.3g} %" if d.loss_before else "-",
            "last weighted layer's spread": fmt(weighted[-1].spread) if weighted else "-",
            "gain per weighted layer (geo. mean)": fmt(_geomean(gains)),
            "gain, lowest / highest": f"{fmt(min(gains, default=None))} / "
                                      f"{fmt(max(gains, default=None))}",
            "update/weight, median matrix": fmt(statistics.median(ratios) if ratios else None),
            "update/weight, lowest / highest": f"{fmt(min(ratios, default=None))} / "
                                               f"{fmt(max(ratios, default=None))}",
        }
        if d.branches:
            rows["branch/skip, highest"] = fmt(max(b.ratio for b in d.branches))
        if d.attention:
            rows["attention entropy, lowest head"] = fmt(min(
                (v for a in d.attention for v in a.normalized), default=None))
        if d.ranks:
            rows["stable rank, lowest layer"] = fmt(min(r.stable_rank for r in d.ranks))
        rows["findings"] = str(len(d.findings))
        return rows

    table = [figures(d) for d in diagnoses]
    keys = [k for k in dict.fromkeys(k for t in table for k in t)  # rows measured somewhere
            if any(t.get(k, "-") not in ("-", "- / -") for t in table)]
    lines = text_table([""] + [d.label for d in diagnoses],
                   [[k] + [t.get(k, "-") for t in table] for k in keys], len(keys) + 1)
    for d in diagnoses:
        lines += ["", f"{d.label}:", d.verdict if d.findings else f"  {d.verdict}"]
    return "\n".join(lines)
