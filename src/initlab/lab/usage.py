"""How every `initlab` subcommand refuses bad input: one line that names the fix, exit status 2.

A subcommand checks all its arguments before any work and raises `UsageError` on the first bad
one; `initlab.lab.cli.main` prints it as one line on stderr, without a traceback,

    initlab compare: error: --epochs must be an integer >= 1, got 0

and exits with status 2 (argparse's own errors look and exit the same, through `Parser`). The
helpers below check the common kinds of arguments; each names the flag and the value refused.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import math
import os
from pathlib import Path
from typing import NoReturn, Optional, Sequence

import torch

EXIT_USAGE = 2   # bad input (the convention of argparse and of Unix commands)
EXIT_FAILED = 1  # the command ran, but some run failed with an error


class UsageError(Exception):
    """Bad command-line input; the message names the flag, the value and the fix."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def at_least(flag: str, value: Optional[int], minimum: int = 1) -> None:
    """`value` (None: not given) is an integer >= minimum."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be an integer >= {minimum}, got {value}")


def positive(flag: str, value: Optional[float]) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a positive number, got {value}")


def non_negative(flag: str, value: Optional[float]) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{flag} must be a number >= 0, got {value}")


def fraction(flag: str, value: Optional[float]) -> None:
    """A value in [0, 1) (a momentum)."""
    if value is not None and not 0 <= value < 1:
        raise UsageError(f"{flag} must lie in [0, 1), got {value}")


def one_of(flag: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, list(choices), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"{flag} {value!r} is unknown{hint}; use one of: {', '.join(choices)}")


def existing_dir(flag: str, path: Optional[str | os.PathLike]) -> None:
    if path is not None and not Path(path).is_dir():
        raise UsageError(f"{flag} {str(path)!r} is not a folder; give the folder that holds "
                         "the files")


def writable_dir(flag: str, path: Optional[str | os.PathLike]) -> None:
    """`path` is a folder we can write, or can be created (it is created now)."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a file; give a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {str(path)!r} cannot be created ({e.strerror}); give a folder "
                         "you can write") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {str(path)!r} is not writable; give a folder you can write")


def device(flag: str, name: str) -> None:
    """A device torch knows and this machine has."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {name!r} is not a device; use cpu, cuda, cuda:1, ...") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {name}: CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise UsageError(f"{flag} {name!r}: use cpu, cuda, cuda:1, ...")


def reraise(flag: str, error: BaseException) -> NoReturn:
    """A library error about `flag`'s value, as a UsageError naming the flag."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    raise UsageError(f"{flag}: {message}") from None


def method_setting(text: str) -> tuple[str, str, object]:
    """`--set METHOD.KEY=VALUE` -> (method, key, value); VALUE read as a Python literal if it is
    one (`inf` and `-inf` as floats), else kept as a string."""
    try:
        lhs, raw = text.split("=", 1)
        method, key = lhs.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected METHOD.KEY=VALUE, got {text!r}") from None
    if raw.strip().lower() in ("inf", "+inf", "-inf"):
        return method, key, float(raw)
    try:
        return method, key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return method, key, raw
