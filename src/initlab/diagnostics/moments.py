"""Measured against predicted signal statistics per layer (for AutoInit's report).

    report = initlab.autoinit(model, x)
    measured = initlab.diagnostics.layer_moments(model, x)      # forward hooks, one batch
    initlab.diagnostics.plot_autoinit(report, measured, "variance.png")

matplotlib is an optional extra (`pip install initlab[lab]`).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from ..core.modes import restore_buffers, snapshot_buffers

if TYPE_CHECKING:
    from ..core.report import InitReport

WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)


def layer_moments(model: nn.Module, example_input: Any) -> dict[str, tuple[float, float]]:
    """(mean, variance) of every Linear/Conv/Embedding output over all its elements, on one
    forward of `example_input` (a tensor or a tuple of inputs), in the model's current mode. A
    layer called several times is measured at its first call. Buffers (batch-norm running
    statistics) are restored afterwards."""
    out: dict[str, tuple[float, float]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if name not in out:
                v = output.detach().double()
                out[name] = (float(v.mean()), float(v.var(unbiased=False)))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, WEIGHTED)]
    saved = snapshot_buffers(model)
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        restore_buffers(model, saved)
    return out


def plot_autoinit(report: "InitReport", measured: dict[str, tuple[float, float]],
                  path: Optional[str | os.PathLike] = None):
    """Predicted (report.history) and measured output variance per initialized layer."""
    from ..core.plotting import pyplot
    plt = pyplot()
    rows = [h for h in report.history if h.get("output_var") is not None]
    names = [h["layer"] for h in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(rows) + 2), 4))
    ax.plot(range(len(rows)), [h["output_var"] for h in rows], "o-", label="predicted")
    ax.plot(range(len(rows)), [measured.get(n, (None, float("nan")))[1] for n in names], "x-",
            label="measured")
    target = report.settings.get("signal_variance", 1.0)
    ax.axhline(target, color="gray", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("output variance")
    ax.set_title(f"{report.method}: predicted vs measured variance per layer")
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
