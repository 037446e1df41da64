"""initlab.diagnose: see why a network will not train, and what an initialization changed.

    d = initlab.diagnose(model, train_loader, lr=0.1)        # SGD momentum 0.9 by default
    print(d.summary())                                       # tables, then the verdict
    d.plot("diagnosis.png")                                  # the one-page figure
    c = initlab.diagnose.compare_method(model, train_loader, "kaiming", lr=0.1)
    c.plot("kaiming.png")                                    # before/after, model untouched

On a few real batches, with the model left bitwise as it was: each layer's output RMS and mean
in forward order; each parameter tensor's gradient RMS and the update/weight ratio of one step
of your optimizer at your lr; the held-out loss after that step against before it; residual
branches against their skips; attention entropy per head and the rank of token
representations for Transformers; and a verdict naming what vanishes, explodes or dominates,
with the methods that address it. Layer moments for AutoInit's report live here too
(`layer_moments`, `plot_autoinit`).

The package is callable: `initlab.diagnose(...)` is `initlab.diagnose.diagnose(...)`.
"""
import sys
import types

from .api import diagnose
from .compare import Comparison, compare, compare_method
from .moments import layer_moments, plot_autoinit
from .result import (
    AttentionStat,
    BranchStat,
    Diagnosis,
    Finding,
    LayerStat,
    RankStat,
    TensorStat,
)

__all__ = [
    "AttentionStat", "BranchStat", "Comparison", "Diagnosis", "Finding", "LayerStat", "RankStat",
    "TensorStat", "compare", "compare_method", "diagnose", "layer_moments", "plot_autoinit",
]


class _CallableModule(types.ModuleType):
    """`initlab.diagnose(model, data, lr=...)` calls `diagnose`; the module stays a module."""

    def __call__(self, *args, **kwargs) -> Diagnosis:
        return diagnose(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
