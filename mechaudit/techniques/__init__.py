"""Reusable interpretability techniques, usable from a notebook without the rule engine."""
