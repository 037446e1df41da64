"""Methods by name: `initlab.initialize(model, "lsuv", data=batches)`.

Each method file registers its entry point with `@register(..., config=ItsConfig)`. Data-driven
methods take `(model, data, *, loss_fn=None, **settings)`; fixed rules take `(model, **settings)`.
Both write the model in place and return an `InitReport` (or None for rules with nothing to
report). `config` is the method's settings dataclass: its fields and the function's own keyword
arguments are the method's settings (`setting_names`, `check_settings`).

Every registered method, called by name or directly, first checks its model and settings:
- an unknown setting is refused before any work (a TypeError naming the known ones);
- a `torch.compile`d model is initialized through the module it wraps (same tensors, no
  compilation; report names without `_orig_mod.`);
- a model on the meta device is refused, saying how to materialize it;
- running a method again on a model it already initialized warns (its result compounds).
"""
from __future__ import annotations

import difflib
import functools
import inspect
import warnings
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from .core.params import unwrap_compiled
from .core.report import META_MODEL, applied_by


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: Callable[..., Any]
    description: str
    paper: str
    needs_data: bool
    config: Optional[type] = None      # the settings dataclass
    settings_of: Optional[str] = None  # a method whose settings this one takes (and passes on)


_METHODS: dict[str, MethodInfo] = {}


def register(name: str, *, description: str, paper: str, needs_data: bool = False,
             config: Optional[type] = None, settings_of: Optional[str] = None):
    """Register `fn` under `name`; returns it wrapped in the checks every method shares.
    `config`: its settings dataclass; `settings_of`: the method it passes its settings to."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _METHODS and _METHODS[name].fn.__wrapped__ is not fn:  # type: ignore[attr-defined]
            raise ValueError(f"an initialization method named {name!r} is already registered")

        @functools.wraps(fn)
        def method(*args: Any, **kwargs: Any) -> Any:
            return _checked_call(name, fn, args, kwargs)

        _METHODS[name] = MethodInfo(name, method, description, paper, needs_data, config,
                                    settings_of)
        return method
    return wrap


def _checked_call(name: str, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """`fn(*args, **kwargs)` after the checks every method shares (module docstring)."""
    check_settings(name, {k: v for k, v in kwargs.items() if k not in ("model", "data")},
                   values=False)
    model = args[0] if args else kwargs.get("model")
    if isinstance(model, nn.Module):
        model = unwrap_compiled(model)
        if any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers()):
            raise ValueError(f"{name}: {META_MODEL}")
        if applied_by(model) == name:
            warnings.warn(f"{name} already initialized this model; running it again starts from "
                          "its result. Build a fresh model to start over.", stacklevel=4)
        if args:
            args = (model, *args[1:])
        else:
            kwargs = dict(kwargs, model=model)
    return fn(*args, **kwargs)


def setting_names(name: str) -> Optional[list[str]]:
    """The settings method `name` accepts: its keyword arguments (loss_fn, params, ...) and its
    settings dataclass's fields. None when it takes `**settings` and declared no dataclass."""
    info = method_info(name)
    if info.settings_of is not None:
        return setting_names(info.settings_of)
    params = list(inspect.signature(info.fn).parameters.values())[1:]  # after the model
    names = [p.name for p in params if p.name != "data" and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if info.config is not None:
        names += [f.name for f in fields(info.config) if f.name not in names]
    elif any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return names


def check_settings(name: str, settings: dict[str, Any], *, values: bool = True) -> None:
    """Refuse a setting method `name` does not have (TypeError, with the closest known name),
    and, with `values`, a value its settings dataclass's `validate()` refuses (ValueError)."""
    known = setting_names(name)
    if known is not None:
        for key in settings:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise TypeError(f"{name} has no setting {key!r}; {hint}its settings: "
                                f"{', '.join(known) or 'none'}")
    info = method_info(name)
    config = info.config if info.settings_of is None else method_info(info.settings_of).config
    if values and config is not None:
        own = {f.name for f in fields(config)}
        cfg = config(**{k: v for k, v in settings.items() if k in own})
        if hasattr(cfg, "validate"):
            cfg.validate()


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
