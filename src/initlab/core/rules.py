"""What the weight rules share: which layers they touch, seeded draws, staged writes.

Fixed rules compute every new tensor first into a `Staged` plan and write them all at the end
with `core.modes.write_params`, so a model is never left half-initialized when a rule refuses.
Random draws happen on the CPU with an explicit `torch.Generator` when a `seed` is given, so a
seeded rule gives the same numbers on every device.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch import nn

from .modes import write_params

#: The layers the weight rules act on (ConvTranspose is left out: its weight is (in, out, k...)).
LAYERS: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Activation modules whose gain `torch.nn.init.calculate_gain` knows.
ACTIVATIONS: dict[type, str] = {
    nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.SELU: "selu", nn.Identity: "linear",
}


def weighted_layers(model: nn.Module,
                    types: tuple[type, ...] = LAYERS) -> list[tuple[str, nn.Module]]:
    """Every distinct Linear/Conv1d/2d/3d of `model` (name, module), in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, types)]


def generator(seed: Optional[int]) -> Optional[torch.Generator]:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def draw(like: torch.Tensor, fill: Callable[..., torch.Tensor], gen: Optional[torch.Generator],
         **kwargs) -> torch.Tensor:
    """A new tensor shaped like `like`, filled by a `torch.nn.init` function (float32/64 on CPU)."""
    wide = like.dtype == torch.float64
    work = torch.empty(like.shape, dtype=torch.float64 if wide else torch.float32)
    with torch.no_grad():
        fill(work, generator=gen, **kwargs)
    return work.to(device=like.device, dtype=like.dtype)


def detect_activation(model: nn.Module) -> Optional[str]:
    """The `calculate_gain` name of the model's activation modules, if they are all one kind."""
    kinds = {name for m in model.modules() for t, name in ACTIVATIONS.items()
             if type(m) is t and name != "linear"}
    return kinds.pop() if len(kinds) == 1 else None


def leaky_slope(model: nn.Module) -> float:
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
    return slopes.pop() if len(slopes) == 1 else 0.01


class Staged:
    """New values for parameters, composed in memory and written all together by `commit`."""

    def __init__(self) -> None:
        self._values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, param: torch.Tensor) -> torch.Tensor:
        staged = self._values.get(id(param))
        return staged[1] if staged is not None else param.detach()

    def set(self, param: torch.Tensor, value: torch.Tensor) -> None:
        if value.shape != param.shape:
            raise ValueError(f"a value of shape {tuple(value.shape)} for a parameter of shape "
                             f"{tuple(param.shape)}")
        self._values[id(param)] = (param, value.detach().to(device=param.device, dtype=param.dtype))

    def scale(self, param: torch.Tensor, factor: float) -> None:
        self.set(param, self.get(param) * factor)

    def zero(self, param: Optional[torch.Tensor]) -> None:
        if param is not None:
            self.set(param, torch.zeros_like(param))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._values.values())

    def __len__(self) -> int:
        return len(self._values)

    def commit(self, method: str) -> None:
        """Check every value is finite, then write them all in place (all or nothing)."""
        for param, value in self:
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise FloatingPointError(f"{method} computed a non-finite value for a parameter "
                                         f"of shape {tuple(param.shape)}; the model is unchanged")
        pairs = list(self)
        write_params([p for p, _ in pairs], [v for _, v in pairs])
