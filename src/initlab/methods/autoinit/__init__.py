"""AutoInit (Bingham & Miikkulainen, AAAI 2023): analytic, signal-preserving weight
initialization from the model's traced graph.

    report = autoinit(model, x)                         # x: a batch of inputs (shapes)
    register_moment_map(MyBlock, my_map)                # how MyBlock changes the statistics
    register_elementwise(my_activation)                 # an elementwise function: quadrature

Layout: `api` (the entry point and what departs from the paper), `config`, `statistics`
(`Moments`), `laws` (quadrature and non-normal laws), `scales` (scale classes), `registry`
(maps and their traits), `context` (what a map sees), `weights` and `draws` (the weights),
`geometry` (convolutions), `propagate` (the engine), and the maps: `layers`, `elementwise`,
`arithmetic`, `layout`, `norms`, `pooling`, `attention`, `aten` (torch.export graphs).
Measured accuracy and cost: RESULTS.md.
"""
from . import (  # noqa: F401  (the maps register themselves)
    arithmetic,
    aten,
    attention,
    elementwise,
    layers,
    layout,
    norms,
    pooling,
)
from .api import autoinit
from .config import AutoInitConfig
from .context import MapContext
from .elementwise import register_elementwise
from .registry import MapSpec, register_moment_map, unregister_moment_map
from .statistics import Moments, moments

__all__ = ["AutoInitConfig", "MapContext", "MapSpec", "Moments", "autoinit", "moments",
           "register_elementwise", "register_moment_map", "unregister_moment_map"]
