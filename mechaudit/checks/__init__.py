"""Built-in checks. Importing this package registers them by name (see :mod:`.registry`)."""

from . import critical_units, dead_units, forbidden_input  # noqa: F401
from . import circuit_discovery, circuit_faithfulness, protected_pathway, single_points  # noqa: F401
from . import cue_sensitivity  # noqa: F401
from .registry import CHECKS, Check, register

__all__ = ["CHECKS", "Check", "register"]
