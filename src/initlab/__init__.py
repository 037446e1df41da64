"""initlab: initialize PyTorch models so that they train stably and fast.

    report = initlab.gradinit(model, data)        # learn per-tensor scales (Zhu et al. 2021)
    report.save("init.pt")
    initlab.apply(fresh_model, "init.pt")         # replay them on a fresh model
    initlab.initialize(model, "gradinit", data)   # any method by name; see available_methods()
"""
from . import methods  # noqa: F401  (registers every method)
from .core.report import InitReport, apply
from .core.residual import mark_residual_branch, residual_branches
from .methods.gradinit import TRANSFORMER_RECIPE, GradInitConfig, gradinit
from .registry import available_methods, initialize, method_info
from .version import __version__

__all__ = [
    "GradInitConfig", "InitReport", "TRANSFORMER_RECIPE", "__version__", "apply",
    "available_methods", "gradinit", "initialize", "mark_residual_branch", "method_info",
    "residual_branches",
]
