"""One step of the user's optimizer on copies of the parameters; the model is never touched.

The model runs through `core.loss.Substituted` (`torch.func.functional_call`) on detached
copies of its trainable tensors; the loss of each batch is backpropagated into the copies, the
optimizer (built over the copies) takes one step, and the step is read off as new - old.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ..core.loss import LossFn, Substituted
from ..core.params import ParamSpec

OptimizerSpec = Union[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]
OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(spec: OptimizerSpec, params: list[torch.Tensor], *, lr: Optional[float],
                   momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer named by `spec` over `params`, or `spec(params)` with its lr set to `lr`."""
    if callable(spec):
        opt = spec(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer=callable must return a torch.optim.Optimizer, got "
                            f"{type(opt).__name__}; e.g. lambda params: torch.optim.AdamW(params, "
                            "lr=1e-3)")
        ours = {id(p) for p in params}
        if not all(id(p) in ours for g in opt.param_groups for p in g["params"]):
            raise ValueError("optimizer=callable must build its optimizer over the tensors it is "
                             "given (diagnose passes copies), not over model.parameters()")
        if lr is not None:
            for group in opt.param_groups:
                group["lr"] = lr
        return opt
    assert lr is not None  # checked by the caller
    if spec == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if spec == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def scalar_loss(loss_fn: LossFn, model: Any, batch: Any, where: str,
                need_grad: bool = True) -> torch.Tensor:
    """The loss as a 0-dim tensor; a non-finite value is returned (it is a finding), not raised."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a floating-point scalar tensor, got {got} "
                         f"({where}); reduce it, e.g. with .mean()")
    if need_grad and not loss.requires_grad:
        raise ValueError(f"the loss does not depend on the model's parameters ({where}); did "
                         "loss_fn call the `model` it was given (not a captured reference)?")
    return loss.reshape(())


def copies_of(specs: list[ParamSpec]) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable tensors, as leaves an optimizer can step."""
    return {s.name: s.param.detach().clone().requires_grad_(True) for s in specs}


def accumulate(model: nn.Module, copies: dict[str, torch.Tensor], loss_fn: LossFn,
               batches: list[Any], after: Optional[Callable[[int], None]] = None) -> list[float]:
    """Backpropagate the mean loss over `batches` into the copies' `.grad` (one backward per
    batch; `after(i)` runs after batch i); returns each batch's loss."""
    stand_in = Substituted(model, copies)
    losses = []
    for i, batch in enumerate(batches):
        loss = scalar_loss(loss_fn, stand_in, batch, f"batch {i + 1}")
        (loss / len(batches)).backward()
        losses.append(float(loss.detach()))
        if after is not None:
            after(i)
    return losses


@torch.no_grad()
def held_out_loss(model: nn.Module, tensors: dict[str, torch.Tensor], loss_fn: LossFn,
                  batch: Any) -> float:
    return float(scalar_loss(loss_fn, Substituted(model, tensors), batch, "held-out batch",
                             need_grad=False))
