"""What `diagnose` measured: one dataclass per kind of statistic, and the `Diagnosis` holding them.

RMS is the root mean square over every element of every batch measured; the spread is the RMS
of the deviation from the batch mean (the input-dependent part of a signal). The verdict reads
spread ratios ("gains") of the weighted layers by depth.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass
class LayerStat:
    name: str              # module name; "act#2" is the second call of `act` in a forward
    kind: str              # module class
    rms: float
    mean: float
    spread: float          # RMS of the deviation from the batch mean
    weighted: bool         # owns a parameter of dim >= 2 (Linear, Conv, Embedding, attention)
    # Weighted layers: output spread over the previous weighted layer's output spread, when the
    # signal kept its scale (within CHAIN_RATIO) between them (activations, pooling); otherwise
    # (after a residual sum or a normalization) over the layer's own input's. None after ids.
    gain: Optional[float] = None
    chained: bool = False  # the gain is over the previous weighted layer's output
    in_branch: bool = False  # inside a residual branch (judged by branch/skip instead)


@dataclass
class TensorStat:
    name: str
    shape: tuple[int, ...]
    weight_rms: float
    grad_rms: Optional[float]      # None: the loss does not reach this tensor
    update_rms: float              # RMS of (after one step - before)

    @property
    def ratio(self) -> Optional[float]:
        """Update RMS / weight RMS (None for an all-zero tensor, e.g. a bias at init)."""
        return self.update_rms / self.weight_rms if self.weight_rms > 0 else None

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) >= 2


@dataclass
class BranchStat:
    name: str
    branch_rms: float
    skip_rms: float
    # "sum" (initlab.ResidualSum), "marked" (mark_residual_branch), "sublayer" (torch's
    # Transformer layers), "traced" (found by torch.fx)
    source: str

    @property
    def ratio(self) -> float:
        return self.branch_rms / self.skip_rms if self.skip_rms > 0 else math.inf


@dataclass
class AttentionStat:
    name: str
    entropy: list[float]           # nats, per head, mean over query rows
    normalized: list[float]        # entropy / log(keys seen): 1 uniform, 0 one key


@dataclass
class RankStat:
    name: str
    rank: float                    # mean numerical rank (singular values > 1e-3 of the largest)
    stable_rank: float             # mean ||X||_F^2 / ||X||_2^2
    full_rank: float               # mean min(tokens, features): the largest possible


@dataclass
class Finding:
    kind: str                      # "vanish", "explode", "dominate", "stall", "collapse"
    where: list[str]               # the layers, tensors or blocks named
    text: str                      # one sentence, with the methods that address it


@dataclass
class Diagnosis:
    layers: list[LayerStat]
    tensors: list[TensorStat]
    loss_before: float             # held-out batch, before the step
    loss_after: float              # held-out batch, after one step of the optimizer
    batch_losses: list[float]      # the loss of each batch the step was computed on
    branches: list[BranchStat] = field(default_factory=list)
    attention: list[AttentionStat] = field(default_factory=list)
    ranks: list[RankStat] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    label: str = "model"

    @property
    def loss_change(self) -> float:
        return self.loss_after - self.loss_before

    @property
    def verdict(self) -> str:
        if not self.findings:
            return "nothing vanishes, explodes or dominates; one step lowers the held-out loss"
        return "\n".join(f"- {f.text}" for f in self.findings)

    def summary(self, max_rows: int = 24) -> str:
        """The measurements as plain-text tables (long ones keep both ends), then the verdict."""
        return summary(self, max_rows)

    def plot(self, path: Optional[str | os.PathLike] = None):
        """The one-page figure (needs matplotlib: `pip install initlab[lab]`)."""
        from .plot import plot_diagnoses
        return plot_diagnoses([self], path)

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), loss_change=self.loss_change)


def fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3g}"


def text_table(header: list[str], rows: list[list[str]], max_rows: int) -> list[str]:
    if len(rows) > max_rows:  # keep both ends: the first and last layers tell the trend
        half = max_rows // 2
        rows = rows[:half] + [["…"] + [""] * (len(header) - 1)] + rows[-half:]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
            for r in [header] + rows]


def step_text(d: Diagnosis) -> str:
    s = d.settings
    extra = f"momentum {s['momentum']:g}, " if s.get("optimizer") == "sgd" else ""
    return (f"{s.get('optimizer')} lr {s.get('lr')} ({extra}weight decay "
            f"{s.get('weight_decay', 0):g})")


def summary(d: Diagnosis, max_rows: int = 24) -> str:
    drop = 100 * d.loss_change / abs(d.loss_before) if d.loss_before else float("nan")
    lines = [f"diagnosis of {d.label}: {step_text(d)}, {d.settings.get('batches', 0) - 1} "
             f"batches measured + 1 held out ({d.seconds:.2f} s)",
             f"held-out loss: {d.loss_before:.5g} -> {d.loss_after:.5g} after one step "
             f"({d.loss_change:+.3g}, {drop:+.3g} %)", "",
             "forward, weighted layers in forward order (spread: RMS of the deviation from the "
             "batch mean; gain: spread over the previous weighted layer's):"]
    weighted = [(i + 1, x) for i, x in enumerate(x for x in d.layers if x.weighted)]
    lines += text_table(["#", "layer", "kind", "rms", "mean", "spread", "gain"],
                    [[str(i), x.name, x.kind, fmt(x.rms), fmt(x.mean), fmt(x.spread),
                      fmt(x.gain)]
                     for i, x in weighted], max_rows)
    lines += ["", "parameter tensors (update/weight: RMS of one step over the tensor's RMS):"]
    lines += text_table(["tensor", "shape", "weight rms", "grad rms", "update/weight"],
                    [[t.name, "x".join(map(str, t.shape)) or "scalar", fmt(t.weight_rms),
                      fmt(t.grad_rms), fmt(t.ratio)] for t in d.tensors], max_rows)
    if d.branches:
        lines += ["", "residual branches (RMS of the branch's output against the skip's):"]
        lines += text_table(["block", "found by", "branch rms", "skip rms", "ratio"],
                        [[b.name, b.source, fmt(b.branch_rms), fmt(b.skip_rms), fmt(b.ratio)]
                         for b in d.branches], max_rows)
    if d.attention:
        lines += ["", "attention entropy per head (fraction of uniform):"]
        lines += text_table(["attention", "per head"],
                        [[a.name, " ".join(f"{v:.2f}" for v in a.normalized)]
                         for a in d.attention], max_rows)
    if d.ranks:
        lines += ["", "token representations per layer (mean over sequences):"]
        lines += text_table(["layer", "numerical rank", "stable rank", "possible"],
                        [[r.name, f"{r.rank:.1f}", f"{r.stable_rank:.2f}", f"{r.full_rank:.1f}"]
                         for r in d.ranks], max_rows)
    lines += ["", "verdict:", d.verdict if d.findings else f"  {d.verdict}"]
    return "\n".join(lines)

