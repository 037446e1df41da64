"""The loss protocol: `loss_fn(model, batch) -> scalar tensor`, and the default one; and, for
methods that need only the model's outputs (LSUV), `forward(model, batch)` on batches of inputs.

Methods call the model through `Substituted`, a stand-in that runs the real module with
`torch.func.functional_call` on substituted parameter tensors. It forwards attribute reads to the
real model, so a user's `loss_fn` can use `model.config`, `model.encoder(...)` is *not* rerouted
(only calling the stand-in itself is), which is why loss functions should call `model(...)`.
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

LossFn = Callable[[Any, Any], torch.Tensor]


_ALIASED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def _has_aliased_modules(model: nn.Module) -> bool:
    """Whether some submodule is reachable under two names (checked once per model)."""
    if model not in _ALIASED:
        _ALIASED[model] = (sum(1 for _ in model.named_modules(remove_duplicate=False))
                           != sum(1 for _ in model.modules()))
    return _ALIASED[model]


class Substituted:
    """Callable like `model`, but with `tensors` (name -> tensor) in place of its parameters."""

    def __init__(self, model: nn.Module, tensors: dict[str, torch.Tensor]):
        self._model = model
        self._tensors = tensors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not _has_aliased_modules(self._model):
            return functional_call(self._model, self._tensors, args, kwargs, tie_weights=True)
        # A module registered under two names (self.a = self.b = Linear) makes functional_call
        # restore one name from the other, leaving the substituted tensor in the model instead
        # of its nn.Parameter (torch 2.13). Put every module's parameter dict back ourselves.
        saved = [(m, dict(m._parameters)) for m in self._model.modules()]
        try:
            return functional_call(self._model, self._tensors, args, kwargs, tie_weights=True)
        finally:
            for module, params in saved:
                module._parameters.clear()
                module._parameters.update(params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def default_loss(model: Callable, batch: Any) -> torch.Tensor:
    """Cross-entropy for `(inputs, targets)`; the model's own `.loss` for dict batches.

    - `(inputs, targets)`: `model(inputs)` (or `model(**inputs)` when inputs is a dict); logits of
      shape (N, C) or (N, ..., C) against integer targets (N,) or (N, ...); `ignore_index=-100`.
    - a mapping: `model(**batch)`, whose output has `.loss` or `["loss"]` (Hugging Face style).
    """
    if isinstance(batch, Mapping):
        out = model(**batch)
        loss = getattr(out, "loss", None)
        if loss is None and isinstance(out, Mapping):
            loss = out.get("loss")
        if loss is None:
            raise ValueError(
                "a dict batch was passed to the model as keyword arguments, but its output has no "
                "`.loss`; include the labels in the batch or pass loss_fn=(model, batch) -> loss"
            )
        return loss
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
        out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
        logits = getattr(out, "logits", out)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if not isinstance(logits, torch.Tensor):
            raise ValueError(
                f"the model returned {type(out).__name__}, not logits; pass loss_fn=(model, batch) -> loss"
            )
        if logits.dim() > 2:  # (N, ..., C) against (N, ...)
            logits = logits.reshape(-1, logits.shape[-1])
            targets = targets.reshape(-1)
        return F.cross_entropy(logits, targets)
    raise ValueError(
        f"the default loss understands (inputs, targets) pairs and dict batches, not a "
        f"{type(batch).__name__}{f' of length {len(batch)}' if hasattr(batch, '__len__') else ''}; "
        "pass loss_fn=(model, batch) -> scalar loss"
    )


def model_inputs(batch: Any) -> Any:
    """The inputs of a batch: a tensor or a mapping is all inputs; a tuple/list is `(inputs,
    targets, ...)` (or `(inputs,)`, as a DataLoader over inputs alone gives), its first element
    the inputs. Several positional inputs go as a tuple in that place: `((x1, x2), y)`."""
    if isinstance(batch, (torch.Tensor, Mapping)):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise ValueError(f"cannot find the model's inputs in a {type(batch).__name__} batch: pass a "
                     "tensor, a dict of keyword inputs, or (inputs, targets) tuples")


def forward(model: Callable, batch: Any) -> Any:
    """The model's output on a batch's inputs (`model_inputs`): `model(x)`, `model(**inputs)`
    for a mapping, `model(*inputs)` for a tuple of positional inputs."""
    inputs = model_inputs(batch)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors in a model's output (a tensor, tuple, dict, `ModelOutput`)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    return [t for v in values for t in output_tensors(v)]


def checked_loss(loss_fn: LossFn, model: Callable, batch: Any, where: str) -> torch.Tensor:
    """Run the loss and insist on a finite, differentiable scalar."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a floating-point scalar tensor, got {shape} ({where}); "
            "reduce it, e.g. with .mean()"
        )
    if not loss.requires_grad:
        raise ValueError(
            f"the loss does not depend on the parameters being initialized ({where}); did the "
            "loss_fn call the `model` it was given (not a captured reference to the real model)?"
        )
    loss = loss.reshape(())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} ({where})")
    return loss
