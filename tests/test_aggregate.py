"""Aggregation rules and the ensemble."""
from __future__ import annotations

import pytest

from workbench.aggregate import Rule, ensemble, top_fraction_mean


def test_top_fraction_mean():
    assert top_fraction_mean([0.1, 0.9, 0.5, 0.3]) == 0.9
    assert top_fraction_mean([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]) == pytest.approx(0.75)
    assert top_fraction_mean([0.4]) == 0.4


def test_rule_names_and_scores():
    rule = Rule()
    assert rule.name == "track=top25-mean;video=max;min_frames=3"
    assert rule.video_score([rule.track_score([0.1, 0.2, 0.9, 0.8]), 0.3]) == 0.9
    assert "top 25%" in rule.describe()
    with pytest.raises(ValueError, match="unknown track rule"):
        Rule(track="vibes")


def test_ensemble_leaves_out_and_names_members_without_scores():
    out = ensemble({"a": 0.8, "b": 0.4, "c": None, "d": None},
                   {"a": "ok", "b": "ok", "c": "unavailable", "d": "error"})
    assert out["score"] == pytest.approx(0.6)
    assert out["members"] == ["a", "b"]
    assert out["left_out"] == {"c": "unavailable", "d": "error"}
    assert ensemble({"a": 0.8, "b": 0.4}, {"a": "ok", "b": "ok"}, "max")["score"] == 0.8


def test_ensemble_without_members_has_no_score():
    out = ensemble({"a": None}, {"a": "inconclusive"})
    assert out["score"] is None and out["status"] == "inconclusive"
    assert ensemble({}, {})["status"] == "unavailable"
    assert ensemble({"a": None}, {"a": "error"})["status"] == "error"
