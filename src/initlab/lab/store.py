"""Results stored run by run, so a long study resumes where it stopped and several processes
on one machine can fill it together.

Each finished run is one file, written whole or not at all (`write_atomic`); a process takes a
run before starting it by creating `<run>.claim` holding its pid (`claim`); a claim whose
process is gone is taken over, so a killed worker's run is redone by the next one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def plain_outcome(report: Any) -> dict[str, Any]:
    """A method report's `outcome` (GradInit: why the search stopped, the guard's losses) as
    JSON-safe values, ready to store with a run; {} for a report without one."""
    outcome = getattr(report, "outcome", None) or {}
    return json.loads(json.dumps(outcome, default=repr))


def write_atomic(path: Path, save: Callable[[Path], Any]) -> None:
    """`save(tmp)` then rename: a file is stored whole or not at all. If `save` or the rename
    fails (a full disk, an interrupt), the partial `tmp` is removed and the error raised."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        save(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def claim(path: Path) -> bool:
    """Take a cell for this process: several `run_grid` processes on one machine share the work.
    A `.claim` file holds the owner's pid; a claim whose process is gone is taken over."""
    marker = path.with_suffix(".claim")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(marker.read_text()), 0)
            return False                     # a live process works on it
        except ProcessLookupError:
            marker.unlink(missing_ok=True)   # a stale claim: its process died
            return claim(path)
        except (ValueError, PermissionError):
            return False                     # being written, or another user's process
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True
