"""Built-in checks. Importing this package registers them by name (see :mod:`.registry`)."""

from . import critical_units, dead_units, forbidden_input  # noqa: F401
from .registry import CHECKS, Check, register

__all__ = ["CHECKS", "Check", "register"]
