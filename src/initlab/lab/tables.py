"""A comparison's runs as a table: summaries over seeds, time to accuracy, the printed table and
the plots of test accuracy and training loss per epoch.

Claims (`claim`): method A beats B on a metric when every seed of A is above every seed of B,
or when the difference of the means exceeds both standard deviations; a run that diverged
counts as 0 from the epoch it blew up in.

Time to accuracy: the table's target is 90 % of the best test accuracy any run reached; a run
reaches it after `init_steps + e * steps_per_epoch` training-step equivalents, e the first epoch
whose test accuracy is at least the target and `init_steps` the initialization's own time in
units of that run's measured training step (same process, same threads).
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

TARGET_FRACTION = 0.9


def _mean_std(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def steps_to_target(run: dict[str, Any], target: float) -> float | None:
    """Training-step equivalents (init included) until `run` first reached `target`."""
    for epoch, acc in enumerate(run.get("test_acc") or [], start=1):
        if acc >= target:
            return (run.get("init_steps") or 0.0) + epoch * run["steps_per_epoch"]
    return None


def summarize(runs: list[dict[str, Any]], target: float | None = None) -> dict[str, Any]:
    """Mean/std over seeds. Accuracies count the runs that reached an evaluation (a diverged
    run keeps its best before blowing up); `final_acc` only the runs that did not diverge."""
    runs = [r for r in runs if r.get("error") is None]
    epochs = max((len(r["test_acc"]) for r in runs), default=0)
    reached = [s for s in (steps_to_target(r, target) for r in runs) if s is not None] \
        if target is not None else []
    return {
        "first_epoch_acc": _mean_std([r["first_epoch_acc"] for r in runs
                                      if r["first_epoch_acc"] is not None]),
        "best_acc": _mean_std([r["best_acc"] for r in runs if r["best_acc"] is not None]),
        "final_acc": _mean_std([r["test_acc"][-1] for r in runs if not r["diverged"]]),
        "diverged": sum(r["diverged"] for r in runs), "runs": len(runs),
        "init_seconds": _mean_std([r["init_seconds"] for r in runs]),
        "init_steps": _mean_std([r["init_steps"] for r in runs if r.get("init_steps") is not None]),
        "target_acc": target, "steps_to_target": _mean_std(reached), "reached": len(reached),
        "mean_curve": [statistics.fmean(r["test_acc"][e] for r in runs if len(r["test_acc"]) > e)
                       for e in range(epochs)],
    }


def summarize_table(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """{method: {"runs", "error", "summary"}} in the order the runs come, with the table's
    time-to-accuracy target."""
    best = [r["best_acc"] for r in runs if r.get("error") is None and r["best_acc"] is not None]
    target = TARGET_FRACTION * max(best) if best else None
    methods: dict[str, Any] = {}
    for r in runs:
        entry = methods.setdefault(r["method"], {"runs": [], "error": None})
        entry["runs"].append(r)
        entry["error"] = entry["error"] or r.get("error")
    for entry in methods.values():
        entry["summary"] = summarize(entry["runs"], target)
    return methods


def _per_seed(entry: dict[str, Any], metric: str) -> list[float]:
    """`first_epoch_acc` or `final_acc` of every finished run (0 where it had diverged)."""
    out = []
    for r in entry["runs"]:
        if r.get("error"):
            continue
        if metric == "first_epoch_acc":
            out.append(r["first_epoch_acc"] or 0.0)
        else:
            out.append(0.0 if r["diverged"] else r["test_acc"][-1])
    return out


def beats(a: list[float], b: list[float]) -> str | None:
    """"every seed" or "means" when `a` is above `b` by the rule above, else None."""
    if not a or not b:
        return None
    if min(a) > max(b):
        return "every seed"
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    if statistics.fmean(a) - statistics.fmean(b) > max(sd(a), sd(b)):
        return "means"
    return None


def claim(results: dict[str, Any], method: str, baseline: str) -> dict[str, Any]:
    """The paper's claim for `method` against `baseline` in one table: higher first-epoch
    accuracy (`first_epoch`: how it holds, or None), and final accuracy at least equal
    (`final_at_least_equal`: False only when the baseline beats it)."""
    m, b = results["methods"][method], results["methods"][baseline]
    first = beats(_per_seed(m, "first_epoch_acc"), _per_seed(b, "first_epoch_acc"))
    final_worse = beats(_per_seed(b, "final_acc"), _per_seed(m, "final_acc"))
    return {"first_epoch": first, "final_at_least_equal": final_worse is None,
            "seeds": (len(_per_seed(m, "final_acc")), len(_per_seed(b, "final_acc")))}


def _format_stat(s: dict[str, float], scale: float = 1.0, digits: int = 0) -> str:
    """'mean ± std', or the mean alone for one run (no spread to show)."""
    mean = f"{scale * s['mean']:.{digits}f}"
    return mean if s.get("n") == 1 else f"{mean} ± {scale * s['std']:.{digits}f}"


def _pct(s: dict[str, float] | None) -> str:
    return "-" if s is None else _format_stat(s, 100, 2)


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """The comparison table: accuracies in %, mean ± std over seeds; time to 90 % of the
    table's best accuracy in training steps (init included), over the runs that reached it."""
    head = ["method", "first-epoch acc", "best acc", "final acc", "diverged", "init s",
            "init steps", "steps to 90% best"]
    rows = []
    for name, entry in results["methods"].items():
        s = entry["summary"]
        init, init_steps, reach = s["init_seconds"], s.get("init_steps"), s.get("steps_to_target")
        rows.append([
            name, _pct(s["first_epoch_acc"]), _pct(s["best_acc"]), _pct(s["final_acc"]),
            f"{s['diverged']}/{s['runs']}" + (" (error)" if entry["error"] else ""),
            "-" if init is None else f"{init['mean']:.1f}",
            "-" if init_steps is None else f"{init_steps['mean']:.0f}",
            "-" if reach is None else f"{_format_stat(reach)} ({s['reached']}/{s['runs']})"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [head, *rows])


def _title(results: dict[str, Any]) -> str:
    c, t = results["config"], results["config"]["train"]
    width = f" width {c['width']}" if c["width"] else ""
    seeds = max((len(e["runs"]) for e in results["methods"].values()), default=0)
    return (f"{c['data']}, {c['model']}{c['depth'] or ''}{width} "
            f"{'BN' if c['bn'] else 'no BN'}, {results['recipe']['name']}: {t['optimizer']} "
            f"lr {t['lr']}" + (f", clip {t['clip']}" if t["clip"] else "") + f", {seeds} seeds")


def plot_curves(results: dict[str, Any], path: str | Path) -> None:
    """Test accuracy (left) and training loss (right) per epoch: thin lines per seed, thick
    for the mean; x = the epoch a run diverged in."""
    from ..core.plotting import pyplot
    plt = pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.4))
    methods = results["methods"]
    palette = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    for i, (name, entry) in enumerate(methods.items()):
        color = palette(i % palette.N)
        for r in entry["runs"]:
            if r.get("error"):
                continue
            acc = [100 * a for a in r["test_acc"]]
            epochs = range(1, len(acc) + 1)
            acc_ax.plot(epochs, acc, color=color, alpha=0.3, lw=0.8)
            loss_ax.plot(epochs, r["train_loss"], color=color, alpha=0.5, lw=0.9)
            if r["diverged"]:
                acc_ax.plot([r["diverged_epoch"]], [acc[-1] if acc else 10.0], "x", color=color)
        curve = [100 * a for a in entry["summary"]["mean_curve"]]
        if curve:
            acc_ax.plot(range(1, len(curve) + 1), curve, color=color, lw=2, label=name,
                        marker=".")
        else:  # every run diverged or failed: still named in the legend
            acc_ax.plot([], [], color=color, marker="x", ls="", label=f"{name} (no run finished)")
    acc_ax.set_ylabel("test accuracy (%)")
    loss_ax.set_ylabel("training loss (epoch mean)")
    loss_ax.set_yscale("log")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    if acc_ax.get_legend_handles_labels()[0]:
        acc_ax.legend(fontsize=7 if len(methods) > 6 else 9)
    fig.suptitle(_title(results), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
