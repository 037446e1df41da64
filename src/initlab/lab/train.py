"""A plain training loop: one optimizer, a per-step schedule, evaluation after every epoch.

A run whose training loss becomes non-finite stops and is recorded as diverged (with its epoch)
instead of raising, so one bad seed does not end an experiment.

`TrainConfig` fields left at None are taken from a recipe (`initlab.lab.recipes`): `compare`
fills them from its recipe, `train` from `lab-default`. The optimizer's parameter groups follow
the GradInit code's train_cifar.py: `decay_norm=False` exempts normalization layers' parameters
from weight decay; `bias_lr_scale` multiplies the learning rate of biases and scalar multipliers
(parameters named *bias*, single-element parameters).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.params import NORM_TYPES
from ..core.progress import progress_bar
from .data import Batches
from .distributed import mean_over_ranks
from .recipes import recipe

log = logging.getLogger(__name__)


RECIPE_FIELDS = ("epochs", "optimizer", "lr", "momentum", "weight_decay", "decay_norm",
                 "bias_lr_scale", "schedule", "warmup_epochs", "clip")


@dataclass
class TrainConfig:
    """None: the recipe's value (lab-default's in brackets)."""
    epochs: int | None = None              # [10]
    optimizer: str | None = None           # "sgd" (with momentum) or "adam" [sgd]
    lr: float | None = None                # [0.1]
    momentum: float | None = None          # sgd only [0.9]
    weight_decay: float | None = None      # [5e-4]
    decay_norm: bool | None = None         # weight decay on normalization layers too [True]
    bias_lr_scale: float | None = None     # lr factor for biases and scalars [1.0]
    schedule: str | None = None            # "cosine" (per step, to 0) or "constant" [cosine]
    warmup_epochs: float | None = None     # linear warmup from 0, in epochs [0]
    clip: float | None = None              # clip the global gradient L2 norm; 0: off [off]
    device: str = "cpu"
    progress: bool = False                 # tqdm bars (for a person watching)

    def filled(self, recipe_settings: dict[str, Any]) -> TrainConfig:
        """A copy with every None field taken from `recipe_settings["train.<field>"]`."""
        return replace(self, **{f: recipe_settings.get(f"train.{f}") for f in RECIPE_FIELDS
                                if getattr(self, f) is None})

    def validate(self) -> None:
        missing = [f for f in RECIPE_FIELDS if f != "clip" and getattr(self, f) is None]
        if missing:
            raise ValueError(f"unset training settings {missing}: fill them from a recipe "
                             "(TrainConfig.filled) or give them")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use 'sgd' or 'adam'")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}: use 'cosine' or 'constant'")
        if self.epochs < 1 or not self.lr > 0 or self.warmup_epochs < 0:
            raise ValueError("need epochs >= 1, lr > 0 and warmup_epochs >= 0")
        if not self.bias_lr_scale > 0 or self.weight_decay < 0 or (self.clip or 0) < 0:
            raise ValueError("need bias_lr_scale > 0, weight_decay >= 0 and clip >= 0")


@dataclass
class RunResult:
    """Per-epoch curves of one run; curves stop at the epoch a diverged run blew up."""
    test_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    diverged: bool = False
    diverged_epoch: int | None = None     # 1-based epoch in which the loss went non-finite
    seconds: float = 0.0                  # the whole run, evaluations included
    steps_per_epoch: int = 0
    step_seconds: float | None = None     # mean time of one training step (no evaluation)

    @property
    def first_epoch_acc(self) -> float | None:
        return self.test_acc[0] if self.test_acc else None

    @property
    def best_acc(self) -> float | None:
        return max(self.test_acc) if self.test_acc else None

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), first_epoch_acc=self.first_epoch_acc, best_acc=self.best_acc)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: {"params", "names", "lr", "weight_decay"}, one per
    distinct (lr, weight decay), in the order their first parameter appears."""
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            norm = isinstance(module, NORM_TYPES)
            scalar_or_bias = "bias" in attr or (p.numel() == 1 and not norm)
            lr = cfg.lr * (cfg.bias_lr_scale if scalar_or_bias else 1.0)
            wd = 0.0 if norm and not cfg.decay_norm else cfg.weight_decay
            group = groups.setdefault((lr, wd), {"params": [], "names": [], "lr": lr,
                                                 "weight_decay": wd})
            group["params"].append(p)
            group["names"].append(f"{module_name}.{attr}" if module_name else attr)
    return list(groups.values())


def describe_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups without their tensors (for results.json)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in groups]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=cfg.lr)


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
    """Train `model` (in place) with cross-entropy; evaluate on `test_batches` after each epoch.
    Settings `cfg` leaves at None are lab-default's."""
    cfg = cfg.filled(recipe("lab-default").resolve())
    cfg.validate()
    device = torch.device(cfg.device)
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    steps_per_epoch = len(train_batches)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, cfg.schedule))
    result = RunResult(steps_per_epoch=steps_per_epoch)
    bar = progress_bar(total, cfg.progress, desc)
    start = time.perf_counter()
    stepping, steps = 0.0, 0                       # time in training steps, and their number
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
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
        stepping, steps = stepping + time.perf_counter() - epoch_start, steps + steps_per_epoch
        result.step_seconds = stepping / steps
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

