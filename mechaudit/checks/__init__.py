"""Built-in checks. Importing this package registers them by name (see :mod:`.registry`)."""

from . import (  # noqa: F401  # noqa: F401
    circuit_discovery,
    circuit_faithfulness,
    critical_units,
    cue_sensitivity,  # noqa: F401
    dead_units,
    forbidden_input,
    protected_pathway,
    single_points,
)
from .registry import CHECKS, Check, register

__all__ = ["CHECKS", "Check", "register"]
