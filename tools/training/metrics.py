"""Detection metrics from labelled scores: ROC AUC and TPR at fixed false-positive rates."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def tpr_at_fpr(labels, scores, fpr_target: float) -> float:
    """The highest true-positive rate reachable with a false-positive rate at most fpr_target."""
    fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(scores))
    ok = fpr <= fpr_target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def summarise(labels, scores) -> dict:
    """AUC, TPR at 1% and 10% FPR, and the counts they rest on."""
    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "tpr_at_1pct_fpr": tpr_at_fpr(labels, scores, 0.01),
        "tpr_at_10pct_fpr": tpr_at_fpr(labels, scores, 0.10),
        "positives": int(labels.sum()),
        "negatives": int((1 - labels).sum()),
    }


def threshold_for_fpr(real_scores, fpr_target: float) -> float:
    """The lowest threshold whose false-positive rate on these real samples is at most fpr_target."""
    real = np.sort(np.asarray(real_scores, dtype=float))
    k = int(np.floor(fpr_target * len(real)))  # how many reals may score at or above it
    return float(np.nextafter(real[-k - 1], np.inf)) if k < len(real) else float(real[0])


def rates_at(labels, scores, threshold: float) -> dict:
    """False- and true-positive rates when scores >= threshold are called manipulated."""
    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    flagged = scores >= threshold
    return {"threshold": float(threshold), "fpr": float(flagged[labels == 0].mean()),
            "tpr": float(flagged[labels == 1].mean())}
