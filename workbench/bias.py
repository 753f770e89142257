"""Per-group error rates of a detector on labelled videos: rates, Wilson intervals, ratios, gaps."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

Z95 = 1.959963984540054
# Below this many real (or fake) videos a group's FPR (or TPR/FNR) is too uncertain to compare.
MIN_GROUP_VIDEOS = 30


@dataclass(frozen=True)
class Scored:
    """One labelled video as a detector judged it."""

    label: str  # "real" or "fake"
    groups: dict[str, str]  # group column -> value, e.g. {"gender": "female"}
    status: str  # the detector's status on this video
    score: float | None  # only when status == "ok"


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (None when n == 0)."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(k: int, n: int) -> dict:
    interval = wilson(k, n)
    return {"value": k / n if n else None, "low": interval[0] if interval else None,
            "high": interval[1] if interval else None, "k": k, "n": n}


def _ratio(value: float | None, best: float | None) -> float | None:
    if value is None or best is None:
        return None
    if best == 0:
        return None if value > 0 else 1.0  # no finite ratio to a perfect group; say so, not infinity
    return value / best


def group_rates(videos: Iterable[Scored], column: str, threshold: float, min_videos: int = MIN_GROUP_VIDEOS) -> dict:
    """TPR, FPR and FNR per value of one group column, with Wilson 95% intervals.

    A video counts as flagged when its score is at or above the threshold. Videos the detector did
    not score (inconclusive, unavailable, error) are counted per group but left out of the rates.

    Returns:
        {"groups": {value: {...}}, "equalised_odds_gap", "best_fpr_group", "best_fnr_group", "min_videos"}
    """
    by_group: dict[str, dict[str, int]] = {}
    for v in videos:
        value = v.groups.get(column)
        if value is None or value == "":
            continue
        c = by_group.setdefault(value, {"tp": 0, "fn": 0, "fp": 0, "tn": 0, "unscored": 0})
        if v.status != "ok" or v.score is None:
            c["unscored"] += 1
        elif v.label == "fake":
            c["tp" if v.score >= threshold else "fn"] += 1
        elif v.label == "real":
            c["fp" if v.score >= threshold else "tn"] += 1
        else:
            raise ValueError(f"label must be 'real' or 'fake', got {v.label!r}")
    groups = {}
    for value, c in sorted(by_group.items()):
        n_fake, n_real = c["tp"] + c["fn"], c["fp"] + c["tn"]
        warnings = []
        if n_real < min_videos:
            warnings.append(f"only {n_real} real video(s): its false-positive rate says little (minimum {min_videos})")
        if n_fake < min_videos:
            warnings.append(f"only {n_fake} fake video(s): its detection rates say little (minimum {min_videos})")
        groups[value] = {
            "n_real": n_real, "n_fake": n_fake, "n_unscored": c["unscored"],
            "tpr": _rate(c["tp"], n_fake), "fnr": _rate(c["fn"], n_fake), "fpr": _rate(c["fp"], n_real),
            "warnings": warnings,
        }
    fprs = {g: r["fpr"]["value"] for g, r in groups.items() if r["fpr"]["value"] is not None}
    fnrs = {g: r["fnr"]["value"] for g, r in groups.items() if r["fnr"]["value"] is not None}
    tprs = {g: r["tpr"]["value"] for g, r in groups.items() if r["tpr"]["value"] is not None}
    best_fpr = min(fprs, key=fprs.get) if fprs else None
    best_fnr = min(fnrs, key=fnrs.get) if fnrs else None
    for g, r in groups.items():
        r["fpr_ratio_to_best"] = _ratio(r["fpr"]["value"], fprs.get(best_fpr))
        r["fnr_ratio_to_best"] = _ratio(r["fnr"]["value"], fnrs.get(best_fnr))
    gaps = []
    if len(tprs) > 1:
        gaps.append(max(tprs.values()) - min(tprs.values()))
    if len(fprs) > 1:
        gaps.append(max(fprs.values()) - min(fprs.values()))
    return {
        "column": column, "threshold": threshold, "min_videos": min_videos, "groups": groups,
        "best_fpr_group": best_fpr, "best_fnr_group": best_fnr,
        # Equalised odds asks for equal TPR and equal FPR across groups; the gap is the larger difference.
        "equalised_odds_gap": max(gaps) if gaps else None,
    }
