"""The video rules of FakeFinder's NTechLab, Eighteen Years Old and The Medics detectors, as pure functions of their members' outputs.

Each rule says what it used and what it left out, and gives no number when nothing is left to
score (upstream answered 0.5 then, which looks like a score but is not one). Failed members are
named with their reason instead of being dropped silently, as upstream did.

Written from the upstream code (IQTLabs/FakeFinder 780839f detectors/ntech/ensemble.py l.100-117
= NTech-Lab/deepfake-detection-challenge predict.py l.374-387; detectors/eighteen/ensemble.py
get_image_score, get_sf_score, get_final_score_policy, predict_batch l.164-411; detectors/medics/
ensemble.py l.18-70, 104-147 and constants.py), not copied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from detectors.base import Status


@dataclass(frozen=True)
class RuleResult:
    """One video rule's outcome.

    Attributes:
        status: Status.OK with a score, or Status.INCONCLUSIVE with a reason and no score.
        score: the video score in [0, 1], None unless status is OK.
        reason: why there is no score ("" when there is one).
        used: the members (or inputs) that entered the score, in the rule's order.
        failed: (member, reason) for each member that produced no value.
        detail: what the rule decided on the way (filters applied, group scores).
    """

    status: Status
    score: float | None
    reason: str = ""
    used: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    detail: Mapping[str, object] = field(default_factory=dict)


def _inconclusive(reason: str, failed=(), detail=None) -> RuleResult:
    return RuleResult(Status.INCONCLUSIVE, None, reason, (), tuple(failed), detail or {})


def _probabilities(values, what: str) -> np.ndarray:
    """Values as a flat float64 array, refusing anything that is not a probability (a failure is not a score)."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} value(s) are not probabilities in [0, 1], e.g. {arr[bad][0]!r}")
    return arr


def _split_members(members: Sequence[str], scores: Mapping[str, float], failures: Mapping[str, str],
                   rule: str) -> None:
    """Every member must be reported exactly once: with a value or with the reason it has none."""
    unknown = sorted((set(scores) | set(failures)) - set(members))
    if unknown:
        raise ValueError(f"{rule}: unknown member(s) {', '.join(unknown)}; members are {', '.join(members)}")
    both = sorted(set(scores) & set(failures))
    if both:
        raise ValueError(f"{rule}: member(s) {', '.join(both)} reported both with a value and as failed")
    missing = [m for m in members if m not in scores and m not in failures]
    if missing:
        raise ValueError(f"{rule}: no value and no failure reason for {', '.join(missing)}")


# -- NTechLab ---------------------------------------------------------------------------------------------
NTECH_EXPONENT = 0.65
NTECH_CLIP = (0.01, 0.99)
NTECH_WEIGHT_FLOOR = 1e-4


def rule_ntech(probabilities) -> RuleResult:
    """NTechLab's rule over every probability of a video (all sequence-model frame outputs and all frame-model outputs).

    With d = p - 0.5: p' = clip(0.5 + sign(d) |d|^0.65, 0.01, 0.99), and p' = p = 0.5 where d = 0
    (upstream transforms only d > 0 and d < 0); weight w = |d| + 1e-4 from the untransformed d;
    score = sum(p' w) / sum(w). The power pushes confident values further out, the weights let
    them dominate.

    Args:
        probabilities: sigmoid outputs in [0, 1], any shape; order does not matter.
    Returns:
        A RuleResult; inconclusive when there is no probability (upstream: no face track, 0.5).

    >>> round(rule_ntech([0.9, 0.6, 0.3, 0.5, 0.02]).score, 6)
    0.426231
    """
    p = _probabilities(probabilities, "rule_ntech")
    if p.size == 0:
        return _inconclusive("no face track: no probability to pool")
    d = p - 0.5
    # sign(0) = 0 keeps d = 0 at 0.5, as upstream leaves it untouched.
    moved = np.clip(0.5 + np.sign(d) * np.abs(d) ** NTECH_EXPONENT, *NTECH_CLIP)
    w = np.abs(d) + NTECH_WEIGHT_FLOOR
    score = float((moved * w).sum() / w.sum())
    return RuleResult(Status.OK, score, used=(f"{p.size} probabilities",),
                      detail={"n_probabilities": int(p.size), "n_neutral": int((d == 0).sum())})


# -- Eighteen Years Old -----------------------------------------------------------------------------------
# Members in upstream's score_list order; the group weights of predict_batch (l.399-410).
# SF1 sf_bc_jc_44000, SF2 sf_32000, SF3 sf_16x8_bc_jc_44000, SF4 sf_trainval_52000 (SlowFast-50);
# XCP xcep_bgr_58000, B3 b3_rgb_50000, RES34 res34_rgb_23000, B1 b1_rgb_58000, B1long b1_rgb_long_alldata_66000,
# B1short b1_rgb_alldata_58000, B0 b0_rgb_58000 (image models).
EIGHTEEN_SLOWFAST = {"SF1": 10, "SF2": 8, "SF3": 4, "SF4": 8}
EIGHTEEN_IMAGE = {"XCP": 10, "B3": 6, "RES34": 4, "B1": 10, "B1long": 8, "B1short": 8, "B0": 7}
EIGHTEEN_MEMBERS = tuple(EIGHTEEN_SLOWFAST) + tuple(EIGHTEEN_IMAGE)
EIGHTEEN_SLOWFAST_SHARE = 0.4  # final = 0.4 SlowFast group + 0.6 image group
EIGHTEEN_SCALED = ("B3", "RES34")  # members whose video score goes through eighteen_scale


def eighteen_face_score(group_probabilities) -> float:
    """An image member's score for one face, from its per-5-frame-group probabilities.

    More than 70 % of the groups above 0.85: the mean of those; else more than 70 % below 0.15:
    the mean of those; else the mean of all.

    >>> round(eighteen_face_score([0.9, 0.95, 0.88, 0.99, 0.86, 0.5]), 6)
    0.916
    """
    p = _probabilities(group_probabilities, "eighteen_face_score")
    if p.size == 0:
        raise ValueError("eighteen_face_score: no frame group for this face")
    # upstream holds the softmax outputs as a float32 array, so numpy compares and averages them in float32:
    # a group of exactly float32(0.85) is not "> 0.85" there, though 0.85000002 > 0.85 in float64
    p = p.astype(np.float32)
    for keep in (p > np.float32(0.85), p < np.float32(0.15)):
        if keep.sum() / p.size > 0.7:
            return float(p[keep].mean())
    return float(p.mean())


def eighteen_across_faces(face_scores) -> float:
    """One member's video score from its per-face scores (image members and SlowFast alike).

    Max above 0.9: the max; else every face above 0.6: the max; else every face below 0.4: the
    min; else the mean.

    >>> round(eighteen_across_faces([0.5, 0.7]), 6)
    0.6
    """
    s = _probabilities(face_scores, "eighteen_across_faces")
    if s.size == 0:
        raise ValueError("eighteen_across_faces: no face")
    # upstream's per-face scores are a float32 array (numpy 1.21): "all above 0.6" / "all below 0.4" and the
    # mean are float32 operations there, while the max is a float32 scalar compared with 0.9 in float64
    s = s.astype(np.float32)
    if float(s.max()) > 0.9 or (s > np.float32(0.6)).all():
        return float(s.max())
    if (s < np.float32(0.4)).all():
        return float(s.min())
    return float(s.mean())


def eighteen_scale(score: float) -> float:
    """Upstream's "isScale" (B3, ResNet-34): scores at or beyond 0.98 / 0.02 are pulled in by 4 %.

    >>> round(eighteen_scale(0.99), 6), round(eighteen_scale(0.01), 6), eighteen_scale(0.5)
    (0.9704, 0.0296, 0.5)
    """
    if score >= 0.98 or score <= 0.02:
        return (score - 0.5) * 0.96 + 0.5
    return score


def _eighteen_group(weights: Mapping[str, int], scores: Mapping[str, float]) -> dict | None:
    """get_final_score_policy for one group: confident filter (> 0.8 / < 0.2 for more than 70 %), weighted mean."""
    names = [m for m in weights if m in scores]
    if not names:
        return None
    s = np.array([scores[m] for m in names])
    w = np.array([weights[m] for m in names], dtype=np.float64)
    for label, keep in (("> 0.8", s > 0.8), ("< 0.2", s < 0.2)):
        if keep.sum() / s.size > 0.7:
            kept = [m for m, k in zip(names, keep) if k]
            return {"score": float((s[keep] * w[keep]).sum() / w[keep].sum()), "filter": label, "members": kept}
    return {"score": float((s * w).sum() / w.sum()), "filter": "all", "members": names}


def rule_eighteen(scores: Mapping[str, float], failures: Mapping[str, str] | None = None) -> RuleResult:
    """Eighteen Years Old's final rule over its eleven members' video scores.

    Within each group (SlowFast: SF1-SF4 weighted 10, 8, 4, 8; image: XCP, B3, RES34, B1, B1long,
    B1short, B0 weighted 10, 6, 4, 10, 8, 8, 7) failed members are left out and the weights
    renormalised; if more than 70 % of the rest score > 0.8, only those enter the weighted mean
    (else the same for < 0.2, else all). Final = 0.4 SlowFast + 0.6 image; one empty group: the
    other alone.

    Args:
        scores: member -> its video score (eighteen_across_faces, then eighteen_scale for B3 and RES34).
        failures: member -> why it has no score (upstream's -1). Every member must be in exactly one.
    Returns:
        A RuleResult; inconclusive when every member failed (upstream: -1, shown as 0.5).
    """
    failures = dict(failures or {})
    _split_members(EIGHTEEN_MEMBERS, scores, failures, "rule_eighteen")
    clean = {m: float(_probabilities([v], f"rule_eighteen {m}")[0]) for m, v in scores.items()}
    failed = tuple((m, failures[m]) for m in EIGHTEEN_MEMBERS if m in failures)
    slowfast = _eighteen_group(EIGHTEEN_SLOWFAST, clean)
    image = _eighteen_group(EIGHTEEN_IMAGE, clean)
    detail = {"slowfast": slowfast, "image": image}
    if slowfast is None and image is None:
        return _inconclusive("every member failed", failed, detail)
    if slowfast is not None and image is not None:
        score = EIGHTEEN_SLOWFAST_SHARE * slowfast["score"] + (1 - EIGHTEEN_SLOWFAST_SHARE) * image["score"]
    else:
        score = (slowfast or image)["score"]
    used = tuple(m for m in EIGHTEEN_MEMBERS if m in clean)
    return RuleResult(Status.OK, float(score), used=used, failed=failed, detail=detail)


# -- The Medics -------------------------------------------------------------------------------------------
# 3-D models in upstream's PRETRAINED_MODELS_3D order (detectors/medics/cnn3d/builder.py), then the 2-D model:
# i3d j3d_e1_l0.1374, res34 res34_1cy_minaug_nonorm_e4_l0.1794, mc3_112 mc3_18_112_1cy_lilaug_nonorm_e9_l0.1905,
# mc3_224 mc3_18_112t224_1cy_lilaug_nonorm_e7_l0.1901, r2p1_112 r2p1_18_8_112tr_112te_e12_l0.1741,
# i3d_cutmix i3dcutmix_e11_l0.1612, r2p1_cutmix r2plus1dcutmix_112_e10_l0.1608; srxt50 SRXT50_094_VM-0.2504.
MEDICS_3D = ("i3d", "res34", "mc3_112", "mc3_224", "r2p1_112", "i3d_cutmix", "r2p1_cutmix")
MEDICS_2D = "srxt50"
MEDICS_MEMBERS = MEDICS_3D + (MEDICS_2D,)
MEDICS_CLIP = (0.001, 0.999)


def rule_medics(scores: Mapping[str, float], failures: Mapping[str, str] | None = None, *,
                drop_zero_2d: bool = False) -> RuleResult:
    """The Medics' rule: the plain mean of the members' values, clipped to [0.001, 0.999].

    Each value is that model's mean over faces (3-D: its per-face probability; 2-D: the per-face
    median over frames). Upstream runs the 3-D models in one try block, so one failure silently
    drops it and every later model; here each member stands alone and a failure is named.

    Args:
        scores: member -> value in [0, 1] (members in MEDICS_MEMBERS).
        failures: member -> why it has no value. Every member must be in exactly one of the two.
        drop_zero_2d: reproduce upstream's `if preds_2d:`, which drops a 2-D value of exactly 0.0.
    Returns:
        A RuleResult; inconclusive when no member has a value (upstream: 0.5).

    >>> rule_medics(dict(zip(MEDICS_MEMBERS, [0.2, 0.4, 0.9, 0.1, 0.3, 0.6, 0.7, 0.8]))).score
    0.5
    """
    failures = dict(failures or {})
    _split_members(MEDICS_MEMBERS, scores, failures, "rule_medics")
    clean = {m: float(_probabilities([v], f"rule_medics {m}")[0]) for m, v in scores.items()}
    failed = [(m, failures[m]) for m in MEDICS_MEMBERS if m in failures]
    left_out = []
    if drop_zero_2d and clean.get(MEDICS_2D) == 0.0:
        del clean[MEDICS_2D]
        left_out.append(MEDICS_2D)
    used = tuple(m for m in MEDICS_MEMBERS if m in clean)
    detail = {"dropped_as_upstream": tuple(left_out)}
    if not used:
        return _inconclusive("no member gave a value", failed, detail)
    score = float(np.clip(np.mean([clean[m] for m in used]), *MEDICS_CLIP))
    return RuleResult(Status.OK, score, used=used, failed=tuple(failed), detail=detail)
