"""`initlab translate-grid`: run or resume the translation grid, then write its report."""
from __future__ import annotations

import argparse
from typing import Any

from ..usage import UsageError, method_setting
from .grid import GridConfig, run_grid
from .inits import METHODS
from .recipe import mt_recipes
from .report import write_report


def add_subcommand(sub: Any) -> None:
    """`initlab translate-grid` (run or resume) and `--report-only`."""
    p = sub.add_parser("translate-grid", help="Post-LN Transformer without warmup: methods x "
                       "optimizer settings on English->Spanish Bible verses (resumable)")
    d = GridConfig()
    floats = lambda s: [float(v) for v in s.split(",") if v]  # noqa: E731
    p.add_argument("--out", default="runs/translate-grid")
    p.add_argument("--adam-lrs", type=floats, default=d.adam_lrs)
    p.add_argument("--sgd-lrs", type=floats, default=d.sgd_lrs)
    p.add_argument("--momenta", type=floats, default=d.momenta)
    p.add_argument("--methods", type=lambda s: s.split(","), default=d.methods,
                   help=f"comma-separated, of {','.join(METHODS)} (default: all but the last)")
    p.add_argument("--recipe", choices=mt_recipes(), default=d.recipe,
                   help="training protocol (initlab.lab.recipes): lab-mt (default) or "
                   "authors-mt (the GradInit authors' IWSLT'14 script, scaled to the run)")
    for name in ("layers", "d_model", "nhead", "ffn", "max_words", "vocab_size", "batch_size",
                 "steps", "warmup", "eval_every", "gradinit_steps", "gradinit_sgd_steps", "beam",
                 "seed", "seeds"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--set", dest="settings", type=method_setting, action="append", default=[],
                   metavar="gradinit.KEY=VALUE", help="a setting of the default search "
                   "(`gradinit`), e.g. --set gradinit.warm_start=False (repeatable); give such a "
                   "grid its own --out")
    p.add_argument("--dropout", type=float, default=None, help="default: the recipe's")
    p.add_argument("--norm", choices=("post", "pre"), default=d.norm)
    p.add_argument("--stop-stalled", type=float, default=None, metavar="FRACTION",
                   help="stop a run whose validation loss is still within 0.1 nats of its first "
                   "evaluation after this fraction of its updates (no BLEU then)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None, help="default: $INITLAB_DATA, ~/.cache/initlab")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new cell after this long (finished cells are kept)")
    p.add_argument("--report-only", action="store_true", help="table and heatmap only")
    p.add_argument("--quiet", action="store_true", help="no per-cell logs")
    p.add_argument("-v", "--verbose", action="store_true", help="log every evaluation")


def main_from_args(a: argparse.Namespace) -> int:
    keys = GridConfig.__dataclass_fields__
    cfg = GridConfig(**{k: v for k, v in vars(a).items() if k in keys})
    for method, key, value in a.settings:
        if method != "gradinit":
            raise UsageError(f"--set {method}.{key}: the grid takes settings of gradinit (the "
                             "default search) only")
        cfg.gradinit_settings[key] = value
    try:
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None
    if not a.report_only:
        run_grid(cfg, a.out, max_minutes=a.max_minutes)
    print(write_report(a.out))
    return 0
