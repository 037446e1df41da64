"""The verdict: which layers, tensors or blocks vanish, explode or dominate, in words, each with
the methods that address it.

Thresholds (module constants, so a reader sees what "shrinks" means):
- forward: a chain of consecutive weighted layers (each fed by the previous one through
  activations or pooling; not inside a residual branch) each changing the signal's spread (its
  input-dependent RMS, `LayerStat.gain`) by more than 25 % the same way (gain < 0.8 or > 1.25)
  and by RUN_FACTOR or more in all; or one layer alone changing it by RUN_FACTOR or more; or a
  non-finite output;
- updates: a weight matrix whose update/weight RMS ratio is TENSOR_SPREAD times above or below
  the median matrix's, or a median ratio above LARGE_STEP or below SMALL_STEP;
- loss: one step raises the held-out loss, or lowers it by less than STALL of its value;
- residual: a branch's RMS DOMINANT times its skip's or more;
- Transformers: heads whose entropy is below COLLAPSED_ENTROPY of uniform, layers whose tokens
  have a stable rank below COLLAPSED_RANK (Noci et al. 2022).
"""
from __future__ import annotations

import math
import statistics
from typing import Optional

from ..registry import available_methods
from .result import AttentionStat, BranchStat, Diagnosis, Finding, LayerStat, RankStat, TensorStat

SHRINK, GROW, RUN_FACTOR = 0.8, 1.25, 4.0
TENSOR_SPREAD, LARGE_STEP, SMALL_STEP = 30.0, 0.1, 1e-4
STALL = 1e-3
DOMINANT = 2.0
COLLAPSED_ENTROPY, COLLAPSED_RANK = 0.2, 1.5


def try_methods(*names: str) -> str:
    """"try a, b or c" over the registered names (a method not installed is not offered)."""
    have = [n for n in names if n in available_methods()]
    if not have:
        return ""
    return "try " + (have[0] if len(have) == 1 else ", ".join(have[:-1]) + " or " + have[-1])


def listed(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" (+{len(names) - most} more)" if len(names) > most else "")


def judge(d: Diagnosis) -> list[Finding]:
    transformer = bool(d.attention or d.ranks)
    return (forward_findings(d.layers) + loss_findings(d, transformer)
            + update_findings(d.tensors) + branch_findings(d.branches)
            + attention_findings(d.attention, d.ranks))


def forward_findings(layers: list[LayerStat]) -> list[Finding]:
    bad = next((layer for layer in layers if not math.isfinite(layer.rms)), None)
    if bad is not None:
        return [Finding("explode", [bad.name], f"the output of {bad.name} is non-finite "
                        f"already at init: {try_methods('kaiming', 'gradinit')}")]
    weighted = [layer for layer in layers if layer.weighted]
    out: list[Finding] = []
    i = 0
    while i < len(weighted):  # runs of one direction; a run continues only along a chain
        g = weighted[i].gain
        direction = (None if g is None or weighted[i].in_branch
                     else "shrink" if g < SHRINK else "grow" if g > GROW else None)
        j = i
        while direction and j + 1 < len(weighted) and _continues(weighted[j + 1], direction):
            j += 1
        if direction:
            run = weighted[i:j + 1]
            total = math.prod(layer.gain for layer in run)  # type: ignore[misc]
            if max(total, 1 / total) >= RUN_FACTOR:
                out.append(_forward_finding(run, i, total, direction))
        i = j + 1
    return out


def _continues(layer: LayerStat, direction: str) -> bool:
    return layer.chained and not layer.in_branch and _same_way(layer.gain, direction)


def _same_way(g: Optional[float], direction: str) -> bool:
    return g is not None and (g < SHRINK if direction == "shrink" else g > GROW)


def _forward_finding(run: list[LayerStat], start: int, total: float, direction: str) -> Finding:
    each = total ** (1 / len(run))
    factor = lambda x: f"{max(x, 1 / x):.3g}×"  # noqa: E731
    if len(run) == 1:
        where = f"weighted layer {start + 1} ({run[0].name})"
        how = f"{direction}s the signal {factor(total)}"
    else:
        where = (f"weighted layers {start + 1}-{start + len(run)} "
                 f"({run[0].name} … {run[-1].name})")
        how = f"{direction} the signal {factor(each)} each ({factor(total)} in all)"
    return Finding("vanish" if direction == "shrink" else "explode", [r.name for r in run],
                   f"{where} {how}: {try_methods('kaiming', 'lsuv', 'gradinit')}")


def loss_findings(d: Diagnosis, transformer: bool) -> list[Finding]:
    s = d.settings
    step = f"one {s.get('optimizer', 'optimizer')} step at lr {s.get('lr')}"
    fixes = (try_methods("admin", "tfixup", "gradinit") + " (or a warmup)" if transformer
             else try_methods("gradinit", "kaiming"))
    if not math.isfinite(d.loss_before):
        return [Finding("explode", ["loss"], f"the held-out loss is {d.loss_before} before any "
                        f"step: {try_methods('kaiming', 'gradinit')}")]
    change = (d.loss_after - d.loss_before) / max(abs(d.loss_before), 1e-12)
    if not math.isfinite(d.loss_after) or change > STALL:
        return [Finding("explode", ["loss"], f"{step} raises the held-out loss from "
                        f"{d.loss_before:.4g} to {d.loss_after:.4g}: lower the learning rate, or "
                        f"{fixes} (GradInit scales the tensors so that this step lowers it)")]
    if change > -STALL:
        return [Finding("stall", ["loss"], f"{step} changes the held-out loss by only "
                        f"{100 * change:+.2g} %: training will crawl; {fixes}")]
    return []


def update_findings(tensors: list[TensorStat]) -> list[Finding]:
    rated = [(t, t.ratio) for t in tensors if t.is_matrix and t.ratio is not None
             and math.isfinite(t.ratio)]
    if not rated:
        return []
    median = statistics.median(r for _, r in rated)
    out = []
    if median > LARGE_STEP:
        out.append(Finding("explode", [], f"one step changes the typical weight matrix by "
                           f"{100 * median:.3g} % of its RMS: lower the learning rate, or "
                           f"{try_methods('gradinit')}"))
    elif 0 < median < SMALL_STEP:
        out.append(Finding("stall", [], f"one step changes the typical weight matrix by "
                           f"{median:.2g} of its RMS: training will crawl; "
                           f"{try_methods('kaiming', 'gradinit')}, or a larger learning rate"))
    big = [t.name for t, r in rated if r > TENSOR_SPREAD * median]
    small = [t.name for t, r in rated if r < median / TENSOR_SPREAD]
    if big:
        top = max(r for _, r in rated)
        lower = ", or a lower learning rate" if top > LARGE_STEP else ""
        verb = "takes" if len(big) == 1 else "take"
        out.append(Finding("dominate", big, f"{listed(big)} {verb} most of the step: update/weight "
                           f"up to {top:.2g}, over {TENSOR_SPREAD:g}× the median matrix's "
                           f"{median:.2g}; {try_methods('gradinit')} (it balances the tensors' "
                           f"scales){lower}"))
    if small:
        one = len(small) == 1
        out.append(Finding("vanish", small, f"{listed(small)} hardly move{'s' if one else ''} "
                           f"(update/weight under 1/{TENSOR_SPREAD:g} of the median matrix's "
                           f"{median:.2g}): {'its gradient vanishes' if one else 'their gradients vanish'}"
                           f"; {try_methods('kaiming', 'gradinit')}"))
    return out


def branch_findings(branches: list[BranchStat]) -> list[Finding]:
    loud = [b for b in branches if b.ratio >= DOMINANT]
    if not loud:
        return []
    top = max(b.ratio for b in loud)
    sublayer = all(b.source in ("sublayer", "sum") for b in loud)  # Transformer-style sums
    fixes = (try_methods("admin", "deepnet", "tfixup", "gradinit") if sublayer
             else try_methods("fixup", "skipinit", "gradinit") + " (Fixup and SkipInit start each "
             "branch at zero)")
    what = ("the residual branch of {} outweighs its skip" if len(loud) == 1
            else "the residual branches of {} outweigh their skips")
    return [Finding("dominate", [b.name for b in loud],
                    what.format(listed([b.name for b in loud]))
                    + f" (up to {top:.3g}× the skip's RMS): {fixes}")]


def attention_findings(attention: list[AttentionStat], ranks: list[RankStat]) -> list[Finding]:
    out = []
    peaked = [a.name for a in attention if any(v < COLLAPSED_ENTROPY for v in a.normalized)]
    if peaked:
        out.append(Finding("collapse", peaked, f"heads of {listed(peaked)} attend to one token "
                           f"(entropy under {COLLAPSED_ENTROPY:g} of uniform): the query/key "
                           f"weights are too large; {try_methods('xavier', 'tfixup', 'gradinit')}"))
    flat = [r for r in ranks if r.stable_rank < COLLAPSED_RANK and r.full_rank >= 4]
    if flat:
        out.append(Finding("collapse", [r.name for r in flat],
                           f"the tokens of {listed([r.name for r in flat])} are nearly alike "
                           f"(stable rank down to {min(r.stable_rank for r in flat):.3g}): rank "
                           f"collapse (Noci et al. 2022); scale the residual branches down, "
                           f"{try_methods('admin', 'tfixup', 'skipinit')}"))
    return out
