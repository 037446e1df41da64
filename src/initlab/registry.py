"""Methods by name: `initlab.initialize(model, "lsuv", data=batches)`.

Each method file registers its entry point with `@register(...)`. Data-driven methods take
`(model, data, *, loss_fn=None, **settings)`; fixed rules take `(model, **settings)`. Both write
the model in place and return an `InitReport` (or None for rules with nothing to report).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
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
        if "example_input" not in inspect.signature(info.fn).parameters:
            raise ValueError(f"{name} is a fixed rule and takes no data")
        if settings.get("example_input") is None:  # analytic rules read the shape of one batch
            settings["example_input"] = example_inputs(data, name)
    return info.fn(model, **settings)


def example_inputs(data: Iterable, name: str) -> Any:
    """The model inputs of `data`'s first batch: the batch itself if it is a tensor, its first
    element if it is a tuple/list `(inputs, targets, ...)`."""
    batch = next(iter(data), None)
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ValueError(f"{name} needs an example input: pass example_input=<tensor> (the first batch "
                     f"of data is {type(batch).__name__}, not a tensor or an (inputs, ...) tuple)")
