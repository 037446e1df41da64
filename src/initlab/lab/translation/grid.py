"""The no-warmup study of the GradInit paper (Sec. 4.3, Fig. 1) on English->Spanish Bible verses.

A Post-LN encoder-decoder Transformer trained for a fixed number of updates, without warmup,
over a grid of optimizer settings (Adam over learning rates; SGD over learning rates x
momenta), after each initialization method (`inits.py`: default, warmup, gradinit-authors,
gradinit, gradinit-warmstart, tfixup, admin, deepnet), under a training protocol from
`initlab.lab.recipes` (`recipe.py`: `lab-mt`, the default, or `authors-mt`), for one or more
seeds.

Every finished cell is stored as its own JSON under `<out>/cells/`, and initialized weights
under `<out>/inits/`, so an interrupted grid resumes where it stopped; several processes on one
machine can fill the same grid (each claims a cell before running it); `--report-only` rebuilds
the table and the heatmaps from the stored cells.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch

from ...registry import check_settings
from ..store import claim, write_atomic
from .data import TokenBatches, TranslationData, load_translation_data
from .inits import DEFAULT_METHODS, GRID_SET, METHODS, apply_method, init_key, report_summary, runs_in
from .model import TransformerConfig, TranslationTransformer
from .recipe import mt_settings
from .training import Seq2SeqConfig, bleu, train_seq2seq, translate

log = logging.getLogger(__name__)


@dataclass
class GridConfig:
    adam_lrs: list[float] = field(default_factory=lambda: [2.5e-4, 5e-4, 1e-3, 2e-3])
    sgd_lrs: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    momenta: list[float] = field(default_factory=lambda: [0.9, 0.98])
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    recipe: str = "lab-mt"            # the training protocol, a translation recipe (recipe.py)
    layers: int = 6                   # encoder and decoder layers each
    d_model: int = 128
    nhead: int = 4
    ffn: int = 512
    dropout: Optional[float] = None   # None: the recipe's
    norm: str = "post"
    max_words: int = 16
    vocab_size: int = 4000
    batch_size: int = 32
    steps: int = 600                  # the update budget of every run
    warmup: int = 150                 # the reference's warmup; decay starts here for all runs
    eval_every: int = 100
    gradinit_steps: int = 780         # the authors' recipe (one epoch of IWSLT'14)
    gradinit_sgd_steps: int = 200     # the SGD-target variant: one search per learning rate
    gradinit_settings: dict[str, Any] = field(default_factory=dict)  # the default search's
    #                                   settings beyond the cell's target (--set gradinit.K=V)
    beam: int = 1
    stop_stalled: Optional[float] = None  # stop runs still stalled after this fraction
    seed: int = 0                     # the first seed
    seeds: int = 1                    # seeds seed, seed + 1, ...
    device: str = "cpu"
    data_dir: str | None = None

    def validate(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"--methods: unknown {', '.join(sorted(unknown))}; choose from "
                             f"{', '.join(METHODS)}")
        own = set(self.gradinit_settings) & set(GRID_SET)
        if own:
            raise ValueError(f"--set gradinit.{sorted(own)[0]}: the grid sets it itself (from each "
                             "cell's optimizer and rate); leave it out")
        try:
            check_settings("gradinit", self.gradinit_settings)
        except (TypeError, ValueError) as e:
            raise type(e)(f"--set gradinit: {e}") from None
        mt_settings(self.recipe, "adam")   # a translation recipe, or a clear error
        if not (self.adam_lrs or self.sgd_lrs) or min(self.layers, self.steps, self.seeds) < 1:
            raise ValueError("the grid needs at least one learning rate, and layers, steps and "
                             "seeds >= 1")


class Cell(NamedTuple):
    optimizer: str
    lr: float
    momentum: Optional[float]
    method: str
    seed: int = 0


def cells(cfg: GridConfig) -> list[Cell]:
    """Every cell, seed by seed; within a seed Adam first, methods innermost. Adam cells skip
    the SGD-only methods and SGD cells the Adam-only ones (`inits.runs_in`)."""
    out = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        for lr in cfg.adam_lrs:
            out += [Cell("adam", lr, None, m, seed) for m in cfg.methods if runs_in(m, "adam")]
        for mom in cfg.momenta:
            for lr in cfg.sgd_lrs:
                out += [Cell("sgd", lr, mom, m, seed) for m in cfg.methods if runs_in(m, "sgd")]
    return out


def cell_name(opt: str, lr: float, mom: float | None, method: str, seed: int = 0) -> str:
    return (f"{opt}-lr{lr:g}" + (f"-m{mom:g}" if mom is not None else "") + f"-{method}"
            + (f"-seed{seed}" if seed else ""))


def model_config(cfg: GridConfig, vocab_size: int) -> TransformerConfig:
    """The recipe's `transformer.*` settings, the grid's size (and `--dropout`, if given)."""
    settings = mt_settings(cfg.recipe, "adam")["transformer"]
    if cfg.dropout is not None:
        settings["dropout"] = cfg.dropout
    return TransformerConfig(vocab_size, **dict(
        settings, d_model=cfg.d_model, nhead=cfg.nhead, ffn=cfg.ffn, encoder_layers=cfg.layers,
        decoder_layers=cfg.layers, norm=cfg.norm))


def train_config(cfg: GridConfig, cell: Cell) -> Seq2SeqConfig:
    """The recipe's `seq2seq.*` settings for the cell's optimizer, and the cell's own."""
    settings = mt_settings(cfg.recipe, cell.optimizer)["seq2seq"]
    return Seq2SeqConfig(**dict(
        settings, optimizer=cell.optimizer, lr=cell.lr, momentum=cell.momentum or 0.0,
        steps=cfg.steps, warmup=cfg.warmup if cell.method == "warmup" else 0,
        decay_start=cfg.warmup, eval_every=cfg.eval_every, stop_stalled=cfg.stop_stalled,
        device=cfg.device))


def build(cfg: GridConfig, vocab_size: int, seed: Optional[int] = None) -> TranslationTransformer:
    torch.manual_seed(cfg.seed if seed is None else seed)  # the same draws for every method
    return TranslationTransformer(model_config(cfg, vocab_size), device=cfg.device)


def initialized(cfg: GridConfig, data: TranslationData, cell: Cell,
                out: Path) -> tuple[TranslationTransformer, dict[str, Any]]:
    """The model after the cell's method (cached as a state dict with what its report said), and
    {"seconds": the time the init took, "report": ...}."""
    model = build(cfg, data.vocab_size, cell.seed)
    key = init_key(cell.method, cell.optimizer, cell.lr, cell.seed,
                   gradinit_steps=cfg.gradinit_steps, gradinit_sgd_steps=cfg.gradinit_sgd_steps,
                   gradinit_settings=cfg.gradinit_settings)
    if key is None:
        return model, dict(seconds=0.0, report={})
    path = out / "inits" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() and not claim(path):
        raise _Busy(key)   # another process computes this init: do other cells meanwhile
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state"])
        return model, dict(seconds=saved["seconds"], report=saved.get("report", {}))
    start = time.perf_counter()
    try:
        report = apply_method(
            model, cell.method, data, optimizer=cell.optimizer, lr=cell.lr, seed=cell.seed,
            batch_size=cfg.batch_size, label_smoothing=train_config(cfg, cell).label_smoothing,
            gradinit_steps=cfg.gradinit_steps, gradinit_sgd_steps=cfg.gradinit_sgd_steps,
            device=cfg.device, gradinit_settings=cfg.gradinit_settings)
        info = dict(seconds=time.perf_counter() - start, report=report_summary(report))
        write_atomic(path, lambda tmp: torch.save(dict(info, state=model.state_dict()), tmp))
    finally:
        path.with_suffix(".claim").unlink(missing_ok=True)
    return model, info


def run_cell(cfg: GridConfig, data: TranslationData, cell: Cell, out: Path) -> dict[str, Any]:
    cell = Cell(*cell)
    model, init = initialized(cfg, data, cell, out)
    train_cfg = train_config(cfg, cell)
    train_b = TokenBatches(data.src["train"], data.tgt["train"], cfg.batch_size, shuffle=True,
                           seed=cell.seed, device=cfg.device)
    valid_b = TokenBatches(data.src["valid"], data.tgt["valid"], 128, device=cfg.device)
    torch.manual_seed(cell.seed)
    result = train_seq2seq(model, train_b, valid_b, train_cfg, vocab_size=data.vocab_size,
                           desc=cell_name(*cell))
    hyps, score = None, None
    if not result.diverged and result.stalled_step is None:
        start = time.perf_counter()
        hyps = translate(model, data.src["test"], data, beam=cfg.beam, device=cfg.device)
        score = bleu(hyps, [t[2] for t in data.text["test"]])
        log.info("%s: test BLEU %s (%.0f s decoding)", cell_name(*cell), score,
                 time.perf_counter() - start)
    return dict(optimizer=cell.optimizer, lr=cell.lr, momentum=cell.momentum, method=cell.method,
                seed=cell.seed, recipe=cfg.recipe, init_seconds=init["seconds"],
                init_report=init["report"], bleu=score,
                hypotheses=hyps, train=asdict(train_cfg), model=asdict(model.cfg),
                **result.to_dict())


def run_grid(cfg: GridConfig, out: str | Path, *, max_minutes: float | None = None) -> list[dict]:
    """Run every cell not already stored under `out/cells/`; stop starting new cells after
    `max_minutes`. Returns all stored cells of this grid."""
    cfg.validate()
    out = Path(out)
    stored = json.loads((out / "grid.json").read_text()) if (out / "grid.json").is_file() else {}
    has_cells = any((out / "cells").glob("*.json"))
    if has_cells and stored.get("gradinit_settings", {}) != cfg.gradinit_settings:
        raise ValueError(f"{out} holds a grid with gradinit settings "
                         f"{stored.get('gradinit_settings', {})}, not {cfg.gradinit_settings}: "
                         "give another --out")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    recipe = {opt: mt_settings(cfg.recipe, opt) for opt in ("adam", "sgd")}
    data = load_translation_data(cfg.data_dir, max_words=cfg.max_words, vocab_size=cfg.vocab_size)
    (out / "grid.json").write_text(json.dumps(dict(  # the plateau: a context-free model's loss
        asdict(cfg), recipe_settings=recipe, plateau=data.unigram_loss("valid")), indent=1))
    log.info("grid on %r: %d cells", data, len(cells(cfg)))
    start, waiting = time.perf_counter(), True
    while waiting:   # passes over the cells until none waits on an init another process computes
        waiting = ran = False
        for cell in cells(cfg):
            path = out / "cells" / f"{cell_name(*cell)}.json"
            if path.is_file() or not claim(path):
                continue
            if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
                log.info("time budget reached; run again to continue")
                path.with_suffix(".claim").unlink()
                return load_cells(out)
            try:
                record = json.dumps(run_cell(cfg, data, cell, out))
                write_atomic(path, lambda tmp, text=record: tmp.write_text(text))
                ran = True
            except _Busy:
                waiting = True
            finally:
                path.with_suffix(".claim").unlink(missing_ok=True)
        if waiting and not ran:
            time.sleep(10)
    return load_cells(out)


class _Busy(Exception):
    """An init this cell needs is being computed by another process."""


def load_cells(out: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))]
