"""Hugging Face transformers: batch helpers (torch alone) and a `Trainer` callback.

    from initlab.integrations.hf import causal_lm_batches, tied_parameter_names   # torch only
    from initlab.integrations.hf import InitCallback     # needs initlab[hf]: transformers, accelerate
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[InitCallback("gradinit")])

`InitCallback` (in `trainer.py`) is imported on first use, so the helpers work without
transformers installed.
"""
from typing import Any

from .batches import causal_lm_batches, masked_lm_batches, tied_parameter_names, token_stream

__all__ = ["InitCallback", "causal_lm_batches", "masked_lm_batches", "tied_parameter_names",
           "token_stream"]


def __getattr__(name: str) -> Any:
    if name == "InitCallback":
        from .trainer import InitCallback
        return InitCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
