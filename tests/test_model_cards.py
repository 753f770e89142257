"""Model cards: one file per detector, complete, honest about scope; incomplete cards cannot register."""
from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest

from detectors.base import CARD_FIELDS, ModelCard
from detectors.weights import CARDS_DIR
from detectors.registry import detector_class, get_detector, list_detectors, register
from tiny_detector import TEST_CARD, TinyDetector

# Discovered, never listed: a new detector is its module, its card and its manifest rows.
SHIPPED = sorted(p.stem for p in CARDS_DIR.glob("*.toml"))


def test_every_shipped_detector_has_a_card_file():
    assert len(SHIPPED) >= 4
    packaged = sorted(n for n in list_detectors() if detector_class(n).__module__.startswith("detectors."))
    assert packaged == SHIPPED  # every detector module registers exactly the detector its card names
    for name in SHIPPED:
        assert name in list_detectors()
        data = tomllib.loads((CARDS_DIR / f"{name}.toml").read_text())
        card = get_detector(name).card
        for key, value in data.items():
            assert getattr(card, key).startswith(value)  # the file is the card (figures may get measured ones appended)


@pytest.mark.parametrize("name", SHIPPED)
def test_cards_are_complete_and_state_the_scope(name):
    card = get_detector(name).card
    assert card.problems() == []
    assert {key for _, key in CARD_FIELDS} == set(ModelCard.__dataclass_fields__) - {"scope_caveat"}
    out = card.out_of_scope_uses.lower()
    for term in ("synthetic", "lip-sync", "audio", "still image", "cheapfake"):
        assert term in out, f"{name}: out-of-scope uses must name {term}"
    # Per-group figures are either said to be unmeasured or given with the command that measured them.
    per_group = card.per_group_figures.lower()
    assert "not measured" in per_group or "python -m workbench evaluate" in per_group
    assert "face swap" in (card.detects + card.summary).lower().replace("-", " ")


def test_a_detector_with_an_incomplete_card_cannot_register():
    class NoCard(TinyDetector):
        name = "tiny-no-card"
        card = None

    class HalfCard(TinyDetector):
        name = "tiny-half-card"
        card = replace(TEST_CARD, per_group_figures="", known_biases="   ")

    with pytest.raises(ValueError, match="no model card"):
        register(NoCard)
    with pytest.raises(ValueError, match="incomplete model card: empty known_biases, per_group_figures"):
        register(HalfCard)
    assert "tiny-half-card" not in list_detectors()
