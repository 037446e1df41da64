"""Table (markdown) and heatmap (PNG) of a translation grid's stored cells."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .grid import METHODS, load_cells


def _setting(c: dict[str, Any]) -> str:
    return (f"Adam {c['lr']:g}" if c["optimizer"] == "adam"
            else f"SGD {c['lr']:g} m{c['momentum']:g}")


def _order(cells: list[dict]) -> tuple[list[str], list[str]]:
    keyed = sorted({(c["optimizer"] != "adam", c["momentum"] or 0, c["lr"]): _setting(c)
                    for c in cells}.items())
    methods = [m for m in METHODS if any(c["method"] == m for c in cells)]
    return [s for _, s in keyed], methods


STALL = 0.1   # nats: a run whose validation loss fell less than this after its first evaluation


def stalled(c: dict[str, Any]) -> bool:
    """Did not diverge but stopped learning: the validation loss at the end is within STALL of
    the first evaluation's (the Post-LN failure without warmup: stuck near a unigram model)."""
    v = c["valid_loss"]
    return not c["diverged"] and len(v) > 1 and v[-1] > v[0] - STALL


def _entry(c: dict[str, Any] | None) -> str:
    if c is None:
        return "·"
    if c["diverged"]:
        return f"diverged @{c['diverged_step']}"
    score = "–" if c["bleu"] is None else f"{c['bleu']:.1f}"
    return f"{c['final_valid_loss']:.2f} / {score}" + (" **stalled**" if stalled(c) else "")


def format_grid(cells: list[dict]) -> str:
    """Rows: optimizer settings; columns: methods; entries 'valid loss / test BLEU'."""
    settings, methods = _order(cells)
    by = {(_setting(c), c["method"]): c for c in cells}
    lines = ["| setting | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for s in settings:
        lines.append(f"| {s} | " + " | ".join(_entry(by.get((s, m))) for m in methods) + " |")
    return "\n".join(lines)


def plot_grid(cells: list[dict], path: str | Path) -> None:
    """Methods x settings, coloured by final validation loss (lower is better, BLEU written
    under it); diverged cells grey with 'div', missing cells blank."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    settings, methods = _order(cells)
    by = {(_setting(c), c["method"]): c for c in cells}
    score = np.full((len(methods), len(settings)), np.nan)
    texts: list[tuple[int, int, str]] = []
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(settings), 1.6 + 0.6 * len(methods)))
    ax.set_facecolor("#dddddd")
    for i, m in enumerate(methods):
        for j, s in enumerate(settings):
            c = by.get((s, m))
            if c is None:
                continue
            if c["diverged"] or c["bleu"] is None:
                text = f"div@{c['diverged_step']}" if c["diverged"] else "n/a"
            else:
                score[i, j] = c["final_valid_loss"]
                text = f"{c['final_valid_loss']:.2f}\n{c['bleu']:.1f}" + ("\nstalled" if stalled(c)
                                                                          else "")
            texts.append((j, i, text))
    im = ax.imshow(np.ma.masked_invalid(score), cmap="viridis_r", aspect="auto")
    for j, i, text in texts:   # white on the dark (high-loss) end of the map
        dark = np.isfinite(score[i, j]) and im.norm(score[i, j]) > 0.6
        ax.text(j, i, text, ha="center", va="center", fontsize=7,
                color="white" if dark else "black")
    ax.set_xticks(range(len(settings)), settings, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    fig.colorbar(im, ax=ax, label="final valid loss (nats/token)")
    ax.set_title("Post-LN, no warmup (but 'warmup')\ncell: valid loss, test BLEU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: str | Path) -> str:
    """Write `table.md` and `heatmap.png` under `out`; return the table with a summary line."""
    out = Path(out)
    cells = load_cells(out)
    if not cells:
        return f"no finished cells under {out / 'cells'}"
    cfg = json.loads((out / "grid.json").read_text()) if (out / "grid.json").is_file() else {}
    table = format_grid(cells)
    hours = sum(c["seconds"] + c["init_seconds"] for c in cells) / 3600
    summary = (f"{len(cells)} cells ({hours:.2f} h of training, inits counted where computed); "
               f"entries: final validation loss (nats/token) / test BLEU; **stalled**: validation "
               f"loss fell < {STALL} nats after the first evaluation; "
               f"{cfg.get('layers', '?')}+{cfg.get('layers', '?')} layers, "
               f"d={cfg.get('d_model', '?')}, {cfg.get('steps', '?')} updates")
    (out / "table.md").write_text(table + "\n\n" + summary + "\n")
    plot_grid(cells, out / "heatmap.png")
    return table + "\n\n" + summary
