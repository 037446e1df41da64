"""The no-warmup study of the GradInit paper (§4.3, Fig. 1) on English->Spanish Bible verses.

A Post-LN encoder-decoder Transformer trained for a fixed number of updates, without warmup,
over a grid of optimizer settings (Adam over learning rates; SGD over learning rates x
momenta), after each initialization method:

- `default`: the standard Transformer init (Xavier), no warmup;
- `warmup`: the same init *with* linear warmup (the reference the paper's methods try to match);
- `tfixup`: T-Fixup (Huang et al., ICML 2020), no warmup;
- `gradinit`: GradInit with the authors' Transformer recipe (`TRANSFORMER_RECIPE`: Adam target,
  eta 1e-3, gamma 1000), no warmup -- one search, used for every cell;
- `gradinit-sgd`: GradInit for an SGD target at the cell's learning rate (SGD cells only; where
  it is chosen, SGD cells do not also run the Adam-target `gradinit`).

Every finished cell is stored as its own JSON under `<out>/cells/`, and initialized weights
under `<out>/inits/`, so an interrupted grid resumes where it stopped; several processes on one
machine can fill the same grid (each claims a cell before running it); `--report-only` rebuilds
the table and the heatmap from the stored cells.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ...methods.gradinit import TRANSFORMER_RECIPE
from ...registry import initialize
from ..store import claim, write_atomic
from .data import TokenBatches, TranslationData, load_translation_data
from .model import TransformerConfig, TranslationTransformer
from .training import Seq2SeqConfig, bleu, seq2seq_loss, train_seq2seq, translate

log = logging.getLogger(__name__)
METHODS = ("default", "warmup", "tfixup", "gradinit", "gradinit-sgd")


@dataclass
class GridConfig:
    adam_lrs: list[float] = field(default_factory=lambda: [2.5e-4, 5e-4, 1e-3, 2e-3])
    sgd_lrs: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    momenta: list[float] = field(default_factory=lambda: [0.9, 0.98])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    layers: int = 6                   # encoder and decoder layers each
    d_model: int = 128
    nhead: int = 4
    ffn: int = 512
    dropout: float = 0.1
    norm: str = "post"
    max_words: int = 16
    vocab_size: int = 4000
    batch_size: int = 32
    steps: int = 600                  # the update budget of every run
    warmup: int = 150                 # the reference's warmup; decay starts here for all runs
    eval_every: int = 100
    gradinit_steps: int = 780         # the authors' recipe (one epoch of IWSLT'14)
    gradinit_sgd_steps: int = 200     # the SGD-target variant: one search per learning rate
    beam: int = 1
    seed: int = 0
    device: str = "cpu"
    data_dir: str | None = None

    def validate(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown grid methods {sorted(unknown)}; choose from {METHODS}")
        if not (self.adam_lrs or self.sgd_lrs) or self.layers < 1 or self.steps < 1:
            raise ValueError("the grid needs at least one learning rate, layers >= 1, steps >= 1")


def cells(cfg: GridConfig) -> list[tuple[str, float, float | None, str]]:
    """(optimizer, lr, momentum, method) for every cell, Adam first, methods innermost.
    SGD cells get `gradinit` (the Adam-target recipe) only when `gradinit-sgd` is not chosen."""
    sgd_methods = [m for m in cfg.methods if m != "gradinit" or "gradinit-sgd" not in cfg.methods]
    out = []
    for lr in cfg.adam_lrs:
        out += [("adam", lr, None, m) for m in cfg.methods if m != "gradinit-sgd"]
    for mom in cfg.momenta:
        for lr in cfg.sgd_lrs:
            out += [("sgd", lr, mom, m) for m in sgd_methods]
    return out


def cell_name(opt: str, lr: float, mom: float | None, method: str) -> str:
    return f"{opt}-lr{lr:g}" + (f"-m{mom:g}" if mom is not None else "") + f"-{method}"


def build(cfg: GridConfig, vocab_size: int) -> TranslationTransformer:
    torch.manual_seed(cfg.seed)  # the same constructor draws for every method and cell
    tcfg = TransformerConfig(vocab_size, d_model=cfg.d_model, nhead=cfg.nhead, ffn=cfg.ffn,
                             encoder_layers=cfg.layers, decoder_layers=cfg.layers,
                             dropout=cfg.dropout, norm=cfg.norm)
    return TranslationTransformer(tcfg, device=cfg.device)


def initialized(cfg: GridConfig, data: TranslationData, method: str, lr: float,
                out: Path) -> tuple[TranslationTransformer, float]:
    """The model after `method` (cached as a state dict), and the seconds the init took."""
    model = build(cfg, data.vocab_size)
    if method in ("default", "warmup"):
        return model, 0.0
    key = {"tfixup": "tfixup", "gradinit": f"gradinit-s{cfg.gradinit_steps}",
           "gradinit-sgd": f"gradinit-sgd-lr{lr:g}-s{cfg.gradinit_sgd_steps}"}[method]
    path = out / "inits" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() and not claim(path):
        raise _Busy(key)   # another process computes this init: do other cells meanwhile
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state"])
        return model, saved["seconds"]
    start = time.perf_counter()
    try:
        if method == "tfixup":
            initialize(model, "tfixup", seed=cfg.seed)
        else:
            settings = dict(TRANSFORMER_RECIPE, steps=cfg.gradinit_steps, batching="split")
            if method == "gradinit-sgd":
                settings.update(target="sgd", lr=lr, gamma=1.0, steps=cfg.gradinit_sgd_steps)
            batches = TokenBatches(data.src["train"], data.tgt["train"], cfg.batch_size,
                                   shuffle=True, seed=cfg.seed + 7919, device=cfg.device)
            loss_fn = partial(seq2seq_loss, label_smoothing=0.1)
            initialize(model, "gradinit", data=batches, loss_fn=loss_fn, **settings)
        seconds = time.perf_counter() - start
        write_atomic(path, lambda tmp: torch.save({"state": model.state_dict(), "seconds": seconds},
                                            tmp))
    finally:
        path.with_suffix(".claim").unlink(missing_ok=True)
    return model, seconds


def run_cell(cfg: GridConfig, data: TranslationData, cell: tuple, out: Path) -> dict[str, Any]:
    opt, lr, mom, method = cell
    model, init_seconds = initialized(cfg, data, method, lr, out)
    train_cfg = Seq2SeqConfig(optimizer=opt, lr=lr, momentum=mom or 0.0, steps=cfg.steps,
                              warmup=cfg.warmup if method == "warmup" else 0,
                              decay_start=cfg.warmup, eval_every=cfg.eval_every,
                              device=cfg.device)
    train_b = TokenBatches(data.src["train"], data.tgt["train"], cfg.batch_size, shuffle=True,
                           seed=cfg.seed, device=cfg.device)
    valid_b = TokenBatches(data.src["valid"], data.tgt["valid"], 128, device=cfg.device)
    torch.manual_seed(cfg.seed)
    result = train_seq2seq(model, train_b, valid_b, train_cfg, vocab_size=data.vocab_size,
                           desc=cell_name(*cell))
    hyps, score = None, None
    if not result.diverged:
        start = time.perf_counter()
        hyps = translate(model, data.src["test"], data, beam=cfg.beam, device=cfg.device)
        score = bleu(hyps, [t[2] for t in data.text["test"]])
        log.info("%s: test BLEU %s (%.0f s decoding)", cell_name(*cell), score,
                 time.perf_counter() - start)
    return dict(optimizer=opt, lr=lr, momentum=mom, method=method, init_seconds=init_seconds,
                bleu=score, hypotheses=hyps, train=asdict(train_cfg), **result.to_dict())


def run_grid(cfg: GridConfig, out: str | Path, *, max_minutes: float | None = None) -> list[dict]:
    """Run every cell not already stored under `out/cells/`; stop starting new cells after
    `max_minutes`. Returns all stored cells of this grid."""
    cfg.validate()
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(asdict(cfg), indent=1))
    data = load_translation_data(cfg.data_dir, max_words=cfg.max_words, vocab_size=cfg.vocab_size)
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
