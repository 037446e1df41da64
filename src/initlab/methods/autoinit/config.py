"""AutoInit's settings (`AutoInitConfig`), validated before anything is traced or drawn."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

from ...core.checks import integer, positive, require
from ...core.graph import TRACERS, LeafSpec
from .draws import DISTRIBUTIONS

InputMoments = Union[str, tuple[float, float]]


@dataclass
class AutoInitConfig:
    signal_variance: float = 1.0          # sigma^2: every weighted layer's output variance
    input_moments: InputMoments = "standard"  # "standard": (0, 1); "measure": from
    #                                       example_input; or (mean, variance)
    distribution: str = "normal"          # "normal" (the paper's), "uniform", "orthogonal",
    #                                       "delta-orthogonal": same mean square (draws.py)
    centered: bool = False                # each unit's weights sum to 0
    rescale: bool = True                  # scale each drawn weight so that its output variance,
    #                                       predicted from the values drawn, is exactly sigma^2;
    #                                       False: the paper's draw as it falls
    leaf_modules: Sequence[LeafSpec] = ()  # module types / names not traced into
    tracer: str = "auto"                  # "fx", "export", or "auto" (fx, else torch.export)
    quadrature_points: int = 64           # Gauss-Hermite nodes for elementwise functions
    mc_samples: int = 4096                # Monte Carlo draws for softmax and attention weights
    seed: Optional[int] = None            # weight draws and Monte Carlo; None: torch's generator

    def validate(self) -> None:
        positive("signal_variance", self.signal_variance)
        require(self.distribution in DISTRIBUTIONS, f"distribution must be one of "
                f"{', '.join(map(repr, DISTRIBUTIONS))}, got {self.distribution!r}")
        ok = self.input_moments in ("standard", "measure") or (
            isinstance(self.input_moments, (tuple, list)) and len(self.input_moments) == 2
            and float(self.input_moments[1]) > 0)
        require(ok, "input_moments must be 'standard' (mean 0, variance 1), 'measure' (from "
                f"example_input) or (mean, variance > 0), got {self.input_moments!r}")
        require(self.tracer in TRACERS, f"tracer must be one of {', '.join(map(repr, TRACERS))}"
                f", got {self.tracer!r}")
        integer("quadrature_points", self.quadrature_points, minimum=8)
        require(self.quadrature_points <= 256, "quadrature_points must be <= 256 (numpy's "
                "Gauss-Hermite weights underflow beyond)")
        integer("mc_samples", self.mc_samples, minimum=256)
