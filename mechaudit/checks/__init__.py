"""Built-in checks. Importing this package registers them by name (see :mod:`.registry`)."""

from . import (  # noqa: F401
    attribution_faithfulness,
    attribution_sanity,
    circuit_discovery,
    circuit_faithfulness,
    critical_units,
    cue_sensitivity,
    dead_units,
    dictionary_features,
    dimensionality,
    dissection,
    forbidden_input,
    functional_modules,
    layer_redundancy,
    patching,
    polysemantic_units,
    probes,
    protected_pathway,
    single_points,
)
from .registry import CHECKS, Check, register

__all__ = ["CHECKS", "Check", "register"]
