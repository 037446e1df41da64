"""Tables and figures of a translation grid's stored cells.

- `table.md`: settings x methods, entries 'final validation loss / test BLEU' (the mean over
  seeds when there are several, then also a methods x seeds table), the paper's claims, and in
  the Adam cells the default GradInit search against the authors' recipe (loss, iterations);
- `heatmaps.png`: the same grid twice, coloured by final validation loss and by test BLEU;
- `curves.png`: validation loss per update, one panel per optimizer setting, a line per method
  and seed.

A cell **diverged** when its training loss became non-finite or exceeded ln V + 1; it
**stalled** when its validation loss fell less than `STALL` nats after the first evaluation (the
Post-LN failure without warmup: stuck near a unigram model); otherwise it **trains**.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Optional

from .grid import load_cells
from .inits import METHODS
from .training import STALL

MATCH = 0.1   # nats: a method "matches warmup" when it ends at most this far above it


def _setting(c: dict[str, Any]) -> str:
    return (f"Adam {c['lr']:g}" if c["optimizer"] == "adam"
            else f"SGD {c['lr']:g} m{c['momentum']:g}")


def _order(cells: list[dict]) -> tuple[list[str], list[str]]:
    keyed = sorted({(c["optimizer"] != "adam", c["momentum"] or 0, c["lr"]): _setting(c)
                    for c in cells}.items())
    methods = [m for m in METHODS if any(c["method"] == m for c in cells)]
    return [s for _, s in keyed], methods


def _groups(cells: list[dict]) -> dict[tuple[str, str], list[dict]]:
    by: dict[tuple[str, str], list[dict]] = {}
    for c in sorted(cells, key=lambda c: c.get("seed", 0)):
        by.setdefault((_setting(c), c["method"]), []).append(c)
    return by


def stalled(c: dict[str, Any]) -> bool:
    """Did not diverge but stopped learning: the validation loss at the end is within STALL of
    the first evaluation's."""
    v = c["valid_loss"]
    return not c["diverged"] and len(v) > 1 and v[-1] > v[0] - STALL


def outcome(c: dict[str, Any]) -> str:
    return "diverged" if c["diverged"] else "stalled" if stalled(c) else "trains"


def _mean(values: list[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def _entry(group: Optional[list[dict]]) -> str:
    if not group:
        return "·"
    div = [c for c in group if c["diverged"]]
    if len(div) == len(group):
        return f"diverged @{div[0]['diverged_step']}" if len(group) == 1 else "diverged"
    live = [c for c in group if not c["diverged"]]
    loss, score = _mean([c["final_valid_loss"] for c in live]), _mean([c["bleu"] for c in live])
    text = f"{loss:.2f} / " + ("–" if score is None else f"{score:.1f}")
    if any(stalled(c) for c in live):
        stops = [c["stalled_step"] for c in live if c.get("stalled_step")]
        text += " **stalled**" + (f" (stopped @{stops[0]})" if len(group) == 1 and stops else "")
    return text + (f" ({len(div)}/{len(group)} diverged)" if div else "")


def format_grid(cells: list[dict]) -> str:
    """Rows: optimizer settings; columns: methods; entries 'valid loss / test BLEU'."""
    settings, methods = _order(cells)
    by = _groups(cells)
    lines = ["| setting | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in settings:
        lines.append(f"| {s} | " + " | ".join(_entry(by.get((s, m))) for m in methods) + " |")
    return "\n".join(lines)


def format_seeds(cells: list[dict]) -> str:
    """Per setting, methods x seeds: 'valid loss / BLEU' of each run, then the mean BLEU."""
    settings, methods = _order(cells)
    seeds = sorted({c.get("seed", 0) for c in cells})
    by = {(_setting(c), c["method"], c.get("seed", 0)): c for c in cells}
    lines = []
    for s in settings:
        lines += [f"| {s} | " + " | ".join(f"seed {k}" for k in seeds) + " | mean BLEU |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for m in methods:
            runs = [by.get((s, m, k)) for k in seeds]
            mean = _mean([c["bleu"] for c in runs if c is not None and not c["diverged"]])
            lines.append(f"| {m} | " + " | ".join(_entry([c] if c else None) for c in runs)
                         + " | " + ("–" if mean is None else f"{mean:.1f}") + " |")
    return "\n".join(lines)


CLAIMS = (("Adam 5e-4 without warmup", lambda c: c["optimizer"] == "adam" and c["lr"] == 5e-4),
          ("Adam above 5e-4 without warmup", lambda c: c["optimizer"] == "adam" and c["lr"] > 5e-4),
          ("SGD without warmup, every rate and momentum", lambda c: c["optimizer"] == "sgd"))


def claims(cells: list[dict]) -> str:
    """The GradInit paper's Transformer claim (it trains a Post-LN Transformer without warmup
    "using either Adam or SGD under a wide range of learning rates and momentum coefficients"),
    per optimizer group and GradInit variant: it holds in a cell when the GradInit run trains
    (neither diverged nor stalled) and ends at most MATCH nats above the warmup reference (or
    the reference does not train there). A cell without a warmup run of its seed is not judged.
    The last column says where the default init, also without warmup, fails the same test:
    where it does not, the cell cannot show a rescue."""
    by = _groups(cells)
    lines = ["| claim | method | holds in | fails in | verdict | default fails in |",
             "|---|---|---|---|---|---|"]
    for claim, where in CLAIMS:
        for method in ("gradinit-authors", "gradinit", "gradinit-sgd"):
            ours = [c for c in cells if c["method"] == method and where(c) and _reference(c, by)]
            if not ours:
                continue
            held, failed = [], []
            for c in sorted(ours, key=lambda c: (c["momentum"] or 0, c["lr"], c.get("seed", 0))):
                ok, why = _holds(c, by)
                (held if ok else failed).append(_name(c) + ("" if ok else f" ({why})"))
            verdict = "holds" if not failed else "does not hold" if not held else "holds in part"
            base = [c for c in cells if c["method"] == "default" and where(c)]
            base_failed = [_name(c) for c in base if not _holds(c, by)[0]]
            lines.append(f"| {claim} | {method} | {', '.join(held) or '–'} | "
                         f"{', '.join(failed) or '–'} | {verdict} | "
                         f"{', '.join(base_failed) or ('none' if base else '–')} |")
    return "\n".join(lines)


def _name(c: dict[str, Any]) -> str:
    return _setting(c) + (f" seed {c['seed']}" if c.get("seed") else "")


def _reference(c: dict[str, Any], by: dict[tuple[str, str], list[dict]]) -> Optional[dict]:
    """The warmup run of `c`'s cell and seed, if any."""
    return next((r for r in by.get((_setting(c), "warmup"), [])
                 if r.get("seed", 0) == c.get("seed", 0)), None)


def _holds(c: dict[str, Any], by: dict[tuple[str, str], list[dict]]) -> tuple[bool, str]:
    """(trains like the warmup reference of its cell and seed, why not)."""
    ref = _reference(c, by)
    if outcome(c) != "trains":
        return False, outcome(c)
    if ref is None or outcome(ref) != "trains" or c["final_valid_loss"] <= (
            ref["final_valid_loss"] + MATCH):
        return True, ""
    return False, f"{c['final_valid_loss']:.2f} vs warmup {ref['final_valid_loss']:.2f}"


def format_searches(cells: list[dict]) -> str:
    """Adam cells: the default GradInit search against the authors' recipe, by final validation
    loss and search iterations. The default search's target: at least the authors' loss in
    fewer iterations."""
    by = _groups(cells)
    lines = ["| cell | gradinit-authors: loss, iterations | gradinit: loss, iterations, stop "
             "| target |", "|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["lr"], c.get("seed", 0))):
        if c["method"] != "gradinit" or c["optimizer"] != "adam":
            continue
        ref = next((r for r in by.get((_setting(c), "gradinit-authors"), [])
                    if r.get("seed", 0) == c.get("seed", 0)), None)
        ours, theirs = c.get("init_report") or {}, (ref or {}).get("init_report") or {}
        stop = (ours.get("outcome") or {}).get("stop", "?")
        row = f"| {_name(c)} | "
        row += (f"{_loss(ref)}, {theirs.get('iterations', '?')}" if ref else "·") + " | "
        row += f"{_loss(c)}, {ours.get('iterations', '?')}, {stop} | "
        if ref is None or not ours.get("iterations") or not theirs.get("iterations"):
            row += "· |"
        else:
            better = outcome(c) != "diverged" and (outcome(ref) == "diverged" or
                                                  c["final_valid_loss"] <= ref["final_valid_loss"])
            fewer = ours["iterations"] < theirs["iterations"]
            row += ("holds" if better and fewer else "does not hold ("
                    + ", ".join(w for w, bad in (("higher loss", not better),
                                                 ("not fewer iterations", not fewer)) if bad)
                    + ")") + " |"
        lines.append(row)
    return "\n".join(lines) if len(lines) > 2 else ""


def _loss(c: dict[str, Any]) -> str:
    return "diverged" if c["diverged"] else f"{c['final_valid_loss']:.2f}"


def plot_heatmaps(cells: list[dict], path: str | Path) -> None:
    """Methods x settings, twice: coloured by final validation loss (lower is better) and by
    test BLEU (higher is better); diverged cells grey, missing cells blank."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    settings, methods = _order(cells)
    by = _groups(cells)
    fig, axes = plt.subplots(2, 1, figsize=(2.5 + 0.9 * len(settings), 3 + 1.1 * len(methods)))
    for ax, (key, label, cmap) in zip(axes, (("final_valid_loss", "final valid loss (nats)",
                                              "viridis_r"), ("bleu", "test BLEU", "viridis"))):
        grid = np.full((len(methods), len(settings)), np.nan)
        texts = []
        for i, m in enumerate(methods):
            for j, s in enumerate(settings):
                group = [c for c in by.get((s, m), []) if not c["diverged"]]
                if by.get((s, m)) and not group:
                    texts.append((j, i, "div"))
                elif group:
                    value = _mean([c[key] for c in group])
                    stall = "stalled" if any(stalled(c) for c in group) else ""
                    if value is None:      # no BLEU: a run stopped while stalled
                        texts.append((j, i, stall or "n/a"))
                        continue
                    grid[i, j] = value
                    texts.append((j, i, f"{value:.{2 if key != 'bleu' else 1}f}"
                                  + ("\n" + stall if stall else "")))
        ax.set_facecolor("#dddddd")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
        for j, i, text in texts:   # white on the dark end of the map
            shade = im.norm(grid[i, j]) if np.isfinite(grid[i, j]) else None
            dark = shade is not None and (shade > 0.6 if key != "bleu" else shade < 0.4)
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
        ax.set_xticks(range(len(settings)), settings, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        fig.colorbar(im, ax=ax, label=label)
    axes[0].set_title("Post-LN Transformer, no warmup (except 'warmup')", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(cells: list[dict], path: str | Path) -> None:
    """Validation loss per update: a panel per setting, a colour per method, a dash per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, methods = _order(cells)
    by = _groups(cells)
    cols = min(len(settings), 4)
    rows = -(-len(settings) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, s in zip(axes.flat, settings):
        for m in methods:
            for c in by.get((s, m), []):
                style = ("-", "--", ":", "-.")[c.get("seed", 0) % 4]
                ax.plot(c["steps"], c["valid_loss"], style, color=colours[m], lw=1,
                        label=m if c is by[(s, m)][0] else None)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("update", fontsize=8)
        ax.set_ylabel("valid loss (nats)", fontsize=8)
    for ax in list(axes.flat)[len(settings):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: str | Path) -> str:
    """Write `table.md`, `heatmaps.png` and `curves.png` under `out`; return the tables."""
    out = Path(out)
    cells = load_cells(out)
    if not cells:
        return f"no finished cells under {out / 'cells'}"
    cfg = json.loads((out / "grid.json").read_text()) if (out / "grid.json").is_file() else {}
    parts = [format_grid(cells)]
    if len({c.get("seed", 0) for c in cells}) > 1:
        parts.append(format_seeds(cells))
    parts.append(claims(cells))
    searches = format_searches(cells)
    if searches:
        parts.append(searches)
    hours = sum(c["seconds"] + c["init_seconds"] for c in cells) / 3600
    cpu = sum(c.get("cpu_seconds", 0.0) for c in cells) / 3600
    parts.append(
        f"{len(cells)} cells ({hours:.2f} h of training and inits, {cpu:.2f} CPU hours of "
        f"training); recipe {cfg.get('recipe', 'lab-mt')}; entries: final validation loss "
        f"(nats/token) / test BLEU; **stalled**: validation loss fell < {STALL} nats after the "
        f"first evaluation; the plateau (a context-free unigram model's validation loss) is "
        f"{cfg.get('plateau', float('nan')):.2f}; {cfg.get('layers', '?')}+{cfg.get('layers', '?')} layers, "
        f"d={cfg.get('d_model', '?')}, {cfg.get('steps', '?')} updates"
        + "".join(f"; gradinit {k}={v}" for k, v in cfg.get("gradinit_settings", {}).items()))
    text = "\n\n".join(parts)
    (out / "table.md").write_text(text + "\n")
    plot_heatmaps(cells, out / "heatmaps.png")
    plot_curves(cells, out / "curves.png")
    return text
