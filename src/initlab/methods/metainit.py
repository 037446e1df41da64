"""MetaInit: tune each weight tensor's norm so the gradient quotient is small.

Dauphin & Schoenholz, "MetaInit: Initializing learning by learning to initialize", NeurIPS 2019.
With g = grad L and Hg = grad(|g|^2 / 2) (a double backward), over all n parameter entries:

    GQ = (1/n) sum_j | (g_j - (Hg)_j) / (g_j + eps * sign(g_j)) - 1 |      (eps * sign detached)

GQ is 0 when one gradient step would not change the gradient (a locally linear loss). For every
tensor W with >= 2 dims, MetaInit descends GQ by sign-momentum on W's norm:
d = sign(<W, dGQ/dW>), m <- momentum * m - lr * d, |W| <- |W| + m (direction kept).

Where initlab departs from the authors' code, and why:
- The model is never edited during the search: it runs through `functional_call` on
  W = (|W| / |W0|) * W0, the norms kept in float64, and the result is written once at the end.
- A norm may not fall below `min_scale` times its start (authors: no floor; a norm that crossed
  zero would flip the tensor's sign). sign(0) is taken as +1 in the denominator, as they do.
- Attention runs on PyTorch's math kernel during the search: the fused ones have no double
  backward.
- Batch-norm layers use the batch's statistics during the search (as in GradInit) where the
  authors call `model.eval()`; running statistics are never updated.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..core.batches import BatchStream
from ..core.checks import integer, positive, require
from ..core.finish import finish, unchanged_on_error
from ..core.loss import LossFn, Substituted, checked_loss, default_loss
from ..core.modes import double_backward_attention, search_mode, write_params
from ..core.params import ParamFilter, select_params, trainable_params
from ..core.progress import progress_bar
from ..core.report import InitReport
from ..core.rules import generator
from ..registry import register

log = logging.getLogger(__name__)


@dataclass
class MetaInitConfig:
    lr: float = 0.1                 # step on each norm (the paper's 0.1)
    momentum: float = 0.9           # sign-momentum coefficient
    steps: int = 500                # search iterations
    eps: float = 1e-5               # keeps the quotient's denominator away from 0
    min_scale: float = 0.01         # floor on |W| / |W0|
    data_free: bool = False         # the paper's mode: random normal inputs, random labels
    input_shape: Optional[tuple[int, ...]] = None  # data-free: (batch, ...) of the inputs
    num_classes: Optional[int] = None              # data-free: labels drawn from [0, num_classes)
    seed: Optional[int] = None      # data-free draws; None: torch's global generator

    def validate(self) -> None:
        positive("lr", self.lr)
        positive("eps", self.eps)
        integer("steps", self.steps)
        require(0 <= self.momentum < 1, f"momentum must lie in [0, 1), got {self.momentum!r}")
        require(0 < self.min_scale < 1, f"min_scale must lie in (0, 1), got {self.min_scale!r}")
        if self.data_free:
            shape = self.input_shape = tuple(self.input_shape or ())
            require(len(shape) >= 2 and all(
                isinstance(s, int) and s >= 1 for s in shape),
                f"data_free=True needs input_shape=(batch, ...) of positive ints, got {shape!r}")
            integer("num_classes", self.num_classes, minimum=2)


def _nonzero_sign(g: torch.Tensor) -> torch.Tensor:
    return torch.where(g >= 0, 1.0, -1.0).to(g.dtype)


def gradient_quotient(loss: torch.Tensor, tensors: list[torch.Tensor],
                      eps: float = 1e-5) -> torch.Tensor:
    """GQ of `loss` at `tensors` (leaves that require grad), differentiable with respect to them."""
    gs = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
    if all(g is None for g in gs):
        raise ValueError("the loss does not depend on any parameter; did loss_fn call the "
                         "`model` it was given?")
    gs = [torch.zeros_like(t) if g is None else g for g, t in zip(gs, tensors)]
    half = sum((g * g).sum() for g in gs) / 2
    if half.requires_grad:
        hgs = torch.autograd.grad(half, tensors, create_graph=True, allow_unused=True)
        hgs = [torch.zeros_like(t) if h is None else h for h, t in zip(hgs, tensors)]
    else:  # the loss is linear in every parameter: H = 0
        hgs = [torch.zeros_like(t) for t in tensors]
    n = sum(t.numel() for t in tensors)
    total = sum(((g - hg) / (g + eps * _nonzero_sign(g).detach()) - 1).abs().sum()
                for g, hg in zip(gs, hgs))
    return total / n


class _RandomBatches:
    """The paper's data-free inputs: x ~ N(0, 1) of `shape`, labels uniform in [0, classes)."""

    def __init__(self, shape: tuple[int, ...], classes: int, seed: Optional[int],
                 device: torch.device, dtype: torch.dtype):
        self.shape, self.classes, self.gen = tuple(shape), classes, generator(seed)
        self.device, self.dtype = device, dtype

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(self.shape, generator=self.gen, dtype=self.dtype)
        y = torch.randint(0, self.classes, (self.shape[0],), generator=self.gen)
        return x.to(self.device), y.to(self.device)


@register("metainit", config=MetaInitConfig, needs_data=True,
          description="tune weight norms by sign-momentum to minimize the gradient quotient",
          paper="Dauphin & Schoenholz, NeurIPS 2019")
def metainit(
    model: nn.Module,
    data: Optional[Iterable] = None,
    *,
    loss_fn: Optional[LossFn] = None,
    params: Optional[ParamFilter] = None,
    exclude: Optional[ParamFilter] = None,
    progress: bool = False,
    **settings: Any,
) -> InitReport:
    """Rescale each weight tensor (>= 2 dims) of `model` with MetaInit, in place.

    Args:
        model: any `nn.Module`; written once at the end, left bitwise unchanged (with its modes
            and buffers) on any error.
        data: an iterable of batches (one per step, re-iterated when exhausted); or None with
            `data_free=True, input_shape=(batch, ...), num_classes=C` for random inputs/labels.
        loss_fn: `(model, batch) -> scalar`; default cross-entropy / `model(**batch).loss`.
        params / exclude: which >= 2-dim tensors get tuned (regex, module type, callable, list).
            The gradient quotient always covers every trainable tensor, as in the paper.
        **settings: fields of `MetaInitConfig` (lr, momentum, steps, eps, data_free, ...).

    Returns:
        a `ScalesReport`: scales = final |W| / |W0| of the tuned tensors, history of the
        gradient quotient and the loss per step (`summary()` and `plot()` show both).
    """
    cfg = MetaInitConfig(**settings)
    if data is not None and cfg.data_free:
        raise ValueError("metainit got both data= and data_free=True: with data, drop "
                         "data_free=True; for the paper's random inputs, pass data=None")
    if data is None and not cfg.data_free:
        raise ValueError("metainit needs data=<iterable of batches>, or data_free=True with "
                         "input_shape=(batch, ...) and num_classes= for random inputs")
    cfg.validate()
    specs = trainable_params(model)
    mask = select_params(specs, params, exclude)
    tuned = [m and s.param.dim() >= 2 and bool(s.param.detach().abs().sum() > 0)
             for s, m in zip(specs, mask)]
    if not any(tuned):
        raise ValueError("MetaInit tunes the norms of non-zero tensors with >= 2 dims, and the "
                         "model has none selected" + (" (check params=/exclude=)" if specs else ""))
    names, w0 = [s.name for s in specs], [s.param.detach() for s in specs]
    acc = torch.float64
    norm0 = torch.stack([w.norm().to(acc) for w in w0])
    norms, memory = norm0.clone(), torch.zeros(len(specs), dtype=acc)
    active = torch.tensor(tuned)
    device = specs[0].param.device
    stream: Any = (_RandomBatches(cfg.input_shape, cfg.num_classes, cfg.seed, device, w0[0].dtype)
                   if cfg.data_free else BatchStream(data, device=device))
    loss_fn = loss_fn or default_loss
    history: list[dict[str, Any]] = []
    bar = progress_bar(cfg.steps, progress, "metainit")
    t = 0
    try:
        with unchanged_on_error("metainit", lambda: f"at iteration {t}"):
            with search_mode(model), double_backward_attention():
                for t in range(cfg.steps):
                    scale = (norms / norm0).tolist()
                    leaves = [(w * (s if k else 1.0)).requires_grad_()
                              for w, s, k in zip(w0, scale, tuned)]
                    loss = checked_loss(loss_fn, Substituted(model, dict(zip(names, leaves))),
                                        stream.next(), f"iteration {t}")
                    gq = gradient_quotient(loss, leaves, cfg.eps)
                    if not torch.isfinite(gq):
                        raise FloatingPointError(f"non-finite gradient quotient {gq.item()} "
                                                 f"(iteration {t})")
                    picked = [p for p, k in zip(leaves, tuned) if k]
                    grads = torch.autograd.grad(gq, picked, allow_unused=True)
                    dots = torch.zeros(len(specs), dtype=acc)
                    dots[active] = torch.stack([
                        torch.zeros((), dtype=acc) if g is None else
                        torch.vdot(p.detach().reshape(-1), g.reshape(-1)).to(acc)
                        for p, g in zip(picked, grads)])
                    if not bool(torch.isfinite(dots).all()):
                        raise FloatingPointError(f"non-finite GQ gradient (iteration {t})")
                    memory = torch.where(active, cfg.momentum * memory - cfg.lr * dots.sign(), memory)
                    norms = torch.maximum(norms + memory, cfg.min_scale * norm0)
                    history.append(dict(iteration=t, gq=gq.item(), loss=loss.item()))
                    bar.update(1)
                    if (t + 1) % max(1, cfg.steps // 10) == 0:
                        log.info("metainit %d/%d: GQ %.4g, loss %.4g", t + 1, cfg.steps,
                                 history[-1]["gq"], history[-1]["loss"])
            scale = (norms / norm0).tolist()
            write_params([s.param for s, k in zip(specs, tuned) if k],
                         [w * a for w, a, k in zip(w0, scale, tuned) if k])
    finally:
        bar.close()
    return finish(model, "metainit", settings=dict(asdict(cfg), params=repr(params),
                                                   exclude=repr(exclude)),
                  history=history, specs=specs,
                  scales={s.name: a for s, a, k in zip(specs, scale, tuned) if k})


