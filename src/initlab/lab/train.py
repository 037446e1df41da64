"""A plain training loop: one optimizer, a per-step schedule, evaluation after every epoch.

A run whose training loss becomes non-finite stops and is recorded as diverged (with its epoch)
instead of raising, so one bad seed does not end an experiment.
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

from ..core.progress import progress_bar
from .data import Batches
from .distributed import mean_over_ranks

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "sgd"          # "sgd" (with momentum) or "adam"
    lr: float = 0.1
    momentum: float = 0.9           # sgd only
    weight_decay: float = 5e-4
    schedule: str = "cosine"        # "cosine" (to 0 at the last step) or "constant"
    warmup_epochs: float = 0.0      # linear warmup from 0, counted in epochs (may be fractional)
    clip: float | None = None    # clip the global gradient L2 norm to this value
    device: str = "cpu"
    progress: bool = False          # tqdm bars (for a person watching)

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use 'sgd' or 'adam'")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}: use 'cosine' or 'constant'")
        if self.epochs < 1 or not self.lr > 0 or self.warmup_epochs < 0:
            raise ValueError("need epochs >= 1, lr > 0 and warmup_epochs >= 0")


@dataclass
class RunResult:
    """Per-epoch curves of one run; curves stop at the epoch a diverged run blew up."""
    test_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    diverged: bool = False
    diverged_epoch: int | None = None     # 1-based epoch in which the loss went non-finite
    seconds: float = 0.0

    @property
    def first_epoch_acc(self) -> float | None:
        return self.test_acc[0] if self.test_acc else None

    @property
    def best_acc(self) -> float | None:
        return max(self.test_acc) if self.test_acc else None

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), first_epoch_acc=self.first_epoch_acc, best_acc=self.best_acc)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def optimizer_step(model: nn.Module, loss: torch.Tensor, opt: torch.optim.Optimizer,
                   sched: torch.optim.lr_scheduler.LRScheduler, clip: float | None) -> None:
    """Backward, optional gradient-norm clipping, optimizer and schedule step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    sched.step()


def evaluate(model: nn.Module, batches: Batches, device: str | torch.device = "cpu"):
    """(mean cross-entropy, accuracy) of `model` on `batches`, in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train(was_training)
    return total_loss / max(n, 1), correct / max(n, 1)


def train(model: nn.Module, train_batches: Batches, test_batches: Batches,
          cfg: TrainConfig, *, desc: str = "train") -> RunResult:
    """Train `model` (in place) with cross-entropy; evaluate on `test_batches` after each epoch."""
    cfg.validate()
    device = torch.device(cfg.device)
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    steps_per_epoch = len(train_batches)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, cfg.schedule))
    result = RunResult()
    bar = progress_bar(total, cfg.progress, desc)
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        running = torch.zeros((), device=device)
        for x, y in train_batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer_step(model, loss, opt, sched, cfg.clip)
            running += loss.detach()
            bar.update(1)
        # One host sync per epoch: a non-finite step makes the running sum non-finite too.
        # Under torchrun: the mean over ranks, so every rank stops together.
        train_loss = mean_over_ranks(running).item() / steps_per_epoch
        if not math.isfinite(train_loss):
            result.diverged, result.diverged_epoch = True, epoch
            log.warning("%s: training loss became non-finite in epoch %d; run marked diverged",
                        desc, epoch)
            break
        test_loss, test_acc = evaluate(model, test_batches, device)
        result.train_loss.append(train_loss)
        result.test_loss.append(test_loss)
        result.test_acc.append(test_acc)
        # A line per epoch: at INFO without progress bars (no terminal), under them at DEBUG.
        log.log(logging.DEBUG if cfg.progress else logging.INFO,
                "%s epoch %d/%d: train loss %.4f, test loss %.4f, test acc %.4f", desc, epoch,
                cfg.epochs, train_loss, test_loss, test_acc)
    bar.close()
    result.seconds = time.perf_counter() - start
    return result

