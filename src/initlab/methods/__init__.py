"""One file per initialization method; importing a file registers its method by name."""
from . import (  # noqa: F401  (import order = the order of available_methods())
    classic,
    default,
    emergence,
    fixup,
    gradinit,
    lsuv,
    metainit,
    skipinit,
    tfixup,
    zero,
)
