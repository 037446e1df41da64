"""How every method ends: all or nothing, then a report.

A method does its work inside `unchanged_on_error(name, where)`; if anything raises (a refusal,
a non-finite value, Ctrl-C), the exception gains a note saying the model was left unchanged and
propagates. On success it calls `finish(...)`, which marks the model (so `apply` refuses to scale
it twice) and builds the method's report (`report=`: the type for its kind of method, see
`core/report.py`) with the library's version:

    with unchanged_on_error("mymethod", lambda: f"at layer {name}"):
        ...                                     # compute, then write all values at once
    return finish(model, "mymethod", settings=asdict(cfg), history=history)   # a ScalesReport
    return finish(model, "autoinit", settings=..., history=..., report=VarianceReport,
                  target_variance=cfg.signal_variance)     # extra fields of the report type
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, is_dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from torch import nn

from .params import ParamSpec, clean_name, trainable_params
from .report import InitReport, ScalesReport, mark_applied
from .version import __version__

Where = Union[str, Callable[[], str]]


def note_unchanged(e: BaseException, method: str, where: str = "") -> None:
    """Add "initlab.<method> stopped <where>; the model was left unchanged" to `e`."""
    if hasattr(e, "add_note"):
        e.add_note(f"initlab.{method} stopped{' ' + where if where else ''}; "
                   "the model was left unchanged")


@contextlib.contextmanager
def unchanged_on_error(method: str, where: Where = "") -> Iterator[None]:
    """Within: any exception is noted as having left the model unchanged, then re-raised.
    `where` may be a callable, read only when something failed (e.g. the current iteration)."""
    try:
        yield
    except BaseException as e:
        note_unchanged(e, method, where() if callable(where) else where)
        raise


def plain_settings(cfg: Any) -> dict[str, Any]:
    """A settings dataclass as a dict of plain values (others as their repr), for a report that
    loads with `torch.load(weights_only=True)`."""
    values = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    return {k: (v if isinstance(v, (int, float, str, type(None))) else repr(v))
            for k, v in values.items()}


def finish(model: nn.Module, method: str, *, settings: dict[str, Any],
           history: Iterable[dict[str, Any]] = (), scales: Optional[dict[str, float]] = None,
           specs: Optional[list[ParamSpec]] = None, report: type[InitReport] = ScalesReport,
           **fields: Any) -> InitReport:
    """Mark `model` as initialized by `method` and return its report, of type `report` (with the
    report type's own `fields`). `specs` (default: every trainable tensor of `model`) gives the
    architecture that `apply` checks on replay. Names leave out `torch.compile`'s prefix."""
    mark_applied(model, method)
    specs = trainable_params(model) if specs is None else specs
    return report(method=method, scales={clean_name(k): v for k, v in (scales or {}).items()},
                  shapes={clean_name(s.name): list(s.shape) for s in specs},
                  history=list(history), settings=settings, version=__version__, **fields)
