"""initlab: initialize PyTorch models so that they train stably and fast.

    report = initlab.gradinit(model, data)        # learn per-tensor scales (Zhu et al. 2021)
    report.save("init.pt")
    initlab.apply(fresh_model, "init.pt")         # replay them on a fresh model
    initlab.initialize(model, "gradinit", data)   # any method by name; see available_methods()
    print(initlab.diagnose(model, data, lr=0.1).summary())   # why a network will not train
"""
from . import methods  # noqa: F401  (registers every method)
from .core.report import DrawReport, InitReport, LayerReport, ScalesReport, VarianceReport, apply
from .core.residual import ResidualSum, mark_residual_branch, residual_branches, residual_sums
from .core.version import __version__
from .diagnostics import diagnose
from .methods.archscale import archscale_init, archscale_lr, path_depths
from .methods.autoinit import (
    AutoInitConfig,
    Moments,
    autoinit,
    moments,
    register_elementwise,
    register_moment_map,
    unregister_moment_map,
)
from .methods.classic import kaiming, orthogonal, xavier
from .methods.emergence import emergence
from .methods.fixup import fixup
from .methods.gradinit import TRANSFORMER_RECIPE, GradInitConfig, gradinit
from .methods.lsuv import LSUVConfig, lsuv
from .methods.metainit import MetaInitConfig, gradient_quotient, metainit
from .methods.skipinit import skipinit
from .methods.tfixup import tfixup
from .methods.zero import zero as zero_init
from .registry import available_methods, initialize, method_info

__all__ = [
    "AutoInitConfig", "DrawReport", "GradInitConfig", "InitReport", "LayerReport", "ScalesReport",
    "VarianceReport", "LSUVConfig", "MetaInitConfig", "Moments",
    "ResidualSum", "TRANSFORMER_RECIPE", "__version__", "apply", "archscale_init", "archscale_lr",
    "autoinit", "available_methods", "diagnose", "emergence", "fixup", "gradient_quotient",
    "gradinit", "initialize", "kaiming", "lsuv", "mark_residual_branch", "metainit",
    "method_info", "moments", "orthogonal", "path_depths", "register_elementwise",
    "register_moment_map", "residual_branches", "residual_sums", "skipinit", "tfixup",
    "unregister_moment_map", "xavier", "zero_init",
]
