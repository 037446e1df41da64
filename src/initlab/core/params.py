"""Which parameter tensors a method touches: selection by name or module type, tying, roles.

A `ParamSpec` describes one *distinct* tensor (tied tensors appear once, under the first name
`named_parameters()` gives them). Methods receive a list of specs and never walk the model again.
A `torch.compile`d model is a wrapper whose names gain `_orig_mod.`: methods work on the module
it wraps (`unwrap_compiled`), and reports name tensors without the prefix (`clean_name`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Union

from torch import nn

# What a user may pass as `params=` / `exclude=`:
#   a regex (matched with re.search against the parameter's full name), a module type or tuple
#   of types (the module that owns the parameter), a callable (name, param, module) -> bool,
#   or a list mixing these (their union).
ParamFilter = Union[str, type, tuple, Callable[[str, nn.Parameter, nn.Module], bool], Iterable]

NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


@dataclass(frozen=True, eq=False)
class ParamSpec:
    name: str            # full name as in model.named_parameters(), e.g. "layer1.0.conv1.weight"
    param: nn.Parameter  # the model's own tensor (never replaced, only written at the end)
    module: nn.Module    # the module that owns the attribute (the parametrized one, if any)
    attr: str            # attribute name on `module`: "weight", "bias", "in_proj_weight", ...

    @property
    def is_bias(self) -> bool:
        return "bias" in self.attr

    @property
    def is_norm_weight(self) -> bool:
        return isinstance(self.module, NORM_TYPES) and not self.is_bias

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)


COMPILED_PREFIX = "_orig_mod."


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module a `torch.compile(model)` wrapper holds (its parameters are the same tensors);
    any other module as it is."""
    while type(model).__name__ == "OptimizedModule" and isinstance(
            model.__dict__.get("_modules", {}).get("_orig_mod"), nn.Module):
        model = model._modules["_orig_mod"]
    return model


def clean_name(name: str) -> str:
    """A parameter name without `torch.compile`'s `_orig_mod.` (also of compiled submodules)."""
    if COMPILED_PREFIX not in name:
        return name
    return ".".join(part for part in name.split(".") if part != COMPILED_PREFIX[:-1])


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding parameter `name` and the attribute it appears as.

    For a `torch.nn.utils.parametrize`d tensor ("lin.parametrizations.weight.original") the owner
    is `lin` and the attribute is "weight".
    """
    parts = name.split(".")
    if "parametrizations" in parts:
        i = len(parts) - 1 - parts[::-1].index("parametrizations")
        return model.get_submodule(".".join(parts[:i])), parts[i + 1]
    return model.get_submodule(".".join(parts[:-1])), parts[-1]


def _matcher(spec: ParamFilter) -> Callable[[str, nn.Parameter, nn.Module], bool]:
    if callable(spec) and not isinstance(spec, type):
        return spec
    if isinstance(spec, str):
        pattern = re.compile(spec)
        return lambda name, p, m: pattern.search(name) is not None
    if isinstance(spec, type):
        return lambda name, p, m: isinstance(m, spec)
    if isinstance(spec, tuple) and all(isinstance(t, type) for t in spec):
        return lambda name, p, m: isinstance(m, spec)
    if isinstance(spec, Iterable):
        parts = [_matcher(s) for s in spec]
        return lambda name, p, m: any(f(name, p, m) for f in parts)
    raise TypeError(
        f"cannot select parameters with {spec!r}: pass a regex string, a module type, "
        "a callable (name, param, module) -> bool, or a list of these"
    )


def trainable_params(model: nn.Module) -> list[ParamSpec]:
    """Every distinct floating-point parameter that requires grad, in registration order."""
    specs = []
    for name, p in model.named_parameters():  # remove_duplicate=True: tied tensors once
        if p.requires_grad and p.is_floating_point():
            module, attr = _owner(model, name)
            specs.append(ParamSpec(name, p, module, attr))
    return specs


def select_params(
    specs: list[ParamSpec], include: ParamFilter | None = None, exclude: ParamFilter | None = None
) -> list[bool]:
    """A mask over `specs`: True where the tensor gets a scale."""
    inc = _matcher(include) if include is not None else (lambda n, p, m: True)
    exc = _matcher(exclude) if exclude is not None else (lambda n, p, m: False)
    return [inc(s.name, s.param, s.module) and not exc(s.name, s.param, s.module) for s in specs]
