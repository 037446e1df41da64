"""`python -m initlab ...`: the `initlab` command (`initlab.lab.cli`)."""
import sys

from .lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
