"""One file per initialization method; importing a file registers its method by name."""
from . import default, gradinit  # noqa: F401
