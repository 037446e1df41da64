"""What a method returns: a report of what it did, and, where it holds scales, how to replay it.

    report = initlab.gradinit(model, data)
    print(report.summary()); report.plot("scales.png")
    report.save("init.pt")                    # plain Python data, loads with weights_only=True
    initlab.apply(fresh_model, "init.pt")     # multiply a fresh model's tensors by the scales

Each kind of method has its own report type, so that `summary()` and `plot()` say what it did:

| type             | methods            | holds                                         | `apply`        |
|------------------|--------------------|-----------------------------------------------|----------------|
| `ScalesReport`   | GradInit, MetaInit | one scale per tensor; the search per step     | replays scales |
| `LayerReport`    | LSUV               | per layer: output std before and after, tries | the factors *  |
| `VarianceReport` | AutoInit           | per layer: predicted output variance, target  | refuses        |
| `DrawReport`     | archscale          | per layer: fan-in, in-degree, std drawn       | refuses        |
| `ResidualReport` | Admin, DeepNet     | per residual sum: the multiplier set, why     | refuses        |

* LSUV's factors replay when it ran without its orthonormal pre-init; otherwise `apply` refuses.

A method that draws new weights leaves nothing a report can replay: `apply` refuses such a
report (naming what to do) rather than doing nothing. Every type shares the fields of
`InitReport`; `save` records the type as `kind`, and `InitReport.load` returns that type (a
file saved without `kind` loads by its method's name, else as a `ScalesReport`). Tensor names
are those of the plain model: `torch.compile`'s `_orig_mod.` is left out, so scales replay
between compiled and plain models.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from .params import clean_name, trainable_params, unwrap_compiled

_APPLIED = "_initlab_applied"  # set on a model once scales are written, to refuse doing it twice
_KINDS: dict[str, type["InitReport"]] = {}
#: Reports saved before `kind` existed: their type, from the method's name.
_LEGACY_KINDS = {"lsuv": "layers", "autoinit": "variances", "archscale": "draws"}


@dataclass
class InitReport:
    method: str
    scales: dict[str, float]                 # name -> scale, for every tensor that had one
    shapes: dict[str, list[int]]             # name -> shape, every trainable tensor (architecture)
    history: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    version: str = ""

    kind: ClassVar[str] = "scales"
    #: What to do instead of `apply` when the report holds no scales (see `check_replayable`).
    no_replay: ClassVar[str] = "it holds no scales"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _KINDS[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), kind=self.kind)

    def save(self, path: str | os.PathLike) -> None:
        torch.save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InitReport":
        """The report saved at `path`, as the type it was saved as."""
        return from_dict(torch.load(path, weights_only=True))

    def summary(self) -> str:
        vals = list(self.scales.values())
        lines = [f"{self.method}: {len(vals)} tensors scaled"]
        if vals:
            lines.append(f"  scales min {min(vals):.3g}  median {sorted(vals)[len(vals) // 2]:.3g}"
                         f"  max {max(vals):.3g}")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike | None = None):
        """Scales per tensor, by name (left), and what the method did step by step (right)."""
        from .plotting import plot_scales
        return plot_scales(self, path)

    def check_replayable(self) -> None:
        """Raise (saying what to do instead) when `apply` has nothing to replay."""
        if not self.scales:
            raise ValueError(f"this {self.method} report has nothing to replay: {self.no_replay}. "
                             f"Run initlab.initialize(fresh_model, {self.method!r}, ...) again "
                             "(with seed= for the same draws), or save and load the "
                             "initialized model's state_dict()")


@dataclass
class ScalesReport(InitReport):
    """GradInit, MetaInit: a learned scale per tensor, and the search step by step (GradInit:
    branch, loss before and after the step; MetaInit: the gradient quotient and the loss), and
    how the search ended (`outcome`; GradInit's default search: why it stopped, the guard)."""
    outcome: dict[str, Any] = field(default_factory=dict)  # plain values

    kind = "scales"

    def summary(self) -> str:
        lines = [super().summary()]
        h = self.history
        branches = [s.get("branch") for s in h]
        if any(branches):
            lines.append(f"  {len(h)} iterations: {branches.count('objective')} objective, "
                         f"{branches.count('constraint')} constraint")
        gq = [s["gq"] for s in h if s.get("gq") is not None]
        if gq:
            lines.append(f"  gradient quotient over {len(gq)} steps: {gq[0]:.4g} -> {gq[-1]:.4g} "
                         f"(min {min(gq):.4g})")
        loss = [s["loss"] for s in h if s.get("loss") is not None]
        if loss:
            lines.append(f"  loss {loss[0]:.4g} -> {loss[-1]:.4g}")
        lines += [f"  {k}: {v}" for k, v in self.outcome.items()]
        return "\n".join(lines)


class LayerReport(InitReport):
    """LSUV: per layer (forward order) the output std after the pre-init (`std_first`), when last
    measured before the last rescaling (`std_last`), on the finished model (`std_after`), the
    tries and the total factor. Its scales (the factors) replay only without the pre-init."""
    kind = "layers"
    no_replay = ("LSUV drew orthonormal weights first, and a report does not hold weights "
                 "(with orthonormal=False its factors are scales that replay)")

    def summary(self) -> str:
        target = self.settings.get("target_std", 1.0)
        lines = [f"{self.method}: {len(self.history)} layers brought to output std {target:g} "
                 f"(std before -> after, tries)"]
        width = max((len(h["layer"]) for h in self.history), default=0)
        for h in self.history[:30]:
            after = h.get("std_after")
            lines.append(f"  {h['layer'].ljust(width)}  {h['std_first']:.4g} -> "
                         f"{'-' if after is None else format(after, '.4g')}  ({h['tries']})")
        if len(self.history) > 30:
            lines.append(f"  ... {len(self.history) - 30} more layers")
        if self.scales:
            lines.append(f"  {len(self.scales)} factors to replay with initlab.apply")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike | None = None):
        """Output std per layer, before and after, against the target."""
        from .plotting import plot_layers
        return plot_layers(self, path)


@dataclass
class VarianceReport(InitReport):
    """AutoInit: per layer the predicted output variance (`output_var`) against the target
    every layer is drawn for (`target_variance`), with the input statistics and weight std."""
    target_variance: float = 1.0

    kind = "variances"
    no_replay = "AutoInit draws new weights, and a report does not hold weights"

    def summary(self) -> str:
        rows = [h for h in self.history if h.get("output_var") is not None]
        lines = [f"{self.method}: {len(self.history)} layers drawn for output variance "
                 f"{self.target_variance:g}"]
        if rows:
            worst = max(rows, key=lambda h: abs(h["output_var"] - self.target_variance))
            v = [h["output_var"] for h in rows]
            lines.append(f"  predicted output variance min {min(v):.4g}  max {max(v):.4g}  "
                         f"(furthest: '{worst['layer']}' {worst['output_var']:.4g})")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike | None = None):
        """Predicted output variance per layer against the target; the weight std drawn."""
        from .plotting import plot_variances
        return plot_variances(self, path)


class DrawReport(InitReport):
    """archscale: per layer the std its weight was drawn with (`weight_std`) and why: fan-in and
    in-degree (how many tensors the graph sums with its output)."""
    kind = "draws"
    no_replay = "archscale draws new weights, and a report does not hold weights"

    def summary(self) -> str:
        h = self.history
        summed = [s for s in h if s.get("in_degree", 1) > 1]
        lines = [f"{self.method}: {len(h)} layers drawn, {len(summed)} of them feed a sum"]
        if h:
            std = [s["weight_std"] for s in h]
            lines.append(f"  weight std min {min(std):.4g}  max {max(std):.4g}")
        for s in summed[:10]:
            lines.append(f"  {s['layer']}: in-degree {s['in_degree']}, std {s['weight_std']:.4g}")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike | None = None):
        """Weight std and in-degree per layer."""
        from .plotting import plot_draws
        return plot_draws(self, path)


class ResidualReport(InitReport):
    """Admin, DeepNet: per residual sum (`history`, in order: `sum`, `stack`, `multiplier`) the
    skip multiplier set; Admin adds the profiled variances (`input_var`, `branch_var`), DeepNet
    the Xavier gain its branch weights were drawn with (`gain`) and the stack's depth."""
    kind = "residuals"
    no_replay = ("the multipliers are buffers of the model (saved in its state_dict()), not "
                 "scales of its tensors")

    def summary(self) -> str:
        h = self.history
        lines = [f"{self.method}: {len(h)} residual multipliers set"]
        for s in h[:30]:
            extra = (f", branch gain {s['gain']:.4g}" if s.get("gain") is not None else
                     f", Var input {s['input_var']:.3g}, Var branch {s['branch_var']:.3g}"
                     if s.get("branch_var") is not None else "")
            lines.append(f"  {s['sum']}: {s['multiplier']:.4g}{extra}")
        if len(h) > 30:
            lines.append(f"  ... {len(h) - 30} more sums")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike | None = None):
        """The multiplier per residual sum, in order."""
        from .plotting import plot_residuals
        return plot_residuals(self, path)


def from_dict(d: dict[str, Any]) -> InitReport:
    """A saved report's dict as its type (`kind`; older files: by method name)."""
    d = dict(d)
    kind = d.pop("kind", None) or _LEGACY_KINDS.get(d.get("method", ""), "scales")
    if kind not in _KINDS:
        raise ValueError(f"unknown report kind {kind!r} (saved by a newer initlab?); known: "
                         f"{', '.join(_KINDS)}")
    return _KINDS[kind](**d)


def mark_applied(model: nn.Module, method: str) -> None:
    object.__setattr__(unwrap_compiled(model), _APPLIED, method)


def applied_by(model: nn.Module) -> Optional[str]:
    """The method whose result was written into `model` (None if none was)."""
    return getattr(unwrap_compiled(model), _APPLIED, None)


def apply(model: nn.Module, report: InitReport | str | os.PathLike, *, force: bool = False) -> nn.Module:
    """Replay saved scales on a model of the same architecture: each tensor `*= scale`.

    Refuses a report with nothing to replay (a method that drew new weights), a model whose
    trainable tensors differ in name or shape (naming the first mismatch), and a model that
    already had scales written (pass `force=True` to scale again). A `torch.compile`d model is
    scaled through its original module.
    """
    if not isinstance(report, InitReport):
        report = InitReport.load(report)
    report.check_replayable()
    if applied_by(model) and not force:
        raise RuntimeError(
            f"this model already had {applied_by(model)} scales written; applying again "
            "would scale twice. Build a fresh model, or pass force=True."
        )
    specs = {clean_name(s.name): s for s in trainable_params(unwrap_compiled(model))}
    shapes = {clean_name(n): s for n, s in report.shapes.items()}
    for name, shape in shapes.items():
        if name not in specs:
            raise ValueError(f"the model has no trainable tensor '{name}' that the report scales "
                             "(is it the same architecture?)")
        if list(specs[name].shape) != list(shape):
            raise ValueError(f"tensor '{name}' has shape {list(specs[name].shape)} in the model but "
                             f"{list(shape)} in the report")
    extra = [n for n in specs if n not in shapes]
    if extra:
        raise ValueError(f"the model has a trainable tensor '{extra[0]}' the report does not know "
                         "(is it the same architecture?)")
    if any(s.param.is_meta for s in specs.values()):
        raise ValueError(META_MODEL)
    with torch.no_grad():
        for name, scale in report.scales.items():
            specs[clean_name(name)].param.mul_(scale)
    mark_applied(model, report.method)
    return model


META_MODEL = ("the model's tensors are on the meta device (shapes without values); materialize "
              "it first: model.to_empty(device=...), then run its constructor's init (e.g. "
              "reset_parameters() of each module, or load a state_dict), then initialize it")
