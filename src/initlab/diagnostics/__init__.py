"""initlab.diagnostics: see why a network will not train, and what an initialization changed.

    d = initlab.diagnose(model, train_loader, lr=0.1)          # SGD momentum 0.9 by default
    print(d.summary())                                         # tables, then the verdict
    d.plot("diagnosis.png")                                    # the one-page figure
    c = initlab.diagnostics.compare_method(model, train_loader, "kaiming", lr=0.1)
    c.plot("kaiming.png")                                      # before/after, model untouched

On a few real batches, with the model left bitwise as it was: each layer's output RMS, mean and
spread in forward order; each parameter tensor's gradient RMS and the update/weight ratio of
one step of your optimizer at your lr; the held-out loss after that step against before it;
residual branches against their skips; attention entropy per head and the rank of token
representations for Transformers; and a verdict naming what vanishes, explodes or dominates,
with the methods that address it. The measured-against-predicted variance of AutoInit's report
lives here too (`layer_moments`, `plot_autoinit`).
"""
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
