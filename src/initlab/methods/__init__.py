"""One file per initialization method; importing a file registers its method by name."""
from . import (  # noqa: F401  (import order = the order of available_methods())
    default, gradinit, metainit, lsuv, fixup, skipinit, zero, tfixup, emergence, classic,
)
