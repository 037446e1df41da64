"""LSUV: layer-sequential unit-variance initialization.

Mishkin & Matas, "All you need is a good init", ICLR 2016. Every Linear/Conv1d/2d/3d weight gets
an orthonormal pre-init (rows or columns of the weight, reshaped to (out, in * kernel), made
orthonormal; biases zero), then, layer by layer in forward order: forward a batch, measure the
std `s` of the layer's output, W <- W / s, until |s - 1| < tol or `max_tries` is reached.

Where initlab departs from the authors' code, and why:
- Each try draws the next batch from `data` (the authors' Caffe code advances its data layer
  the same way); the forward stops at the measured layer, so a try costs a partial forward.
  Batches of inputs alone work (a tensor, `(inputs,)`, a dict of keyword inputs): without a
  `loss_fn` LSUV only runs the model forward.
- The output std is measured on the layer's first call in a forward (a layer reused later in
  the same forward is measured where it is first used). Layers never called as modules (e.g.
  the output projection inside `nn.MultiheadAttention`) keep their pre-init, with a warning.
- Batch-norm layers normalize with batch statistics and never update their running statistics;
  dropout is off. The model is never edited during the search: it runs through `functional_call`
  and is written once at the end, after a last full forward checks the outputs (or the
  loss, with a `loss_fn`) are finite and measures each layer's output std once more.
- A layer whose output std is 0 or non-finite stops the method with an error (the authors
  divide by s + 1e-8 and go on).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Optional

import torch
from torch import nn

from ..core.batches import BatchStream
from ..core.checks import integer, positive
from ..core.finish import finish, unchanged_on_error
from ..core.loss import LossFn, Substituted, checked_loss, forward, output_tensors
from ..core.modes import search_mode, write_params
from ..core.params import trainable_params
from ..core.report import InitReport, LayerReport
from ..core.rules import draw, generator, weighted_layers
from ..registry import register

log = logging.getLogger(__name__)


@dataclass
class LSUVConfig:
    target_std: float = 1.0   # the std each layer's output is brought to
    tol: float = 0.1          # stop when |s - target_std| < tol
    max_tries: int = 10       # forwards (and rescalings) per layer at most
    orthonormal: bool = True  # orthonormal pre-init (and zero biases) first
    seed: Optional[int] = None  # orthonormal draws; None: torch's global generator

    def validate(self) -> None:
        positive("target_std", self.target_std)
        positive("tol", self.tol)
        integer("max_tries", self.max_tries)


@contextlib.contextmanager
def _no_attention_fastpath() -> Iterator[None]:
    """Transformer layers' fused inference path skips their Linear modules' forward (and hooks)."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "get_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


class _Stop(Exception):
    """Raised by the hook to end a forward once the measured layer has run."""


class _Probe:
    """A forward hook on every layer: records the forward order, grabs one layer's output, or
    (`stds` set) records every layer's output std at its first call."""

    def __init__(self, layers: list[nn.Module]):
        self.order: list[nn.Module] = []
        self.target: Optional[nn.Module] = None
        self.output: Optional[torch.Tensor] = None
        self.stds: Optional[dict[int, float]] = None
        self.handles = [m.register_forward_hook(self._hook) for m in layers]

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stds is not None:
            self.stds.setdefault(id(module), output.detach().float().std().item())
        elif self.target is None:
            if all(m is not module for m in self.order):
                self.order.append(module)
        elif module is self.target:
            self.output = output.detach()
            raise _Stop

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _orthonormal(weight: torch.Tensor, gen: Optional[torch.Generator]) -> torch.Tensor:
    return draw(weight, torch.nn.init.orthogonal_, gen)


@register("lsuv", config=LSUVConfig, needs_data=True,
          description="orthonormal init, then scale each layer to unit output std in forward order",
          paper="Mishkin & Matas, ICLR 2016")
def lsuv(
    model: nn.Module,
    data: Iterable,
    *,
    loss_fn: Optional[LossFn] = None,
    **settings: Any,
) -> InitReport:
    """Initialize every Linear/Conv1d/2d/3d of `model` with LSUV, in place.

    Args:
        model: any `nn.Module`; written once at the end, left bitwise unchanged (with its modes
            and buffers) on any error.
        data: an iterable of batches, one drawn per try (re-iterated when exhausted): inputs
            alone (a tensor, `(inputs,)`, a dict of keyword inputs) or `(inputs, targets)`.
        loss_fn: optional `(model, batch) -> scalar`, used to run the model on a batch (the
            forward is cut short at the measured layer) and once on the finished model, whose
            loss must be finite. Default: the model's forward on the batch's inputs
            (`core.loss.forward`), whose outputs must be finite.
        **settings: fields of `LSUVConfig` (target_std, tol, max_tries, orthonormal, seed).

    Returns:
        a `LayerReport` with one history entry per layer in forward order: tries, the output
        std after the pre-init (`std_first`) and when last measured before the last rescaling
        (`std_last`), on the finished model (`std_after`, one more batch), and the total factor.
        With `orthonormal=False` its scales replay the rescaling with `initlab.apply`; after an
        orthonormal pre-init `apply` refuses it (there are no scales to replay).
    """
    cfg = LSUVConfig(**settings)
    cfg.validate()
    layers = [m for _, m in weighted_layers(model)]
    if not layers:
        raise ValueError("LSUV initializes Linear/Conv1d/2d/3d layers and the model has none")
    layer_names = {id(m): n for n, m in weighted_layers(model)}
    specs = trainable_params(model)
    names = [s.name for s in specs]
    values = {s.name: s.param.detach() for s in specs}
    index = {id(s.param): s.name for s in specs}
    gen = generator(cfg.seed)
    touched: set[str] = set()
    for m in layers:
        if cfg.orthonormal:
            values[index[id(m.weight)]] = _orthonormal(m.weight, gen)
            if m.bias is not None:
                values[index[id(m.bias)]] = torch.zeros_like(m.bias)
                touched.add(index[id(m.bias)])
        touched.add(index[id(m.weight)])
    run_model = loss_fn or forward
    stream = BatchStream(data, device=specs[0].param.device)
    probe = _Probe(layers)
    history: list[dict[str, Any]] = []
    where = "before the first layer"

    def run(batch: Any) -> None:
        run_model(Substituted(model, dict(zip(names, (values[n] for n in names)))), batch)

    try:
        with unchanged_on_error("lsuv", lambda: where):
            with search_mode(model), torch.no_grad(), _no_attention_fastpath():
                run(stream.next())  # records the forward order
                order = list(probe.order)
                missing = [layer_names[id(m)] for m in layers if all(m is not o for o in order)]
                if missing:
                    log.warning("lsuv: layers never called in a forward keep their pre-init: %s",
                                ", ".join(missing))
                for m in order:
                    name, wname = layer_names[id(m)], index[id(m.weight)]
                    where = f"at layer '{name}'"
                    probe.target, factor, first = m, 1.0, None
                    for tries in range(1, cfg.max_tries + 1):  # noqa: B007 (used after the loop)
                        probe.output = None
                        try:
                            run(stream.next())
                        except _Stop:
                            pass
                        out = probe.output
                        if out is None:
                            raise RuntimeError(f"layer '{name}' was not called on this batch")
                        if not bool(torch.isfinite(out).all()):
                            raise FloatingPointError(f"non-finite output of layer '{name}'")
                        s = out.float().std().item()
                        if not s > 0:
                            raise FloatingPointError(f"the output of layer '{name}' has std {s}: "
                                                     "nothing to normalize (a dead layer?)")
                        first = s if first is None else first
                        values[wname] = values[wname] * (cfg.target_std / s)
                        factor *= cfg.target_std / s
                        if abs(s - cfg.target_std) < cfg.tol:  # measured before this last rescale
                            break
                    else:
                        log.warning("lsuv: layer '%s' output std %.4g after %d tries (tol %g)",
                                    name, s, cfg.max_tries, cfg.tol)
                    history.append(dict(layer=name, tries=tries, std_first=first, std_last=s,
                                        factor=factor))
                    log.debug("lsuv: %s std %.4g, last measured %.4g, %d tries", name, first, s, tries)
                probe.target, probe.stds, where = None, {}, "on the finished model"
                _check_finished(model, names, values, loss_fn, stream.next())
                for h in history:
                    h["std_after"] = probe.stds.get(id(model.get_submodule(h["layer"])))
            write_params([s.param for s in specs if s.name in touched],
                         [values[s.name] for s in specs if s.name in touched])
    finally:
        probe.close()
    scales = {} if cfg.orthonormal else {
        index[id(model.get_submodule(h["layer"]).weight)]: h["factor"] for h in history}
    return finish(model, "lsuv", settings=asdict(cfg), history=history, scales=scales,
                  specs=specs, report=LayerReport)


def _check_finished(model: nn.Module, names: list[str], values: dict[str, torch.Tensor],
                    loss_fn: Optional[LossFn], batch: Any) -> None:
    """One full forward of the finished values: a finite loss (with `loss_fn`) or outputs."""
    if loss_fn is not None:
        with torch.enable_grad():  # checked_loss wants a loss that depends on the tensors
            leaves = {n: values[n].detach().requires_grad_() for n in names}
            checked_loss(loss_fn, Substituted(model, leaves), batch, "loss of the initialized model")
        return
    out = forward(Substituted(model, {n: values[n] for n in names}), batch)
    if not all(bool(torch.isfinite(t).all()) for t in output_tensors(out)):
        raise FloatingPointError("non-finite output of the initialized model")
