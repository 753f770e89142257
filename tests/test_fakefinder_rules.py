"""NTechLab's, Eighteen Years Old's and The Medics' video rules against values computed by hand from the upstream formulas."""
from __future__ import annotations

import pytest

from detectors.base import Status
from detectors.fakefinder_rules import (
    EIGHTEEN_IMAGE, EIGHTEEN_MEMBERS, EIGHTEEN_SLOWFAST, MEDICS_2D, MEDICS_3D, MEDICS_MEMBERS, eighteen_across_faces,
    eighteen_face_score, eighteen_scale, rule_eighteen, rule_medics, rule_ntech,
)


# -- NTechLab ----------------------------------------------------------------------------------------------
def test_ntech_hand_example():
    """p = [0.9, 0.6, 0.3, 0.5, 0.02], d = [0.4, 0.1, -0.2, 0, -0.48]:
    0.4^0.65 = 0.551222 -> 1.051 clipped 0.99; 0.1^0.65 = 0.223872 -> 0.723872; 0.2^0.65 = 0.351293 -> 0.148707;
    d = 0 stays 0.5; 0.48^0.65 = 0.620593 -> -0.1206 clipped 0.01. w = |d| + 1e-4 = [0.4001, 0.1001, 0.2001, 0.0001, 0.4801],
    sum 1.1805; sum p'w = 0.396099 + 0.072460 + 0.029756 + 0.000050 + 0.004801 = 0.503166; 0.503166 / 1.1805 = 0.426231."""
    result = rule_ntech([0.9, 0.6, 0.3, 0.5, 0.02])
    assert result.status is Status.OK
    assert result.score == pytest.approx(0.426231, abs=1e-6)
    assert result.detail == {"n_probabilities": 5, "n_neutral": 1}


def test_ntech_neutral_values_weigh_almost_nothing():
    """d = 0 is left at 0.5 (not pushed by the power) and weighs 1e-4: beside one 0.9 (p' 0.99, w 0.4001)
    three 0.5s give (0.99 * 0.4001 + 3 * 0.5 * 1e-4) / (0.4001 + 3e-4) = 0.396249 / 0.4004 = 0.989633."""
    assert rule_ntech([0.5, 0.5, 0.5]).score == pytest.approx(0.5)
    assert rule_ntech([0.9, 0.5, 0.5, 0.5]).score == pytest.approx(0.989633, abs=1e-6)


def test_ntech_is_symmetric_about_one_half():
    """The transform is odd in d and the weights even, so mirrored inputs give mirrored scores."""
    probs = [0.9, 0.62, 0.3, 0.55, 0.02, 0.47]
    assert rule_ntech(probs).score == pytest.approx(1.0 - rule_ntech([1 - p for p in probs]).score)


def test_ntech_no_probability_is_inconclusive_not_one_half():
    result = rule_ntech([])
    assert result.status is Status.INCONCLUSIVE and result.score is None
    assert "no face track" in result.reason


@pytest.mark.parametrize("bad", [[0.3, float("nan")], [1.2], [-0.1]])
def test_ntech_refuses_values_that_are_not_probabilities(bad):
    with pytest.raises(ValueError, match="not probabilities"):
        rule_ntech(bad)


# -- Eighteen Years Old: per face, across faces, scale -----------------------------------------------------
def test_eighteen_face_rule():
    # 5 of 6 groups > 0.85 (83 % > 70 %): the mean of those = (0.9 + 0.95 + 0.88 + 0.99 + 0.86) / 5 = 0.916
    assert eighteen_face_score([0.9, 0.95, 0.88, 0.99, 0.86, 0.5]) == pytest.approx(0.916)
    # 5 of 6 < 0.15: (0.1 + 0.05 + 0.12 + 0.01 + 0.02) / 5 = 0.06
    assert eighteen_face_score([0.1, 0.05, 0.12, 0.01, 0.02, 0.9]) == pytest.approx(0.06)
    # mixed: the plain mean (0.9 + 0.2 + 0.5 + 0.6 + 0.7 + 0.1) / 6 = 0.5
    assert eighteen_face_score([0.9, 0.2, 0.5, 0.6, 0.7, 0.1]) == pytest.approx(0.5)


def test_eighteen_face_rule_needs_more_than_70_percent():
    # exactly 7 of 10 above 0.85 is not "more than 70 %": the plain mean, (7 * 0.9 + 3 * 0.1) / 10 = 0.66
    assert eighteen_face_score([0.9] * 7 + [0.1] * 3) == pytest.approx(0.66)
    # 8 of 10: the mean of the eight
    assert eighteen_face_score([0.9] * 8 + [0.1] * 2) == pytest.approx(0.9)


@pytest.mark.parametrize("faces,want", [
    ([0.7, 0.65], 0.7),    # all > 0.6: max
    ([0.3, 0.35], 0.3),    # all < 0.4: min
    ([0.95, 0.1], 0.95),   # max > 0.9 wins over everything
    ([0.5, 0.7], 0.6),     # else the mean
    ([0.62], 0.62),        # one face
])
def test_eighteen_across_faces(faces, want):
    assert eighteen_across_faces(faces) == pytest.approx(want)


def test_eighteen_scale_only_at_the_extremes():
    # (0.99 - 0.5) * 0.96 + 0.5 = 0.9704; (0.01 - 0.5) * 0.96 + 0.5 = 0.0296; 0.98 and 0.02 are included:
    # 0.48 * 0.96 = 0.4608, so 0.98 -> 0.9608 and 0.02 -> 0.0392
    assert eighteen_scale(0.99) == pytest.approx(0.9704)
    assert eighteen_scale(0.01) == pytest.approx(0.0296)
    assert eighteen_scale(0.98) == pytest.approx(0.9608)
    assert eighteen_scale(0.02) == pytest.approx(0.0392)
    assert eighteen_scale(0.97) == 0.97 and eighteen_scale(0.5) == 0.5


@pytest.mark.parametrize("call", [lambda: eighteen_face_score([]), lambda: eighteen_across_faces([])])
def test_eighteen_helpers_refuse_empty_input(call):
    with pytest.raises(ValueError):
        call()


# -- Eighteen Years Old: the final rule ----------------------------------------------------------------------
SF = {"SF1": 0.9, "SF2": 0.85, "SF3": 0.3, "SF4": 0.95}
IMG = {"XCP": 0.7, "B3": 0.6, "B1": 0.9, "B1long": 0.2, "B1short": 0.4, "B0": 0.5}  # RES34 failed


def test_eighteen_hand_example():
    """SlowFast: 3 of 4 > 0.8 (75 %): (10 * 0.9 + 8 * 0.85 + 8 * 0.95) / 26 = 23.4 / 26 = 0.9.
    Image: RES34 failed; 1 of 6 > 0.8, none < 0.2 (0.2 is not below 0.2): all, weights 10, 6, 10, 8, 8, 7 (sum 49):
    (7 + 3.6 + 9 + 1.6 + 3.2 + 3.5) / 49 = 27.9 / 49 = 0.569388. Final 0.4 * 0.9 + 0.6 * 0.569388 = 0.701633."""
    result = rule_eighteen({**SF, **IMG}, {"RES34": "RuntimeError: simulated"})
    assert result.status is Status.OK
    assert result.detail["slowfast"]["score"] == pytest.approx(0.9)
    assert result.detail["slowfast"]["filter"] == "> 0.8"
    assert result.detail["slowfast"]["members"] == ["SF1", "SF2", "SF4"]
    assert result.detail["image"]["score"] == pytest.approx(0.569388, abs=1e-6)
    assert result.detail["image"]["filter"] == "all"
    assert result.score == pytest.approx(0.701633, abs=1e-6)
    assert result.failed == (("RES34", "RuntimeError: simulated"),)
    assert "RES34" not in result.used and len(result.used) == 10


def test_eighteen_low_filter():
    # 3 of 4 < 0.2: (10 * 0.1 + 8 * 0.15 + 8 * 0.05) / 26 = 2.6 / 26 = 0.1; every image member failed
    low = {"SF1": 0.1, "SF2": 0.15, "SF3": 0.5, "SF4": 0.05}
    result = rule_eighteen(low, {m: "failed" for m in EIGHTEEN_IMAGE})
    assert result.score == pytest.approx(0.1)
    assert result.detail["image"] is None


def test_eighteen_one_empty_group_leaves_the_other_alone():
    no_sf = rule_eighteen(IMG, {"RES34": "failed", **{m: "failed" for m in EIGHTEEN_SLOWFAST}})
    assert no_sf.score == pytest.approx(0.569388, abs=1e-6)
    no_img = rule_eighteen(SF, {m: "failed" for m in EIGHTEEN_IMAGE})
    assert no_img.score == pytest.approx(0.9)


def test_eighteen_failed_member_renormalises_its_group():
    """SF2 failed: SF1 0.9, SF3 0.3, SF4 0.95 -> 2 of 3 (67 %) > 0.8 is not enough, so all three:
    (10 * 0.9 + 4 * 0.3 + 8 * 0.95) / 22 = 17.8 / 22 = 0.809091; with B0 only in the image group: 0.5."""
    scores = {"SF1": 0.9, "SF3": 0.3, "SF4": 0.95, "B0": 0.5}
    failures = {m: "weights not installed" for m in EIGHTEEN_MEMBERS if m not in scores}
    result = rule_eighteen(scores, failures)
    assert result.detail["slowfast"]["score"] == pytest.approx(17.8 / 22)
    assert result.score == pytest.approx(0.4 * 17.8 / 22 + 0.6 * 0.5)


def test_eighteen_every_member_failed_is_inconclusive_and_names_them():
    result = rule_eighteen({}, {m: f"{m} broke" for m in EIGHTEEN_MEMBERS})
    assert result.status is Status.INCONCLUSIVE and result.score is None
    assert [m for m, _ in result.failed] == list(EIGHTEEN_MEMBERS)


@pytest.mark.parametrize("scores,failures,match", [
    ({**SF, **IMG}, {}, "no value and no failure reason for RES34"),
    ({**SF, **IMG, "RES34": 0.5, "B9": 0.5}, {}, "unknown member"),
    ({**SF, **IMG, "RES34": 0.5}, {"RES34": "x"}, "both"),
    ({**SF, **IMG, "RES34": float("nan")}, {}, "not probabilities"),
])
def test_eighteen_refuses_an_incomplete_or_bad_report(scores, failures, match):
    with pytest.raises(ValueError, match=match):
        rule_eighteen(scores, failures)


# -- The Medics -------------------------------------------------------------------------------------------
VALUES = dict(zip(MEDICS_MEMBERS, [0.2, 0.4, 0.9, 0.1, 0.3, 0.6, 0.7, 0.8]))


def test_medics_hand_example():
    # (0.2 + 0.4 + 0.9 + 0.1 + 0.3 + 0.6 + 0.7 + 0.8) / 8 = 4.0 / 8 = 0.5
    result = rule_medics(VALUES)
    assert result.status is Status.OK
    assert result.score == pytest.approx(0.5)
    assert result.used == MEDICS_MEMBERS and result.failed == ()


def test_medics_a_failed_member_is_named_and_the_others_stay():
    """res34 fails: the other seven, (0.2 + 0.9 + 0.1 + 0.3 + 0.6 + 0.7 + 0.8) / 7 = 3.6 / 7 = 0.514286.
    (Upstream's single try would also have lost mc3_112 ... r2p1_cutmix and answered (0.2 + 0.8) / 2 = 0.5.)"""
    scores = {m: v for m, v in VALUES.items() if m != "res34"}
    result = rule_medics(scores, {"res34": "RuntimeError: simulated"})
    assert result.score == pytest.approx(3.6 / 7)
    assert result.failed == (("res34", "RuntimeError: simulated"),)
    assert "res34" not in result.used and len(result.used) == 7


def test_medics_clips_to_its_bounds():
    assert rule_medics(dict.fromkeys(MEDICS_MEMBERS, 1.0)).score == pytest.approx(0.999)
    assert rule_medics(dict.fromkeys(MEDICS_MEMBERS, 0.0)).score == pytest.approx(0.001)


def test_medics_zero_2d_value_kept_by_us_dropped_in_upstream_mode():
    """2-D value 0.0 with seven 3-D values of 0.2: kept, 1.4 / 8 = 0.175; upstream's `if preds_2d:` drops it: 0.2."""
    scores = {**dict.fromkeys(MEDICS_3D, 0.2), MEDICS_2D: 0.0}
    ours = rule_medics(scores)
    assert ours.score == pytest.approx(0.175) and MEDICS_2D in ours.used
    upstream = rule_medics(scores, drop_zero_2d=True)
    assert upstream.score == pytest.approx(0.2) and MEDICS_2D not in upstream.used
    assert upstream.detail["dropped_as_upstream"] == (MEDICS_2D,)


def test_medics_no_value_is_inconclusive_and_names_every_failure():
    result = rule_medics({}, {m: "no face" for m in MEDICS_MEMBERS})
    assert result.status is Status.INCONCLUSIVE and result.score is None
    assert [m for m, _ in result.failed] == list(MEDICS_MEMBERS)


def test_medics_refuses_an_unreported_member():
    with pytest.raises(ValueError, match="no value and no failure reason for srxt50"):
        rule_medics({m: 0.5 for m in MEDICS_3D})
