"""Which moment map handles which operation, and what the engine may assume about it.

    register_moment_map(MyBlock, my_map)                       # a module type (kept whole)
    register_moment_map(torch.cumsum, cumsum_map)              # a function or an ATen operator
    register_moment_map("cumsum", cumsum_map)                  # a Tensor method name
    register_elementwise(my_activation, MyActivation)          # moments by quadrature
    unregister_moment_map(torch.cumsum)                        # back to no map

Contract: a map is `fn(ctx: MapContext) -> Moments | tuple | None` (None: no statistics, e.g. a
non-tensor result). Its traits are declared when it is registered and read by the engine:

- `per_channel`: the map accepts per-channel `Moments`; otherwise its inputs are pooled first
  (`Moments.collapse`), which is what a user map written for one (mean, var) expects;
- `elementwise`: y = f(inputs) element by element; a chain of such operations that all read
  one tensor is evaluated as one function of it (so `x * torch.sigmoid(x)` is SiLU, not a
  product of independent factors);
- `layout`: the operation only moves, copies or selects elements (reshape, permute, indexing,
  nearest upsampling); the engine follows each channel through it by running the operation on
  a tensor of channel indices, so no map function is needed;

A registered module type is also a leaf when tracing (kept whole). Registering a target again
replaces its map. A plain Python function registered here is kept whole by `torch.fx` when the
model calls it by its global name (fx's `autowrap_functions`); with `torch.export` it is traced
into, and an elementwise chain of its operators is evaluated as one function anyway.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
from torch import fx, nn

if TYPE_CHECKING:
    from .context import MapContext

MomentMap = Callable[["MapContext"], Any]
Target = Union[type, str, Callable]


@dataclass(frozen=True)
class MapSpec:
    """A registered map and its traits (see the module docstring)."""
    fn: Optional[MomentMap]
    per_channel: bool = False
    elementwise: bool = False
    layout: bool = False


_MODULES: dict[type, MapSpec] = {}
_FUNCTIONS: dict[Any, MapSpec] = {}
_METHODS: dict[str, MapSpec] = {}


def register_moment_map(target: Target, fn: Optional[MomentMap], *, per_channel: bool = False,
                        elementwise: bool = False, layout: bool = False) -> None:
    """Use `fn(ctx) -> Moments` for a module type, a Tensor method name, a function or an ATen
    operator (an overload packet covers all its overloads). A `layout` operation needs no `fn`
    (pass None)."""
    if fn is None and not layout:
        raise TypeError("register_moment_map: a map function is needed unless layout=True")
    spec = MapSpec(fn, per_channel, elementwise, layout)
    if isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise TypeError(f"register_moment_map: {target.__name__} is not an nn.Module type; "
                            "pass a module type, a Tensor method name or a function")
        _MODULES[target] = spec
    elif isinstance(target, str):
        _METHODS[target] = spec
    elif callable(target):
        _FUNCTIONS[target] = spec
    else:
        raise TypeError(f"register_moment_map: cannot register a map for {target!r}; pass a "
                        "module type, a Tensor method name or a function")


def unregister_moment_map(target: Target) -> Optional[MapSpec]:
    """Remove the map of `target`; returns it (None if there was none)."""
    table: dict = _MODULES if isinstance(target, type) else \
        _METHODS if isinstance(target, str) else _FUNCTIONS
    return table.pop(target, None)


def register_elementwise(*targets: Target) -> None:
    """Declare elementwise operations (module types, functions, Tensor method names): their
    moments come from Gauss-Hermite quadrature of the operation itself."""
    from .elementwise import elementwise
    for t in targets:
        register_moment_map(t, elementwise, per_channel=True, elementwise=True)


def find_map(node: fx.Node, module: Optional[nn.Module]) -> Optional[MapSpec]:
    """The map for a graph node: by module type (nearest in the MRO), Tensor method name,
    function, or ATen overload and its packet."""
    if node.op == "call_module":
        for cls in type(module).__mro__:
            if cls in _MODULES:
                return _MODULES[cls]
        return None
    if node.op == "call_method":
        return _METHODS.get(str(node.target))
    target = node.target
    try:
        found = _FUNCTIONS.get(target)
    except TypeError:  # an unhashable callable
        return None
    if found is None and isinstance(target, torch._ops.OpOverload):
        found = _FUNCTIONS.get(target.overloadpacket)
    return found


def module_types() -> tuple[type, ...]:
    """Every module type with a map: leaves of the traced graph."""
    return tuple(_MODULES)


def plain_functions() -> tuple[Callable, ...]:
    """Registered plain Python functions (fx keeps them whole when called by global name)."""
    return tuple(f for f in _FUNCTIONS if inspect.isfunction(f) and
                 not f.__module__.startswith("torch"))
