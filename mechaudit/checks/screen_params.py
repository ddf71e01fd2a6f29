"""The parameters screened rules declare (L202, L207, L208, R304; GradDrop: L202 and L207): see
:mod:`..techniques.atp`."""

from __future__ import annotations

from typing import Any

from ..techniques.atp import SCREEN_ABOVE
from ..techniques.graddrop import AUTO_PASSES
from .registry import param


def exhaustive_param(done: str, over: str = "components") -> Any:
    """``exhaustive``: ``done`` (e.g. "ablated") names the exact intervention, ``over`` what is counted."""
    return param(False, doc=f"every component {done} exactly; otherwise more than {SCREEN_ABOVE} {over} are screened "
                            f"by attribution patching (AtP*) and only the screen's top ones and a random calibration "
                            f"sample are {done} exactly")


def calibration_param(done: str, default: int = 16) -> Any:
    """``calibration``: the size of the random sample outside the screen's top that is ``done`` exactly. 16 by
    default: on a GPT-2-small-shaped audit each exactly checked component is a forward pass of the model over every
    sample (about 6 s on two cores), and the default audit fits 15 minutes only with 16 per screened rule (issue
    16, ``python benchmarks/gpt2_small.py --plan``); with none of 16 over a threshold, the one-sided 95% bound on
    the unchecked share over it is 17%."""
    return param(default, low=0, doc=f"screened: seeded random sample of the other components, {done} exactly to "
                                     "measure the screen's agreement and what it may miss")


def graddrop_param() -> Any:
    """``screen_graddrop``: whether the screen adds AtP*'s GradDrop (:mod:`mechaudit.techniques.graddrop`)."""
    return param("auto", choices=("auto", "on", "off"),
                 doc="screened: also score each unit by AtP*'s GradDrop (the screen's own estimate rerun once per "
                     "audited Linear/Conv/attention block after the first screened layer with that block's write "
                     "detached, so paths whose effects cancel are scored apart), ranked by it where it exceeds plain "
                     "AtP; the screen's gradient passes once more per such block, within half the time left; auto: "
                     f"on when at most {AUTO_PASSES} blocks follow the first screened layer")
