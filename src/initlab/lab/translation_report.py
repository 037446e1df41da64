"""Table (markdown) and heatmap (PNG) of a translation grid's stored cells."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .translation_grid import METHODS, load_cells


def _setting(c: dict[str, Any]) -> str:
    return (f"Adam {c['lr']:g}" if c["optimizer"] == "adam"
            else f"SGD {c['lr']:g} m{c['momentum']:g}")


def _order(cells: list[dict]) -> tuple[list[str], list[str]]:
    keyed = sorted({(c["optimizer"] != "adam", c["momentum"] or 0, c["lr"]): _setting(c)
                    for c in cells}.items())
    methods = [m for m in METHODS if any(c["method"] == m for c in cells)]
    return [s for _, s in keyed], methods


def _entry(c: dict[str, Any] | None) -> str:
    if c is None:
        return "·"
    if c["diverged"]:
        return f"diverged @{c['diverged_step']}"
    score = "–" if c["bleu"] is None else f"{c['bleu']:.1f}"
    return f"{c['final_valid_loss']:.2f} / {score}"


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
    """Methods x settings, coloured by test BLEU; diverged cells grey with 'div', missing blank."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    settings, methods = _order(cells)
    by = {(_setting(c), c["method"]): c for c in cells}
    score = np.full((len(methods), len(settings)), np.nan)
    fig, ax = plt.subplots(figsize=(1.0 + 1.05 * len(settings), 0.9 + 0.6 * len(methods)))
    ax.set_facecolor("#dddddd")
    for i, m in enumerate(methods):
        for j, s in enumerate(settings):
            c = by.get((s, m))
            if c is None:
                continue
            if c["diverged"] or c["bleu"] is None:
                text = f"div@{c['diverged_step']}" if c["diverged"] else "n/a"
            else:
                score[i, j] = c["bleu"]
                text = f"{c['bleu']:.1f}\n{c['final_valid_loss']:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    im = ax.imshow(np.ma.masked_invalid(score), cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(len(settings)), settings, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    fig.colorbar(im, ax=ax, label="test BLEU (cell text: BLEU, valid loss)")
    ax.set_title("Post-LN Transformer, no warmup (except 'warmup'): test BLEU", fontsize=9)
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
               f"entries: final validation loss (nats/token) / test BLEU; "
               f"{cfg.get('layers', '?')}+{cfg.get('layers', '?')} layers, "
               f"d={cfg.get('d_model', '?')}, {cfg.get('steps', '?')} updates")
    (out / "table.md").write_text(table + "\n\n" + summary + "\n")
    plot_grid(cells, out / "heatmap.png")
    return table + "\n\n" + summary
