"""Named rules that turn per-frame scores into track, video and ensemble scores."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def top_fraction_mean(scores: Sequence[float], fraction: float = 0.25) -> float:
    """Mean of the highest `fraction` of scores (at least one)."""
    ordered = sorted(scores, reverse=True)
    k = max(1, math.ceil(len(ordered) * fraction))
    return float(np.mean(ordered[:k]))


TRACK_METHODS = {
    "top25-mean": lambda s: top_fraction_mean(s, 0.25),
    "mean": lambda s: float(np.mean(s)),
    "median": lambda s: float(np.median(s)),
    "max": lambda s: float(np.max(s)),
}
VIDEO_METHODS = {
    "max": lambda s: float(np.max(s)),
    "mean": lambda s: float(np.mean(s)),
}


@dataclass(frozen=True)
class Rule:
    """How frame scores become a track score, and track scores a video score.

    A face swap usually touches one person, and often not every frame, so the default reads
    a track by its most suspicious quarter of frames and a video by its most suspicious track.
    """

    track: str = "top25-mean"
    video: str = "max"
    min_frames: int = 3

    def __post_init__(self):
        if self.track not in TRACK_METHODS:
            raise ValueError(f"unknown track rule {self.track!r}; choose from {', '.join(TRACK_METHODS)}")
        if self.video not in VIDEO_METHODS:
            raise ValueError(f"unknown video rule {self.video!r}; choose from {', '.join(VIDEO_METHODS)}")

    @property
    def name(self) -> str:
        return f"track={self.track};video={self.video};min_frames={self.min_frames}"

    def describe(self) -> str:
        track = {"top25-mean": "mean of its top 25% frame scores", "mean": "mean of its frame scores",
                 "median": "median of its frame scores", "max": "its highest frame score"}[self.track]
        video = {"max": "the highest track score", "mean": "the mean of track scores"}[self.video]
        return f"Track score: {track}. Video score: {video}, over tracks with at least {self.min_frames} scored frames."

    def track_score(self, scores: Sequence[float]) -> float:
        return TRACK_METHODS[self.track](scores)

    def video_score(self, track_scores: Sequence[float]) -> float:
        return VIDEO_METHODS[self.video](track_scores)


DEFAULT_RULE = Rule()

ENSEMBLE_RULES = {
    "mean": "mean of the video scores of the detectors whose status is ok",
    "max": "highest video score among the detectors whose status is ok",
}


def ensemble(scores: dict[str, float | None], statuses: dict[str, str], rule: str = "mean") -> dict:
    """Combine detectors' video scores; detectors without a score are left out and named.

    Returns:
        {"rule", "description", "score", "status", "members", "left_out": {name: status}}
    """
    if rule not in ENSEMBLE_RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; choose from {', '.join(ENSEMBLE_RULES)}")
    members = {n: s for n, s in scores.items() if statuses.get(n) == "ok" and s is not None}
    left_out = {n: st for n, st in statuses.items() if n not in members}
    if not members:
        status = "inconclusive" if any(st == "inconclusive" for st in statuses.values()) else (
            "unavailable" if statuses and all(st == "unavailable" for st in statuses.values()) else "error"
        )
        if not statuses:
            status = "unavailable"
        return {"rule": rule, "description": ENSEMBLE_RULES[rule], "score": None, "status": status,
                "members": [], "left_out": left_out}
    values = list(members.values())
    score = float(np.mean(values)) if rule == "mean" else float(np.max(values))
    return {"rule": rule, "description": ENSEMBLE_RULES[rule], "score": score, "status": "ok",
            "members": sorted(members), "left_out": left_out}
