"""Plots of reports (matplotlib is an optional extra: `pip install initlab[lab]`)."""
from __future__ import annotations

import os
from typing import Any


def pyplot():
    """matplotlib.pyplot on the Agg backend, or an ImportError naming the extra."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'initlab[lab]'") from e
    return plt


def plot_report(method: str, scales: dict[str, float], history: list[dict[str, Any]],
                path: str | os.PathLike | None = None):
    """Scales per tensor (left) and the search's losses per iteration (right)."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    names, vals = list(scales), list(scales.values())
    ax1.bar(range(len(vals)), vals, color=["C1" if "bias" in n else "C0" for n in names])
    ax1.set_yscale("log")
    ax1.set_xlabel("tensor (model order; orange = bias)")
    ax1.set_ylabel("scale")
    ax1.set_title(f"{method} scales")
    steps = [h["iteration"] for h in history if h.get("loss") is not None]
    if steps:
        ax2.plot(steps, [h["loss"] for h in history if h.get("loss") is not None],
                 label="loss before the step")
        after = [(h["iteration"], h["loss_after"]) for h in history
                 if h.get("loss_after") is not None]
        if after:
            ax2.plot(*zip(*after), label="loss after the step")
        ax2.set_xlabel("iteration")
        ax2.legend()
    ax2.set_title("search")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
