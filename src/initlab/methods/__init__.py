"""One file per initialization method; importing a file registers its method by name."""
# ruff: noqa: I001, F401  (import order = the order of available_methods())
from . import default, gradinit, metainit, lsuv, fixup, skipinit, zero, tfixup, emergence
from . import classic
from . import autoinit, archscale
from . import admin, deepnet
