"""Built-in checks, one module per rule. Importing this package imports every module in it, which registers its
check and the rule the check defines (see :mod:`.registry`): adding a rule is adding a module."""

import importlib
import pkgutil

from .registry import CHECKS, Check, RuleDefinition, RuleDocs, register, rule_definitions

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["CHECKS", "Check", "RuleDefinition", "RuleDocs", "register", "rule_definitions"]
