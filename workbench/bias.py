"""Metrics of a detector on labelled videos: ROC AUC with a bootstrap interval, TPR at fixed FPR, log loss, and per-group error rates (Wilson intervals, ratios, gaps)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

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
    # The threshold this video was judged against when it has its own (the ensemble's stored
    # threshold, the mean of the members that scored it); None: the caller's threshold applies.
    threshold: float | None = None

    def flagged(self, threshold: float) -> bool:
        """Scored at or above its own threshold, else at or above `threshold`."""
        return self.score >= (self.threshold if self.threshold is not None else threshold)


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


def group_rates(videos: Iterable[Scored], column: str, threshold: float | None, min_videos: int = MIN_GROUP_VIDEOS) -> dict:
    """TPR, FPR and FNR per value of one group column, with Wilson 95% intervals, and the group's ROC AUC
    with its bootstrap interval (where it has scored real and fake videos).

    A video counts as flagged when its score is at or above the threshold (its own, when it has
    one: the ensemble's). Videos the detector did not score (inconclusive, unavailable, error), or
    without any threshold, are counted per group but left out of the rates.

    Returns:
        {"groups": {value: {...}}, "equalised_odds_gap", "best_fpr_group", "best_fnr_group", "min_videos"}
    """
    by_group: dict[str, dict[str, int]] = {}
    scored: dict[str, tuple[list[str], list[float]]] = {}  # per group: the labels and scores for its AUC
    for v in videos:
        value = v.groups.get(column)
        if value is None or value == "":
            continue
        c = by_group.setdefault(value, {"tp": 0, "fn": 0, "fp": 0, "tn": 0, "unscored": 0})
        if v.status == "ok" and v.score is not None and v.label in ("real", "fake"):
            scored.setdefault(value, ([], []))[0].append(v.label)
            scored[value][1].append(float(v.score))
        if v.status != "ok" or v.score is None or (threshold is None and v.threshold is None):
            c["unscored"] += 1
        elif v.label == "fake":
            c["tp" if v.flagged(threshold) else "fn"] += 1
        elif v.label == "real":
            c["fp" if v.flagged(threshold) else "tn"] += 1
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
        labels, values = scored.get(value, ([], []))
        groups[value] = {
            "n_real": n_real, "n_fake": n_fake, "n_unscored": c["unscored"],
            "tpr": _rate(c["tp"], n_fake), "fnr": _rate(c["fn"], n_fake), "fpr": _rate(c["fp"], n_real),
            # Threshold-free: how well the group's fakes rank above its reals (None without both labels).
            "auc": roc_auc(labels, values), "auc_interval": bootstrap_auc(labels, values),
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


# -- threshold-free metrics --------------------------------------------------------------------------
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 20240601
FPR_TARGETS = (0.01, 0.05, 0.10)
# Log loss needs predictions away from 0 and 1. LOG_LOSS_EPS only keeps it finite (the classic
# 1e-15 of scikit-learn's and Kaggle's log loss); LOG_LOSS_DFDC_CLIP is the clip FakeFinder's deployed
# DFDC detectors put on their own outputs (boken's `clip_pred(pred, threshold=0.01)`, NTechLab's
# np.clip(..., 0.01, 0.99)), the usual DFDC hedge against the metric's unbounded penalty.
LOG_LOSS_EPS = 1e-15
LOG_LOSS_DFDC_CLIP = 0.01

METRIC_RULES = {
    "auc": "ROC AUC = P(fake score > real score) + 0.5 P(equal) (Mann-Whitney), over videos with status ok",
    "auc_interval": (f"percentile bootstrap, 95%: {BOOTSTRAP_RESAMPLES} resamples drawn with replacement within each "
                     f"label (stratified: every resample keeps the numbers of real and fake videos), "
                     f"numpy default_rng seed {BOOTSTRAP_SEED}"),
    "tpr_at_fpr": ("no interpolation: the highest TPR of any threshold t (a video is flagged when score >= t, "
                   "t ranging over the observed scores) whose FPR is at or below the target; the threshold and "
                   "the FPR it reaches are reported with it"),
    "operating_point": ("FPR and TPR when a video is flagged at score >= the operating threshold (the detector's; "
                        "for the ensemble, each video's stored ensemble threshold), Wilson 95% intervals"),
    "log_loss": (f"mean of -[y log p + (1 - y) log(1 - p)], y = 1 for fake; p clipped to [{LOG_LOSS_EPS:g}, "
                 f"1 - {LOG_LOSS_EPS:g}] only to keep it finite; 'log_loss_dfdc_clip' clips p to "
                 f"[{LOG_LOSS_DFDC_CLIP}, {1 - LOG_LOSS_DFDC_CLIP}], the clip FakeFinder's deployed boken and "
                 f"NTechLab detectors apply to their own outputs"),
    "unscored": "videos a detector could not score (inconclusive, unavailable, error) are counted per label and left out",
}


def _split(labels: Sequence[str], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    labels = list(labels)
    bad = sorted({lab for lab in labels if lab not in ("real", "fake")})
    if bad:
        raise ValueError(f"label must be 'real' or 'fake', got {bad[0]!r}")
    scores = np.asarray(scores, dtype=float)
    is_fake = np.array([lab == "fake" for lab in labels], dtype=bool)
    return scores[~is_fake], scores[is_fake]


def _auc(real: np.ndarray, fake: np.ndarray) -> float:
    ordered = np.sort(real)
    below = np.searchsorted(ordered, fake, side="left")
    at_or_below = np.searchsorted(ordered, fake, side="right")
    return float((below + 0.5 * (at_or_below - below)).sum() / (len(real) * len(fake)))


def roc_auc(labels: Sequence[str], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve: the chance a fake outscores a real video, ties counting half.

    Returns:
        The AUC, or None when either label has no scored video.
    """
    real, fake = _split(labels, scores)
    if len(real) == 0 or len(fake) == 0:
        return None
    return _auc(real, fake)


def bootstrap_auc(labels: Sequence[str], scores: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                  seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the AUC, resampling within each label (stratified).

    The same seed gives the same interval. Returns None when either label has no scored video.
    """
    real, fake = _split(labels, scores)
    if len(real) == 0 or len(fake) == 0:
        return None
    rng = np.random.default_rng(seed)
    aucs = np.empty(resamples)
    for i in range(resamples):
        aucs[i] = _auc(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))])
    tail = (1 - level) / 2
    low, high = np.quantile(aucs, [tail, 1 - tail])
    return float(low), float(high)


def roc_curve(labels: Sequence[str], scores: Sequence[float]) -> list[dict]:
    """The empirical ROC curve: one point per threshold t (flagged when score >= t), from (0, 0) to (1, 1).

    Returns:
        [{"threshold", "fpr", "tpr"}], thresholds falling (the first is +inf: nothing flagged);
        empty when either label has no scored video.
    """
    real, fake = _split(labels, scores)
    if len(real) == 0 or len(fake) == 0:
        return []
    thresholds = np.unique(np.concatenate([real, fake]))[::-1]
    # Videos at or above t: everything from the first sorted position not below t.
    fpr = (len(real) - np.searchsorted(np.sort(real), thresholds, side="left")) / len(real)
    tpr = (len(fake) - np.searchsorted(np.sort(fake), thresholds, side="left")) / len(fake)
    return [{"threshold": math.inf, "fpr": 0.0, "tpr": 0.0}] + [
        {"threshold": float(t), "fpr": float(f), "tpr": float(r)} for t, f, r in zip(thresholds, fpr, tpr)]


def tpr_at_fpr(labels: Sequence[str], scores: Sequence[float], target: float) -> dict | None:
    """The highest TPR reached by a threshold whose FPR is at or below `target` (no interpolation).

    Returns:
        {"target", "tpr", "fpr", "threshold"} (the highest such threshold among equal TPRs), or None
        when either label has no scored video.
    """
    best = None
    for p in roc_curve(labels, scores):
        if p["fpr"] <= target + 1e-12 and (best is None or p["tpr"] > best["tpr"]):
            best = p
    if best is None:
        return None
    return {"target": target, "tpr": best["tpr"], "fpr": best["fpr"],
            "threshold": None if math.isinf(best["threshold"]) else best["threshold"]}


def log_loss(labels: Sequence[str], scores: Sequence[float], clip: float = LOG_LOSS_EPS) -> float | None:
    """The DFDC metric: binary cross-entropy with fake = 1, predictions clipped to [clip, 1 - clip].

    Returns None for no videos.
    """
    real, fake = _split(labels, scores)
    if len(real) + len(fake) == 0:
        return None
    real = np.clip(real, clip, 1 - clip)
    fake = np.clip(fake, clip, 1 - clip)
    return float(-(np.log(fake).sum() + np.log1p(-real).sum()) / (len(real) + len(fake)))


def operating_point(videos: Iterable[Scored], threshold: float | None) -> dict:
    """FPR and TPR with Wilson 95% intervals when flagged at score >= threshold (or a video's own).

    Only videos with status ok and a score count; with no threshold at all the rates are None.
    """
    fp = tn = tp = fn = 0
    for v in videos:
        if v.status != "ok" or v.score is None:
            continue
        if threshold is None and v.threshold is None:
            continue
        hit = v.flagged(threshold)
        if v.label == "fake":
            tp, fn = tp + hit, fn + (not hit)
        elif v.label == "real":
            fp, tn = fp + hit, tn + (not hit)
        else:
            raise ValueError(f"label must be 'real' or 'fake', got {v.label!r}")
    return {"fpr": _rate(fp, fp + tn), "tpr": _rate(tp, tp + fn)}


def status_counts(videos: Iterable[Scored]) -> dict[str, dict[str, int]]:
    """{label: {status: videos}} for every label and status seen (ok included)."""
    out: dict[str, dict[str, int]] = {"real": {}, "fake": {}}
    for v in videos:
        counts = out.setdefault(v.label, {})
        counts[v.status] = counts.get(v.status, 0) + 1
    return out


def detector_metrics(videos: Sequence[Scored], threshold: float | None) -> dict:
    """Every threshold-free and operating-point metric of one detector (or the ensemble) on labelled videos.

    Returns:
        {"n_real", "n_fake" (scored), "auc", "auc_low", "auc_high", "tpr_at_fpr": [...],
         "operating_point", "log_loss", "log_loss_dfdc_clip", "status_counts", "roc"}
    """
    ok = [v for v in videos if v.status == "ok" and v.score is not None]
    labels, scores = [v.label for v in ok], [v.score for v in ok]
    interval = bootstrap_auc(labels, scores)
    return {
        "n_real": sum(v.label == "real" for v in ok), "n_fake": sum(v.label == "fake" for v in ok),
        "auc": roc_auc(labels, scores),
        "auc_low": interval[0] if interval else None, "auc_high": interval[1] if interval else None,
        "tpr_at_fpr": [tpr_at_fpr(labels, scores, t) or {"target": t, "tpr": None, "fpr": None, "threshold": None}
                       for t in FPR_TARGETS],
        "operating_point": operating_point(ok, threshold),
        "log_loss": log_loss(labels, scores), "log_loss_dfdc_clip": log_loss(labels, scores, LOG_LOSS_DFDC_CLIP),
        "status_counts": status_counts(videos),
        "roc": [dict(p, threshold=None if math.isinf(p["threshold"]) else p["threshold"])
                for p in roc_curve(labels, scores)],
    }
