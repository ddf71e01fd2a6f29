"""The ``screen_steps`` parameter of the rules whose screen averages gradients along a path (L207, R304)."""

from __future__ import annotations

from typing import Any

from .registry import param


def screen_steps_param(default: int, ends: str) -> Any:
    """``screen_steps``: points of the straight path at which the screen's gradient is taken and averaged
    (:mod:`mechaudit.techniques.path_attribution`); ``ends`` says what one and two points are for the rule."""
    return param(default, low=1, doc=f"screened: gradient points averaged along the straight path to the "
                                     f"intervention ({ends}; more: EAP-IG's interior points, every component "
                                     f"moved at once); each a forward and backward pass per batch")
