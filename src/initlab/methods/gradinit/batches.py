"""The batches of a GradInit iteration: S = B0 u B1 and S~ = B0 u B2 (or B3 u B2 without
overlap), drawn in this order from the user's data; batches that cannot be concatenated
(variable-length tokens) are split in thirds instead (the authors' Transformer recipe)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ...core.batches import BatchStream, concat, split_thirds

if TYPE_CHECKING:
    from .config import GradInitConfig

log = logging.getLogger("initlab.methods.gradinit")


class GradInitBatches:
    """Draws S and S~ in the contract's order (see `initlab.gradinit`)."""

    def __init__(self, stream: BatchStream, cfg: GradInitConfig):
        self.stream, self.cfg = stream, cfg
        self.split = cfg.batching == "split"
        self.b0 = self.pending_tilde = None

    def S(self) -> Any:
        if not self.split:
            b0, b1 = self.stream.next(), self.stream.next()
            try:
                self.b0 = b0
                return concat(b0, b1)
            except ValueError as e:
                if self.cfg.batching == "concat":
                    raise ValueError(f"batches cannot be concatenated ({e}); use batching='split' "
                                     "to split each batch in thirds instead") from None
                log.info("batches do not concatenate (%s): splitting each batch in thirds", e)
                self.split = True
                self.stream.put_back(b1)
                batch = b0
        else:
            batch = self.stream.next()
        S, self.pending_tilde = split_thirds(batch)
        return S

    def S_tilde(self) -> Any:
        if self.split:
            return self.pending_tilde
        b2 = self.stream.next()
        first = self.b0 if self.cfg.overlap else self.stream.next()  # B0, or a fresh B3
        try:
            return concat(first, b2)
        except ValueError:
            log.warning("S~ halves do not concatenate; using B2 alone for this iteration")
            return b2
