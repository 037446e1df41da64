"""Shared machinery: parameter selection, the batch/loss protocol, modes, scales, reports."""
from .loss import Substituted, default_loss
from .params import ParamSpec, select_params, trainable_params
from .report import InitReport, apply

__all__ = ["InitReport", "ParamSpec", "Substituted", "apply", "default_loss", "select_params",
           "trainable_params"]
