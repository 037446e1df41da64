"""The weights AutoInit draws: `WeightPlan`, what maps reach as `ctx.weights`.

Contract: a weight is drawn once, at its first use in graph order, with the paper's variance
Var(W) = sigma^2 / (fan_in * E[x^2]) (`draws.py` shapes the distribution); the layer's bias is
zeroed. Nothing is written to the model until `commit`; maps read a tensor's current value
(drawn or not) with `value`. A tensor that is frozen (`requires_grad=False`) or already drawn is
read, never drawn again; a weight shared by an Embedding and a later Linear (tied input and
output embeddings) is drawn once, and `api.autoinit` then draws it with the std its Linear use
asks for (`asked`), so that the logits, which no normalization follows, get sigma^2.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Optional

import torch

from ...core.rules import Staged
from .draws import draw

if TYPE_CHECKING:
    from .config import AutoInitConfig

log = logging.getLogger(__name__)


class WeightPlan:
    """Staged draws, the report's history, and tied-weight bookkeeping for one call."""

    def __init__(self, cfg: "AutoInitConfig", gen: torch.Generator,
                 fixed_std: Optional[dict[int, float]] = None):
        self.cfg, self.gen = cfg, gen
        self.staged = Staged()
        self.done: set[int] = set()
        self.history: list[dict[str, Any]] = []
        self.fixed_std = dict(fixed_std or {})      # id(tensor) -> std to draw it with
        self.asked: dict[int, float] = {}           # id(tensor) -> std a later use asked for
        self.embedded: set[int] = set()             # tensors first drawn by an Embedding

    def value(self, p: torch.Tensor) -> torch.Tensor:
        """The tensor's value as it will be written (drawn, or the model's own)."""
        return self.staged.get(p)

    def settled(self, p: torch.Tensor) -> bool:
        """Whether `p` is read rather than drawn (drawn already, or frozen)."""
        return id(p) in self.done or not p.requires_grad

    def draw(self, like: torch.Tensor, std: float, groups: int = 1,
             centered: Optional[bool] = None) -> torch.Tensor:
        """A float64 CPU tensor shaped like `like` ((out, in/groups, *kernel)) with mean square
        std^2, from the configured distribution."""
        return draw(self.cfg.distribution, like.shape, std, groups, self.gen,
                    self.cfg.centered if centered is None else centered)

    def stage(self, p: torch.Tensor, value: torch.Tensor) -> None:
        """Plan `value` for `p` (written at commit) and mark it drawn."""
        self.staged.set(p, value)
        self.done.add(id(p))

    def zero(self, bias: Optional[torch.Tensor]) -> None:
        if bias is not None and bias.requires_grad:
            self.staged.zero(bias)

    def note(self, **entry: Any) -> dict[str, Any]:
        """A history entry (one per drawn weight)."""
        self.history.append(entry)
        return entry

    def embedding(self, name: str, weight: torch.Tensor,
                  padding_idx: Optional[int]) -> torch.Tensor:
        """An embedding table: entries of variance sigma^2 (or the std a tied use asked for)."""
        if self.settled(weight):
            return self.value(weight)
        std = self.fixed_std.get(id(weight), math.sqrt(self.cfg.signal_variance))
        w = self.draw(weight, std, centered=False)
        if padding_idx is not None:
            w[padding_idx] = 0
        self.stage(weight, w)
        self.embedded.add(id(weight))
        self.note(layer=name, fan_in=1, input_mean=None, input_var=None, weight_std=std,
                  output_mean=0.0, output_var=std ** 2)
        return self.value(weight)

    def ask(self, weight: torch.Tensor, name: str, std: float) -> None:
        """A later use of a tensor drawn as an embedding would need `std`."""
        if id(weight) in self.embedded and id(weight) not in self.fixed_std:
            self.asked.setdefault(id(weight), std)
            log.info("autoinit: '%s' shares its weight with an embedding; it is drawn for "
                     "this layer's output (std %.3g)", name, std)

    def commit(self) -> None:
        self.staged.commit("autoinit")
