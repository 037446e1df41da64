"""The one-page figure of a diagnosis, and the same page for several (before/after a method).

Row 1: each layer's output RMS (solid; dots: weighted layers) and spread (dashed) by depth, and
the held-out loss change of one optimizer step. Row 2: per parameter tensor, the gradient RMS
and the update/weight ratio. Row 3, where measured: residual branch/skip ratios, attention
entropy per head, token rank per attention layer. Under a single diagnosis, its verdict.
"""
from __future__ import annotations

import os
import textwrap
from typing import Any, Optional

from ..core.plotting import pyplot

# The figures read Diagnosis objects (result.py), which import this module for their `plot`;
# they are typed Any here so that the two modules do not import each other.


def plot_diagnoses(diagnoses: list[Any], path: Optional[str | os.PathLike] = None):
    plt = pyplot()
    extra = any(d.branches or d.attention or d.ranks for d in diagnoses)
    verdict = ""
    if len(diagnoses) == 1:
        verdict = "\n".join(textwrap.fill(line, 160, subsequent_indent="  ")
                            for line in ("verdict:\n" + diagnoses[0].verdict).splitlines())
    rows = 3 if extra else 2
    text_rows = verdict.count("\n") + 1 if verdict else 0
    fig = plt.figure(figsize=(14, 3.6 * rows + 0.22 * text_rows))
    grid = fig.add_gridspec(rows + (1 if verdict else 0), 6,
                            height_ratios=[3.6] * rows + ([0.22 * text_rows] if verdict else []))
    colors = [f"C{i}" for i in range(len(diagnoses))]
    _forward(fig.add_subplot(grid[0, :3]), diagnoses, colors)
    _loss(fig.add_subplot(grid[0, 3:]), diagnoses, colors)
    for col, (key, title) in enumerate((("grad_rms", "gradient RMS by tensor"),
                                        ("ratio", "update / weight RMS of one step"))):
        _tensors(fig.add_subplot(grid[1, 3 * col:3 * col + 3]), diagnoses, colors, key, title)
    if extra:
        _branches(fig.add_subplot(grid[2, :2]), diagnoses, colors)
        _entropy(fig.add_subplot(grid[2, 2:4]), diagnoses, colors)
        _ranks(fig.add_subplot(grid[2, 4:]), diagnoses, colors)
    if verdict:
        ax = fig.add_subplot(grid[rows, :])
        ax.axis("off")
        ax.text(0, 1, verdict, va="top", fontsize=8.5, family="monospace")
    fig.suptitle(" vs ".join(d.label for d in diagnoses))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def _forward(ax, diagnoses: list[Any], colors: list[str]) -> None:
    for d, c in zip(diagnoses, colors):
        ax.plot(range(len(d.layers)), [x.rms for x in d.layers], "-", color=c, lw=0.8)
        ax.plot(range(len(d.layers)), [x.spread for x in d.layers], "--", color=c, lw=0.8)
        weighted = [(i, x.rms) for i, x in enumerate(d.layers) if x.weighted]
        if weighted:
            ax.plot(*zip(*weighted), "o", color=c, ms=3, label=d.label)
    ax.set_yscale("log")
    ax.set(title="forward: output RMS (solid) and spread over the batch (dashed)",
           xlabel="layer call, forward order (dots: weighted layers)", ylabel="RMS")
    ax.legend(fontsize=8)


def _loss(ax, diagnoses: list[Any], colors: list[str]) -> None:
    for k, (d, c) in enumerate(zip(diagnoses, colors)):
        change = 100 * d.loss_change / abs(d.loss_before) if d.loss_before else float("nan")
        ax.bar(k, change, color=c)
        ax.annotate(f"{d.loss_before:.4g} → {d.loss_after:.4g}\n({change:+.3g} %)", (k, change),
                    ha="center", va="top" if change < 0 else "bottom", fontsize=8)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xticks(range(len(diagnoses)), [d.label for d in diagnoses])
    s = diagnoses[0].settings
    ax.set(title=f"held-out loss change after one {s.get('optimizer')} step at lr {s.get('lr')}",
           ylabel="% of the loss before")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo))


def _tensors(ax, diagnoses: list[Any], colors: list[str], key: str, title: str) -> None:
    for d, c in zip(diagnoses, colors):
        pts = [(i, getattr(t, key), t.is_matrix) for i, t in enumerate(d.tensors)
               if getattr(t, key) is not None and getattr(t, key) > 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=c, lw=0.6, alpha=0.5)
            mat = [(i, v) for i, v, m in pts if m]
            if mat:
                ax.plot(*zip(*mat), "o", color=c, ms=3, label=d.label)
    ax.set_yscale("log")
    ax.set(title=title, xlabel="parameter tensor, model order (dots: matrices)")
    ax.legend(fontsize=8)


def _branches(ax, diagnoses: list[Any], colors: list[str]) -> None:
    if not any(d.branches for d in diagnoses):
        ax.axis("off")
        return
    for d, c in zip(diagnoses, colors):
        ax.plot([b.ratio for b in d.branches], "o-", color=c, ms=3, label=d.label)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set(title="residual branch RMS / skip RMS", xlabel="branch, forward order")
    ax.legend(fontsize=8)


def _entropy(ax, diagnoses: list[Any], colors: list[str]) -> None:
    if not any(d.attention for d in diagnoses):
        ax.axis("off")
        return
    for d, c in zip(diagnoses, colors):
        for i, a in enumerate(d.attention):
            ax.plot([i] * len(a.normalized), a.normalized, "o", color=c, ms=3, alpha=0.7,
                    label=d.label if i == 0 else None)
    ax.set(title="attention entropy per head / uniform", xlabel="attention call, forward order",
           ylim=(0, 1.05))
    ax.legend(fontsize=8)


def _ranks(ax, diagnoses: list[Any], colors: list[str]) -> None:
    if not any(d.ranks for d in diagnoses):
        ax.axis("off")
        return
    for d, c in zip(diagnoses, colors):
        ax.plot([r.stable_rank for r in d.ranks], "o-", color=c, ms=3, label=d.label)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set(title="stable rank of the tokens (1 = all alike)",
           xlabel="attention layer, forward order")
    ax.legend(fontsize=8)
