"""GradInit (Zhu et al., NeurIPS 2021, arXiv 2102.08098): one learned scale per parameter tensor.

    report = initlab.gradinit(model, data, lr=0.1)                       # SGD target
    report = initlab.gradinit(model, data, **initlab.TRANSFORMER_RECIPE)  # the authors' Post-LN recipe

Files: `api.py` the entry point (settings, the loop, the all-or-nothing write); `config.py` the
settings and recipes; `search.py` one iteration's computations on a fixed model; `batches.py`
how S and S~ are drawn; `shortcut.py` the constraint step's Linear/Conv shortcut;
`distributed.py` one search across the ranks of `torch.distributed`; `scale_adam.py` the
scales' own optimizer (the authors' RescaleAdam).
"""
from .api import gradinit
from .config import TRANSFORMER_RECIPE, GradInitConfig
from .scale_adam import ScaleAdam
from .search import GradInitSearch

__all__ = ["GradInitConfig", "GradInitSearch", "ScaleAdam", "TRANSFORMER_RECIPE", "gradinit"]
