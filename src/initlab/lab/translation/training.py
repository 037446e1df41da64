"""Training and evaluation for the translation lab: a fixed budget of updates, with or without
warmup, divergence recorded rather than raised, BLEU on the test split.

- Optimizers: Adam with betas (0.9, 0.98) (the Transformer's), or SGD with momentum. Weight
  decay is L2 in the gradient (PyTorch's Adam and SGD), or with `decoupled_weight_decay` taken
  from the weights apart from Adam's moments, p -= lr * wd * p, as fairseq's Adam does (AdamW).
- Schedules (per update s = 0, 1, ...; W warmup updates, R = max(W, decay_start)):
  `inverse_sqrt`: lr * min(1, (s+1)/W) * sqrt(R / max(s+1, R)) -- so a run without warmup
  starts at the peak rate and decays exactly as the warmed-up run does after its warmup;
  `linear`: linear warmup to lr, then linear decay to 0 at the last update; `constant`.
- Loss: label-smoothed cross-entropy on the target tokens (PAD ignored); validation reports the
  plain token-level cross-entropy (nats), without smoothing.
- Divergence: a non-finite training loss, or a mean training loss over an evaluation window above
  `diverge_loss` (default: ln V + 1, a nat worse than a uniform guess) after the first window.
  The curve stops there and the run is marked `diverged`. A run that stalls at a high loss
  without blowing up is not "diverged": its validation loss tells.
- Stall: the validation loss fell less than `STALL` nats after the first evaluation. With
  `stop_stalled=f` a run still stalled at an evaluation after the fraction f of its updates
  stops there (`stalled_step`): the grid spends its budget on the runs that train.
- Gradient clipping is off by default: the study is about stability without it.
- BLEU: sacrebleu's corpus BLEU (13a tokenization) of the detokenized output against the
  Spanish references; without sacrebleu the hypotheses are returned and BLEU is None.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..train import optimizer_step
from .data import EOS, PAD, TokenBatches, TranslationData, pad
from .decoding import beam_search, greedy_decode

log = logging.getLogger(__name__)
STALL = 0.1   # nats: a run whose validation loss fell less than this after its first evaluation


@dataclass
class Seq2SeqConfig:
    optimizer: str = "adam"            # "adam" (betas below) or "sgd" (momentum below)
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    momentum: float = 0.9
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False  # Adam only: fairseq's (AdamW's) decay, see above
    steps: int = 2000                  # the update budget
    warmup: int = 0                    # linear warmup updates (0: none)
    schedule: str = "inverse_sqrt"     # "inverse_sqrt", "linear" or "constant"
    decay_start: int = 0               # inverse_sqrt: decay from update max(warmup, decay_start)
    label_smoothing: float = 0.1
    clip: float | None = None          # global gradient-norm clipping (None: off)
    eval_every: int = 200
    diverge_loss: float | None = None  # None: ln(vocabulary size) + 1
    stop_stalled: float | None = None  # stop a run still stalled after this fraction of steps
    device: str = "cpu"

    def validate(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use 'adam' or 'sgd'")
        if self.schedule not in ("inverse_sqrt", "linear", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}: use 'inverse_sqrt', 'linear' "
                             "or 'constant'")
        if not self.lr > 0 or self.steps < 1 or self.warmup < 0 or self.eval_every < 1:
            raise ValueError("need lr > 0, steps >= 1, warmup >= 0 and eval_every >= 1")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.momentum < 1:
            raise ValueError("label_smoothing and momentum must lie in [0, 1)")
        if self.stop_stalled is not None and not 0 < self.stop_stalled <= 1:
            raise ValueError(f"stop_stalled is a fraction of the run in (0, 1], got "
                             f"{self.stop_stalled!r}")


def lr_factor(step: int, cfg: Seq2SeqConfig) -> float:
    """Multiplier of the base rate at update `step` (0-based); see the module docstring."""
    s = step + 1
    ramp = min(1.0, s / cfg.warmup) if cfg.warmup else 1.0
    if cfg.schedule == "inverse_sqrt":
        r = max(cfg.warmup, cfg.decay_start, 1)
        return ramp * math.sqrt(r / max(s, r))
    if cfg.schedule == "linear" and s > cfg.warmup:
        return ramp * max(0.0, (cfg.steps - step) / max(1, cfg.steps - cfg.warmup))
    return ramp


def seq2seq_loss(model: Any, batch: tuple[torch.Tensor, torch.Tensor],
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean token cross-entropy of `model(src, tgt[:, :-1])` against `tgt[:, 1:]` (PAD ignored).
    Calls the `model` it is given, so GradInit can pass its substituted stand-in."""
    src, tgt = batch
    logits = model(src, tgt[:, :-1])                                   # (B, T-1, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1),
                           ignore_index=PAD, label_smoothing=label_smoothing)


@dataclass
class Seq2SeqResult:
    steps: list[int] = field(default_factory=list)        # update count at each evaluation
    train_loss: list[float] = field(default_factory=list)  # mean smoothed loss over the window
    valid_loss: list[float] = field(default_factory=list)  # plain cross-entropy, nats/token
    diverged: bool = False
    diverged_step: int | None = None
    stalled_step: int | None = None                        # stopped there, still stalled
    seconds: float = 0.0
    cpu_seconds: float = 0.0                               # this process's CPU time

    @property
    def final_valid_loss(self) -> float | None:
        return None if self.diverged or not self.valid_loss else self.valid_loss[-1]

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), final_valid_loss=self.final_valid_loss)


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: TokenBatches, device: str | torch.device) -> float:
    """Token-level cross-entropy (nats, no smoothing) in eval mode."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for src, tgt in batches:
        src, tgt = src.to(device), tgt.to(device)
        n = int(tgt[:, 1:].ne(PAD).sum())
        total += float(seq2seq_loss(model, (src, tgt))) * n
        count += n
    model.train(was)
    return total / max(count, 1)


def make_optimizer(model: nn.Module, cfg: Seq2SeqConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        adam = torch.optim.AdamW if cfg.decoupled_weight_decay else torch.optim.Adam
        return adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_seq2seq(model: nn.Module, train_batches: TokenBatches, valid_batches: TokenBatches,
                  cfg: Seq2SeqConfig, *, vocab_size: int, desc: str = "train") -> Seq2SeqResult:
    """Train `model` in place for `cfg.steps` updates (re-iterating the batches as needed)."""
    cfg.validate()
    device = torch.device(cfg.device)
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    limit = cfg.diverge_loss if cfg.diverge_loss is not None else math.log(vocab_size) + 1
    result, start, step = Seq2SeqResult(), time.perf_counter(), 0
    cpu_start = time.process_time()
    window, n_window = torch.zeros((), device=device), 0
    while step < cfg.steps and not result.diverged and result.stalled_step is None:
        for src, tgt in train_batches:
            loss = seq2seq_loss(model, (src.to(device), tgt.to(device)), cfg.label_smoothing)
            optimizer_step(model, loss, opt, sched, cfg.clip)
            step += 1
            window += loss.detach()
            n_window += 1
            if step % cfg.eval_every and step < cfg.steps:
                continue
            mean = window.item() / n_window   # one host sync per window
            window, n_window = torch.zeros((), device=device), 0
            if not math.isfinite(mean) or (result.steps and mean > limit):
                result.diverged, result.diverged_step = True, step
                log.info("%s: diverged by update %d (window loss %.3g)", desc, step, mean)
                break
            result.steps.append(step)
            result.train_loss.append(mean)
            result.valid_loss.append(evaluate_loss(model, valid_batches, device))
            log.info("%s: update %d/%d, train %.3f, valid %.3f", desc, step, cfg.steps, mean,
                     result.valid_loss[-1])
            if step >= cfg.steps:
                break
            valid = result.valid_loss
            if (cfg.stop_stalled and step >= cfg.stop_stalled * cfg.steps and len(valid) > 1
                    and valid[-1] > valid[0] - STALL):
                result.stalled_step = step
                log.info("%s: still stalled at update %d; stopped", desc, step)
                break
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    return result


def translate(model: nn.Module, sources: list[torch.Tensor], data: TranslationData, *,
              beam: int = 1, batch_size: int = 64, device: str | torch.device = "cpu") -> list[str]:
    """Detokenized translations of id sequences (no EOS), greedy for beam 1, else beam search."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))  # similar lengths together
    by_index: dict[int, str] = {}
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        src = pad([torch.cat([sources[j], torch.tensor([EOS])]) for j in idx], device)
        hyps = greedy_decode(model, src) if beam == 1 else beam_search(model, src, beam)
        by_index.update({j: data.decode(h) for j, h in zip(idx, hyps)})
    return [by_index[i] for i in range(len(sources))]


def bleu(hypotheses: list[str], references: list[str]) -> float | None:
    """sacrebleu corpus BLEU, or None (with a warning) when sacrebleu is not installed."""
    try:
        import sacrebleu
    except ImportError:
        log.warning("sacrebleu is not installed (pip install sacrebleu); BLEU left empty")
        return None
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
