"""The Medics under our whole-video frame policy, registered beside the authors' `medics` so an analyst can pick either."""
from __future__ import annotations

import tomllib
from dataclasses import replace

from detectors.base import load_card
from detectors.medics import NAME as MEDICS, WHOLE, Medics
from detectors.registry import register
from detectors.weights import CARDS_DIR

NAME = "medics-whole"


def whole_card():
    """The `medics` card with this card file's fields (what differs: the policy) put over it."""
    own = tomllib.loads((CARDS_DIR / f"{NAME}.toml").read_text(encoding="utf-8"))
    return replace(load_card(MEDICS), **own)


@register
class MedicsWhole(Medics):
    name = NAME
    card = whole_card()
    frame_policy = WHOLE
    # Same weights as `medics` (its manifest rows; installed with the same command).
    install_hint = "python -m workbench weights install medics"
    upstream_rule = ("Ours, not the authors': their method and rule on every consecutive 100-frame window; "
                     "headline = the window with the highest score. Per window: " + Medics.upstream_rule)
