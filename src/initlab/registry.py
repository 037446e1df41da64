"""Methods by name: `initlab.initialize(model, "lsuv", data=batches)`.

Each method file registers its entry point with `@register(...)`. Data-driven methods take
`(model, data, *, loss_fn=None, **settings)`; fixed rules take `(model, **settings)`. Both write
the model in place and return an `InitReport` (or None for rules with nothing to report).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from torch import nn


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: Callable[..., Any]
    description: str
    paper: str
    needs_data: bool


_METHODS: dict[str, MethodInfo] = {}


def register(name: str, *, description: str, paper: str, needs_data: bool = False):
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _METHODS and _METHODS[name].fn is not fn:
            raise ValueError(f"an initialization method named {name!r} is already registered")
        _METHODS[name] = MethodInfo(name, fn, description, paper, needs_data)
        return fn
    return wrap


def available_methods() -> list[str]:
    return list(_METHODS)


def method_info(name: str) -> MethodInfo:
    if name not in _METHODS:
        raise KeyError(f"unknown initialization method {name!r}; available: "
                       f"{', '.join(available_methods())}")
    return _METHODS[name]


def initialize(model: nn.Module, name: str, data: Optional[Iterable] = None, **settings: Any):
    """Initialize `model` in place with the method called `name`; returns its report."""
    info = method_info(name)
    if info.needs_data:
        if data is None and not settings.get("data_free", False):
            raise ValueError(f"{name} learns from data: pass data=<iterable of batches>")
        return info.fn(model, data, **settings)
    if data is not None:
        raise ValueError(f"{name} is a fixed rule and takes no data")
    return info.fn(model, **settings)
