"""Initialize the model a Hugging Face `Trainer` trains, before its first training step.

    from initlab.integrations.hf import InitCallback
    trainer = Trainer(model, args, train_dataset=ds, data_collator=collator,
                      callbacks=[InitCallback("gradinit", steps=100)])
    trainer.train()

Contract (needs the extra `initlab[hf]`: transformers and accelerate):
- The method and its settings are checked when the callback is built: an unknown name or
  setting, or a value the method refuses, raises there, not when training starts.
- Runs once, in `on_train_begin` (after the Trainer has prepared the model, the optimizer and
  the train dataloader; before the first step), on the Trainer's model (`trainer.model`, not a
  DDP wrapper). Its parameters are written in place, so the optimizer and the wrapper stay valid.
- Data: the Trainer's train dataloader (its collator, its sampler; under torchrun this rank's
  shard), batches moved to the model's device. The dataloader accelerate prepared is read
  through the loader it wraps, so its own state (epoch, resumption) is left alone.
- Loss: the model's own, `model(**batch).loss` (the batches hold `labels`, as a language-model
  collator makes them); or `loss_fn(model, batch)`.
- GradInit's target: the Trainer's optimizer and learning rate (`args.optim`: Adam kinds give
  `target="adam"`, SGD `"sgd"`; `args.learning_rate`), unless given as settings.
- Skips when resuming (`state.global_step > 0`) and when the model already had a method's
  result written.
- RNG isolated: the torch, Python and NumPy generators are restored afterwards, so training
  draws the same data order and dropout masks as without it.
- Under torchrun (DDP), GradInit averages across ranks and every rank ends identical; any other
  method runs on every rank and rank 0's result is then broadcast. Only rank 0 logs and writes
  `report_path`.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from torch import nn

from ...core.loss import LossFn
from ...core.report import InitReport, applied_by, mark_applied
from ...core.rng import kept_rng
from ...registry import check_settings, method_info
from ..common import run_everywhere

try:
    import transformers
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("initlab.integrations.hf.InitCallback needs transformers and accelerate: "
                      "pip install 'initlab[hf]' (with your torch pinned)") from e

log = logging.getLogger(__name__)
GRADINIT = ("gradinit", "gradinit-authors")


def optimizer_target(args: Any) -> dict[str, Any]:
    """GradInit's target and lr from `TrainingArguments` (empty if the optimizer is neither an
    Adam kind nor SGD)."""
    optim = str(getattr(args.optim, "value", args.optim)).lower()
    target = "adam" if "adam" in optim else "sgd" if optim.startswith("sgd") else None
    return {} if target is None else {"target": target, "lr": args.learning_rate}


class InitCallback(transformers.TrainerCallback):
    """Initialize the trained model with `method` (a registry name) before the first step.

    Args:
        method: an initialization method name (`initlab.available_methods()`).
        loss_fn: `(model, batch) -> scalar`; default: the model's own `.loss`.
        report_path: where rank 0 saves the report (`initlab.apply` replays GradInit's).
        progress: a progress bar on rank 0 (methods that have one).
        **settings: the method's settings (for GradInit: `GradInitConfig` fields).

    After training starts, `callback.report` holds the report (None if skipped or if the method
    returns none) and `callback.skipped` the reason it was skipped.
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

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Optional[nn.Module] = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise ValueError("InitCallback needs the Trainer's model; add it to a Trainer's "
                             "callbacks")
        reason = ("resuming at step " + str(state.global_step) if state.global_step > 0 else
                  f"the model already had {applied_by(model)} scales written"
                  if applied_by(model) else None)
        if reason:
            self.skipped = reason
            if state.is_world_process_zero:
                log.info("InitCallback: %s skipped (%s)", self.method, reason)
            return
        device = next(model.parameters()).device
        with kept_rng(device):
            self.report = self._run(args, model, train_dataloader, state.is_world_process_zero)
        mark_applied(model, self.method)
        if state.is_world_process_zero and self.report is not None:
            log.info("InitCallback: %s", self.report.summary())
            if self.report_path is not None:
                self.report.save(self.report_path)

    def _run(self, args: Any, model: nn.Module, loader: Any, main: bool) -> Optional[InitReport]:
        if not self.info.needs_data:
            return run_everywhere(self.info, model, None, **self.settings)
        if loader is None:
            raise ValueError(f"{self.method} needs the Trainer's train dataloader, and there is none "
                             "(pass train_dataset= to the Trainer)")
        data = getattr(loader, "base_dataloader", loader)  # past accelerate's wrapper
        extra: dict[str, Any] = {} if self.loss_fn is None else {"loss_fn": self.loss_fn}
        if self.method not in GRADINIT:
            return run_everywhere(self.info, model, data, **extra, **self.settings)
        settings = {**optimizer_target(args), **self.settings}
        return self.info.fn(model, data, progress=self.progress and main, **extra, **settings)
