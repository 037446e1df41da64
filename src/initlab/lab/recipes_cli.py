"""`initlab recipes`: the training protocols `initlab compare --recipe NAME` can follow, each
with its source and every setting it makes."""
from __future__ import annotations

import argparse
from typing import Any

from . import usage
from .recipes import recipe, recipes


def add_subcommand(sub: Any) -> None:
    p = sub.add_parser("recipes", help="list the training protocols (--recipe NAME) with their "
                       "sources and settings")
    p.add_argument("names", nargs="*", help="only these recipes (default: all)")


def main_from_args(a: argparse.Namespace) -> int:
    for name in a.names:
        usage.one_of("recipe", name, [r.name for r in recipes()])
    chosen = [recipe(n) for n in a.names] if a.names else recipes()
    print("\n\n".join(r.describe() for r in chosen))
    print("\nA setting given on the command line (or in CompareConfig) overrides the recipe's.")
    return 0
