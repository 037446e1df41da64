"""The grid's initialization methods, each applied to a freshly built model through the registry.

- `default`: the standard Transformer init (Xavier, the model's `reset_parameters`), no warmup;
- `warmup`: the same init *with* linear warmup (the reference the other methods try to match);
- `gradinit-authors`: the authors' GradInit (`faithful=True`) with their Transformer recipe
  (`TRANSFORMER_RECIPE`: Adam target, eta 1e-3, gamma 1000, tau 2.5e-3, 780 iterations), one
  search per seed used in every Adam cell (Adam cells only);
- `gradinit`: initlab's default GradInit search for the cell's optimizer: an Adam target with
  betas (0.9, 0.98) in Adam cells, an SGD target in SGD cells, at the cell's learning rate; the
  search picks its own budget (one search per optimizer, rate and seed); `gradinit_settings`
  (the command line's `--set gradinit.KEY=VALUE`) are passed on and named in its cache key;
- `tfixup` (Huang et al., ICML 2020), `admin` (Liu et al., EMNLP 2020; profiled on the first
  training batch of the method's own batch order), `deepnet` (Wang et al., 2022);
- `gradinit-sgd` (not in the default list): the authors' algorithm with an SGD target at the
  cell's rate, gamma 1, `gradinit_sgd_steps` iterations (SGD cells only).

`init_key` names the cached result (None: nothing to compute); `apply_method` computes it;
`report_summary` keeps what the grid records of its report (for GradInit: the iterations run
and how the search ended).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Optional

from torch import nn

from ...methods.gradinit import TRANSFORMER_RECIPE
from ...registry import initialize
from ..store import plain_outcome
from .data import TokenBatches, TranslationData
from .training import seq2seq_loss

METHODS = ("default", "warmup", "gradinit-authors", "gradinit", "gradinit-warmstart", "tfixup",
           "admin", "deepnet", "gradinit-sgd")
DEFAULT_METHODS = METHODS[:-1]
ADAM_ONLY, SGD_ONLY = ("gradinit-authors",), ("gradinit-sgd",)
GRID_SET = ("target", "lr", "betas", "faithful", "loss_fn")  # what the grid gives gradinit itself


def runs_in(method: str, optimizer: str) -> bool:
    return method not in (SGD_ONLY if optimizer == "adam" else ADAM_ONLY)


def init_key(method: str, optimizer: str, lr: float, seed: int, *, gradinit_steps: int,
             gradinit_sgd_steps: int,
             gradinit_settings: Optional[dict[str, Any]] = None) -> Optional[str]:
    """The name of the cached initialization a cell needs (None for `default` and `warmup`)."""
    given = "".join(f"-{k}={v}" for k, v in sorted((gradinit_settings or {}).items()))
    key = {"default": None, "warmup": None, "tfixup": "tfixup", "admin": "admin",
           "deepnet": "deepnet", "gradinit-authors": f"gradinit-authors-s{gradinit_steps}",
           "gradinit": f"gradinit-{optimizer}-lr{lr:g}{given}",
           "gradinit-warmstart": "gradinit-warmstart",
           "gradinit-sgd": f"gradinit-sgd-lr{lr:g}-s{gradinit_sgd_steps}"}[method]
    return None if key is None else key + (f"-seed{seed}" if seed else "")


def apply_method(model: nn.Module, method: str, data: TranslationData, *, optimizer: str,
                 lr: float, seed: int, batch_size: int, label_smoothing: float,
                 gradinit_steps: int, gradinit_sgd_steps: int, device: str,
                 gradinit_settings: Optional[dict[str, Any]] = None) -> Any:
    """Initialize `model` in place with `method` for a cell of this optimizer and rate; returns
    the method's report."""
    if method not in METHODS or init_key(method, optimizer, lr, seed, gradinit_steps=1,
                                          gradinit_sgd_steps=1) is None:
        raise ValueError(f"no initialization to compute for grid method {method!r}; the grid's "
                         f"methods that compute one: {', '.join(m for m in METHODS[2:])}")
    if method in ("tfixup", "deepnet"):
        return initialize(model, method, seed=seed)
    batches = TokenBatches(data.src["train"], data.tgt["train"], batch_size, shuffle=True,
                           seed=seed + 7919, device=device)
    loss_fn = partial(seq2seq_loss, label_smoothing=label_smoothing)
    if method in ("admin", "gradinit-warmstart"):
        return initialize(model, method, data=batches, loss_fn=loss_fn)
    if method == "gradinit":
        target = (dict(target="adam", lr=lr, betas=(0.9, 0.98)) if optimizer == "adam"
                  else dict(target="sgd", lr=lr))
        return initialize(model, "gradinit", data=batches, loss_fn=loss_fn,
                          **dict(gradinit_settings or {}, **target))
    settings = dict(TRANSFORMER_RECIPE, steps=gradinit_steps, batching="split")
    if method == "gradinit-sgd":   # here: gradinit-authors or gradinit-sgd
        settings.update(target="sgd", lr=lr, gamma=1.0, steps=gradinit_sgd_steps)
    return initialize(model, "gradinit-authors", data=batches, loss_fn=loss_fn, **settings)


def report_summary(report: Any) -> dict[str, Any]:
    """Plain values from a method's report: its kind, iterations (history length) and outcome."""
    if report is None:
        return {}
    return dict(kind=getattr(report, "kind", None), iterations=len(report.history),
                outcome=plain_outcome(report))
