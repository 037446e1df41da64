"""Progress bars where a person is waiting (tqdm, an optional extra), nothing otherwise."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, show: bool, desc: str):
    if not show:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        log.warning("progress=True needs tqdm: pip install 'initlab[lab]'")
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="it")
