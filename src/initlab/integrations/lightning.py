"""Initialize the model a Lightning `Trainer` trains, before its first training step.

    from initlab.integrations.lightning import InitCallback
    trainer = L.Trainer(callbacks=[InitCallback("gradinit", steps=100, lr=0.1)])
    trainer.fit(module, train_loader)

Contract (needs the extra `initlab[lightning]`, i.e. `lightning>=2.0`):
- The method and its settings are checked when the callback is built: an unknown name or
  setting, or a value the method refuses, raises there, not when the fit starts.
- Runs once, in `on_train_start` (after the strategy has set up the model, the optimizers and the
  train dataloader; before the first step), on the `LightningModule` itself. Its parameters are
  written in place, so the optimizers Lightning built and a DDP wrapper stay valid.
- Data: the Trainer's train dataloader (with its `DistributedSampler` under DDP). Batches are
  moved to the module's device; Lightning's batch-transfer hooks are not applied.
- Loss: `loss_fn(model, batch)` if given (it must call the `model` it gets); otherwise the
  module's own `training_step(batch, 0)`, run with GradInit's substituted parameters (its loss,
  or `["loss"]` of a dict it returns). `self.log` calls inside it are muted during the search.
- Skips when resuming (`fit(ckpt_path=...)`), when the Trainer has already taken steps, and when
  the module already had scales written.
- RNG isolated: the torch (CPU and the module's CUDA device), Python and NumPy generators are
  restored afterwards, so training draws the same data order and dropout masks as without it.
- Under a multi-process strategy (`ddp`), GradInit averages across ranks and every rank ends
  identical; any other method runs on every rank and rank 0's result is then broadcast. Only
  rank 0 logs and writes `report_path`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..core.loss import LossFn
from ..core.report import InitReport, applied_by, mark_applied
from ..core.rng import kept_rng
from ..registry import check_settings, method_info
from .common import run_everywhere

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("initlab.integrations.lightning needs Lightning: "
                      "pip install 'initlab[lightning]' (with your torch pinned)") from e

log = logging.getLogger(__name__)
GRADINIT = ("gradinit", "gradinit-authors")  # distributed-aware: run with the training step's loss


class _TrainingStep(nn.Module):
    """A module whose forward is `module.training_step(batch, 0)`, so that GradInit's
    `functional_call` substitutes the LightningModule's parameters inside the user's own step."""

    def __init__(self, module: pl.LightningModule):
        super().__init__()
        self.module = module

    def forward(self, batch: Any) -> torch.Tensor:
        out = self.module.training_step(batch, 0)
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if not isinstance(loss, torch.Tensor):
            raise ValueError(f"training_step returned {type(out).__name__}, not a loss (or a dict "
                             "with 'loss'); pass InitCallback(..., loss_fn=(model, batch) -> loss)")
        return loss


def _step_loss(model: Callable, batch: Any) -> torch.Tensor:
    return model(batch)


@contextlib.contextmanager
def _muted_logging(module: pl.LightningModule) -> Iterator[None]:
    """`self.log` / `self.log_dict` do nothing (the search's losses are not training metrics)."""
    names = ("log", "log_dict")
    own = {n: module.__dict__[n] for n in names if n in module.__dict__}
    for n in names:
        object.__setattr__(module, n, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for n in names:
            object.__delattr__(module, n)
            if n in own:
                object.__setattr__(module, n, own[n])


class InitCallback(pl.Callback):
    """Initialize the trained module with `method` (a registry name) before the first step.

    Args:
        method: an initialization method name (`initlab.available_methods()`).
        loss_fn: `(model, batch) -> scalar` for data-driven methods; default: the module's
            `training_step` (GradInit) or the method's own default.
        report_path: where rank 0 saves the report (`initlab.apply` replays it).
        progress: a progress bar on rank 0.
        **settings: the method's settings (for GradInit: `GradInitConfig` fields).

    After the fit starts, `callback.report` holds the `InitReport` (None if skipped).
    """

    def __init__(self, method: str = "gradinit", *, loss_fn: Optional[LossFn] = None,
                 report_path: Optional[str | os.PathLike] = None, progress: bool = False,
                 **settings: Any):
        self.info = method_info(method)  # a KeyError listing the names, at construction
        check_settings(method, settings)  # an unknown setting or a refused value, here too
        self.method, self.loss_fn, self.settings = method, loss_fn, settings
        self.report_path, self.progress = report_path, progress
        self.report: Optional[InitReport] = None
        self.skipped: Optional[str] = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reason = self._skip_reason(trainer, pl_module)
        if reason:
            self.skipped = reason
            if trainer.is_global_zero:
                log.info("InitCallback: %s skipped (%s)", self.method, reason)
            return
        with kept_rng(pl_module.device), _muted_logging(pl_module):
            self.report = self._run(trainer, pl_module)
        mark_applied(pl_module, self.method)
        if trainer.is_global_zero:
            if self.report is not None:
                log.info("InitCallback: %s", self.report.summary())
                if self.report_path is not None:
                    self.report.save(self.report_path)

    def _skip_reason(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Optional[str]:
        if trainer.ckpt_path is not None:
            return f"resuming from {trainer.ckpt_path}"
        if trainer.global_step > 0:
            return f"the trainer is at step {trainer.global_step}"
        if applied_by(pl_module):
            return f"the module already had {applied_by(pl_module)} scales written"
        return None

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Optional[InitReport]:
        if not self.info.needs_data:
            return run_everywhere(self.info, pl_module, None, **self.settings)
        data = trainer.train_dataloader
        if data is None:
            raise ValueError(f"{self.method} needs the Trainer's train dataloader, and there is none")
        if self.method not in GRADINIT:
            extra = {} if self.loss_fn is None else {"loss_fn": self.loss_fn}
            return run_everywhere(self.info, pl_module, data, **extra, **self.settings)
        show = self.progress and trainer.is_global_zero
        if self.loss_fn is not None:
            return self.info.fn(pl_module, data, loss_fn=self.loss_fn, progress=show, **self.settings)
        report = self.info.fn(_TrainingStep(pl_module), data, loss_fn=_step_loss, progress=show,
                              **self.settings)
        strip = len("module.")  # the adapter's prefix: names as in pl_module.named_parameters()
        report.scales = {k[strip:]: v for k, v in report.scales.items()}
        report.shapes = {k[strip:]: v for k, v in report.shapes.items()}
        return report

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "done": self.report is not None or self.skipped is not None}
