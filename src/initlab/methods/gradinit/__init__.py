"""GradInit (Zhu et al., NeurIPS 2021, arXiv 2102.08098): one learned scale per parameter tensor.

    report = initlab.gradinit(model, data, lr=0.1)                       # the default search
    report = initlab.gradinit(model, data, lr=0.1, faithful=True)        # the authors' search
    report = initlab.gradinit(model, data, **initlab.TRANSFORMER_RECIPE)  # the authors' Post-LN recipe

Files: `api.py` the entry point (settings, the all-or-nothing write, the registry names);
`config.py` the settings and recipes; `iteration.py` one iteration and the authors' loop;
`default_search.py` the default loop and its stopping rule; `warm_start.py` its warm start;
`guard.py` its guard; `search.py` one iteration's computations on a fixed model; `batches.py`
the authors' S and S~; `shortcut.py` the constraint step's Linear/Conv shortcut;
`distributed.py` one search across the ranks of `torch.distributed`; `scale_adam.py` the
scales' optimizers (the authors' RescaleAdam, and Adam on log-scales).
"""
from .api import gradinit
from .config import TRANSFORMER_RECIPE, GradInitConfig
from .scale_adam import LogScaleAdam, ScaleAdam
from .search import GradInitSearch

__all__ = ["GradInitConfig", "GradInitSearch", "LogScaleAdam", "ScaleAdam", "TRANSFORMER_RECIPE",
           "gradinit"]
