"""Plots of reports, one per report type (matplotlib is an optional extra: `pip install
initlab[lab]`). Each returns the figure; with `path` it is also saved and closed."""
from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

Report = Any  # an InitReport of the kind each function names (report.py imports this module)

MAX_LABELS = 80  # tensor / layer names written on an axis; beyond, every k-th one


def pyplot():
    """matplotlib.pyplot on the Agg backend, or an ImportError naming the extra."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'initlab[lab]'") from e
    return plt


def _done(fig: Any, path: Optional[str | os.PathLike]):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        pyplot().close(fig)
    return fig


def _label(ax: Any, names: Sequence[str], axis: str = "y") -> None:
    """Names as tick labels (every k-th of many)."""
    step = max(1, math.ceil(len(names) / MAX_LABELS))
    ticks = list(range(0, len(names), step))
    size = 8 if len(ticks) <= 30 else 6
    if axis == "y":
        ax.set_yticks(ticks)
        ax.set_yticklabels([names[i] for i in ticks], fontsize=size)
        ax.invert_yaxis()  # model order, top to bottom
    else:
        ax.set_xticks(ticks)
        ax.set_xticklabels([names[i] for i in ticks], fontsize=size, rotation=90)


def _rows(n: int) -> float:
    return min(40.0, max(4.0, 0.2 * n + 1.5))


def plot_scales(report: Report, path: Optional[str | os.PathLike] = None):
    """Left: each tensor's scale by name (orange: biases), on a symmetric-log axis that shows
    zeros (marked x). Right: the search (GradInit: loss before and after each step, constraint
    steps marked; MetaInit: the gradient quotient and the loss)."""
    plt = pyplot()
    names, vals = list(report.scales), list(report.scales.values())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, _rows(len(names))),
                                   gridspec_kw={"width_ratios": [1, 1.2]})
    ax1.barh(range(len(vals)), vals, color=["C1" if "bias" in n else "C0" for n in names])
    zeros = [i for i, v in enumerate(vals) if v == 0]
    if zeros:
        ax1.plot([0] * len(zeros), zeros, "x", color="C3", label="scale 0")
        ax1.legend(fontsize=8)
    positive = [abs(v) for v in vals if v != 0]
    ax1.set_xscale("symlog", linthresh=min(positive, default=1.0) / 2)
    ax1.axvline(1.0, color="gray", lw=0.8, ls="--")
    _label(ax1, names)
    ax1.set_xlabel("scale (orange: bias; dashed: 1)")
    ax1.set_title(f"{report.method}: {len(vals)} tensors scaled")
    h = report.history
    if any(s.get("gq") is not None for s in h):
        steps = [s["iteration"] for s in h]
        ax2.plot(steps, [s["gq"] for s in h], color="C0", label="gradient quotient")
        ax2.set_yscale("log")
        ax2.set_ylabel("gradient quotient")
        twin = ax2.twinx()
        twin.plot(steps, [s["loss"] for s in h], color="C1", lw=0.8, label="loss")
        twin.set_ylabel("loss")
        ax2.legend(loc="upper right", fontsize=8)
    elif any(s.get("loss") is not None for s in h):
        rows = [s for s in h if s.get("loss") is not None]
        ax2.plot([s["iteration"] for s in rows], [s["loss"] for s in rows],
                 label="loss before the step")
        after = [(s["iteration"], s["loss_after"]) for s in rows if s.get("loss_after") is not None]
        if after:
            ax2.plot(*zip(*after), label="loss after the step")
        cons = [s for s in rows if s.get("branch") == "constraint"]
        if cons:
            ax2.plot([s["iteration"] for s in cons], [s["loss"] for s in cons], "|", color="C3",
                     label="constraint step")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("iteration")
    ax2.set_title("search")
    return _done(fig, path)


def plot_layers(report: Report, path: Optional[str | os.PathLike] = None):
    """Output std per layer (forward order): after the pre-init and on the finished model."""
    plt = pyplot()
    h = report.history
    names = [s["layer"] for s in h]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(h) + 2), 4.5))
    x = range(len(h))
    ax.plot(x, [s["std_first"] for s in h], "o-", label="before (after the pre-init)")
    ax.plot(x, [s.get("std_after", math.nan) for s in h], "s-", label="after")
    ax.axhline(report.settings.get("target_std", 1.0), color="gray", lw=0.8, ls="--",
               label="target")
    ax.set_yscale("log")
    _label(ax, names, axis="x")
    ax.set_ylabel("output std")
    ax.set_title(f"{report.method}: output std per layer")
    ax.legend(fontsize=8)
    return _done(fig, path)


def plot_variances(report: Report, path: Optional[str | os.PathLike] = None):
    """Predicted output variance per layer against the target (left); weight std (right)."""
    plt = pyplot()
    h = report.history
    names = [s["layer"] for s in h]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(10.0, 0.4 * len(h) + 4), 4.5))
    x = range(len(h))
    ax1.plot(x, [math.nan if s.get("output_var") is None else s["output_var"] for s in h], "o-",
             label="predicted")
    ax1.axhline(report.target_variance, color="gray", lw=0.8, ls="--", label="target")
    ax1.set_yscale("log")
    ax1.set_ylabel("output variance")
    ax1.legend(fontsize=8)
    ax1.set_title(f"{report.method}: predicted output variance")
    ax2.bar(x, [s["weight_std"] for s in h])
    ax2.set_yscale("log")
    ax2.set_ylabel("weight std drawn")
    for ax in (ax1, ax2):
        _label(ax, names, axis="x")
    return _done(fig, path)


def plot_draws(report: Report, path: Optional[str | os.PathLike] = None):
    """Weight std drawn per layer (bars), in-degree (points, right axis)."""
    plt = pyplot()
    h = report.history
    names = [s["layer"] for s in h]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(h) + 2), 4.5))
    x = range(len(h))
    ax.bar(x, [s["weight_std"] for s in h], label="weight std")
    ax.set_yscale("log")
    ax.set_ylabel("weight std drawn")
    twin = ax.twinx()
    twin.plot(x, [s.get("in_degree", 1) for s in h], "o", color="C1", label="in-degree")
    twin.set_ylabel("in-degree (tensors summed)")
    _label(ax, names, axis="x")
    ax.set_title(f"{report.method}: std per layer")
    return _done(fig, path)


def plot_residuals(report: Report, path: Optional[str | os.PathLike] = None):
    """The multiplier per residual sum (bars, coloured by stack)."""
    plt = pyplot()
    h = report.history
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(h) + 2), 4.5))
    stacks = sorted({s.get("stack", "") for s in h})
    ax.bar(range(len(h)), [s["multiplier"] for s in h],
           color=[f"C{stacks.index(s.get('stack', ''))}" for s in h])
    ax.set_ylabel("residual multiplier")
    _label(ax, [s["sum"] for s in h], axis="x")
    ax.set_title(f"{report.method}: multiplier per residual sum")
    return _done(fig, path)
