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


def rule_from_name(name: str | None) -> Rule | None:
    """The Rule a stored name ('track=..;video=..;min_frames=..') stands for; None for any other name."""
    try:
        parts = dict(p.split("=", 1) for p in (name or "").split(";"))
        return Rule(parts["track"], parts["video"], int(parts["min_frames"]))
    except (ValueError, KeyError):
        return None


def describe_rule(name: str | None) -> str:
    """Plain words for a stored rule name (the name itself when it is not one of our rules)."""
    rule = rule_from_name(name)
    return rule.describe() if rule is not None else (name or "not recorded")


def score_rules(status: str, rule: str | None, upstream: dict | None) -> dict[str, str | None]:
    """Which rule made a stored headline score, and the other rule's number beside it, in words.

    A detector reproduced from its authors' solution is headlined by their video rule, with our
    per-track rule's score as its explanation (`upstream` then holds "track_rule"); results stored
    before that, and every other detector, are headlined by our track rule.

    Args:
        status: the stored status; only an ok result has numbers to explain.
        rule: the stored `rule` of the result.
        upstream: the stored `upstream` of the result, or None.
    Returns:
        {"headline": "authors' rule: …" or "our track rule: …", "explanation": a line or None}
    """
    ok = status == "ok"
    if upstream and upstream.get("kind") == "video":
        # A video-level detector has no track-rule score of ours: its members and faces explain it.
        return {"headline": f"authors' rule: {upstream.get('rule')}", "explanation": None}
    if upstream and "track_rule" in upstream:
        track = upstream.get("track_score")
        explanation = None if track is None or not ok else (
            f"our track rule gives {track:.3f} ({describe_rule(upstream['track_rule'])})")
        return {"headline": f"authors' rule: {upstream.get('rule')}", "explanation": explanation}
    explanation = None
    if ok and upstream and upstream.get("score") is not None:
        explanation = f"authors' rule gives {upstream['score']:.3f} ({upstream.get('rule')})"
    return {"headline": f"our track rule: {describe_rule(rule)}", "explanation": explanation}


def video_lines(upstream: dict | None) -> list[str]:
    """What a video-level detector's result says beyond its score, in plain lines: the frames it
    read, each member that failed or is not installed and why, the members' values, and its notes.

    Returns [] for any other detector's result.
    """
    if not upstream or upstream.get("kind") != "video":
        return []
    lines = []
    n = upstream.get("frames_analysed") or 0
    if n:
        lines.append(f"Read {n} frame(s), frames {upstream.get('first_frame')}–{upstream.get('last_frame')}, "
                     "chosen by its authors' frame policy.")
    lines += [str(note) for note in upstream.get("notes") or []]
    members = upstream.get("members") or []
    used = [m for m in members if m.get("status") == "ok"]
    if members:
        values = ", ".join(f"{m['name']} {m['value']:.3f}" if m.get("value") is not None else m["name"] for m in used)
        lines.append(f"Members used ({len(used)} of {len(members)}): {values or 'none'}.")
    for m in members:
        if m.get("status") != "ok":
            lines.append(f"Member {m.get('name')} {m.get('status')}, left out of the rule: {m.get('reason')}.")
    faces = upstream.get("faces") or []
    if faces:
        said = []
        for f in faces:
            where = f"track T{f['track']}" if f.get("track") is not None else "no track of ours"
            value = f"{f['score']:.3f}" if f.get("score") is not None else f"no score ({f.get('reason')})"
            said.append(f"face {f.get('id')} ({where}, {len(f.get('frames') or [])} frames): {value}")
        lines.append("Faces it found: " + "; ".join(said) + ".")
    return lines


ENSEMBLE_RULES = {
    "mean": "mean of the video scores of the detectors whose status is ok",
    "max": "highest video score among the detectors whose status is ok",
}
ENSEMBLE_THRESHOLD_RULE = "the mean of the members' operating thresholds"


def combine(values: Sequence[float], rule: str) -> float:
    """The ensemble rule applied to member values (video scores, or one face's frame scores)."""
    if rule not in ENSEMBLE_RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; choose from {', '.join(ENSEMBLE_RULES)}")
    return float(np.mean(values)) if rule == "mean" else float(np.max(values))


def ensemble(scores: dict[str, float | None], statuses: dict[str, str], rule: str = "mean",
             thresholds: dict[str, float | None] | None = None) -> dict:
    """Combine detectors' video scores; detectors without a score are left out and named.

    The one place the ensemble is computed: the analysis stores its result, and the app, the
    report and the JSON read the stored rule, members and threshold (`frame_ensemble` gives the
    same rule per face and frame).

    Returns:
        {"rule", "description", "score", "status", "members", "left_out": {name: status},
         "threshold": the mean of the members' thresholds (None without members or thresholds),
         "threshold_rule"}
    """
    if rule not in ENSEMBLE_RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; choose from {', '.join(ENSEMBLE_RULES)}")
    members = {n: s for n, s in scores.items() if statuses.get(n) == "ok" and s is not None}
    left_out = {n: st for n, st in statuses.items() if n not in members}
    member_thresholds = [t for n, t in (thresholds or {}).items() if n in members and t is not None]
    out = {"rule": rule, "description": ENSEMBLE_RULES[rule], "score": None, "members": sorted(members),
           "left_out": left_out, "threshold": float(np.mean(member_thresholds)) if member_thresholds else None,
           "threshold_rule": ENSEMBLE_THRESHOLD_RULE}
    if not members:
        status = "inconclusive" if any(st == "inconclusive" for st in statuses.values()) else (
            "unavailable" if statuses and all(st == "unavailable" for st in statuses.values()) else "error"
        )
        if not statuses:
            status = "unavailable"
        return dict(out, status=status)
    return dict(out, score=combine(list(members.values()), rule), status="ok")


def frame_ensemble(frame_scores: dict[str, dict[tuple[int, int], float]], members: Sequence[str],
                   rule: str) -> dict[tuple[int, int], float]:
    """Per (frame, track): the ensemble rule over the members that scored that face on that frame."""
    values: dict[tuple[int, int], list[float]] = {}
    for name in members:
        for key, score in frame_scores.get(name, {}).items():
            values.setdefault(key, []).append(score)
    return {key: combine(v, rule) for key, v in values.items()}


def crossing_frames(scores: dict[tuple[int, int], float], threshold: float) -> list[int]:
    """Frames where a face's score series crosses the threshold (either way), sorted.

    Args:
        scores: {(frame, track): score}. A track that starts at or above the threshold crosses
            on its first scored frame.
    """
    by_track: dict[int, list[tuple[int, float]]] = {}
    for (frame, track), score in scores.items():
        by_track.setdefault(track, []).append((frame, score))
    found = set()
    for points in by_track.values():
        points.sort()
        if points and points[0][1] >= threshold:
            found.add(points[0][0])
        for (_, a), (frame_b, b) in zip(points, points[1:]):
            if (a >= threshold) != (b >= threshold):
                found.add(frame_b)
    return sorted(found)


# -- bands: what a score means at its threshold ----------------------------------------------------
# A score is read against its detector's operating threshold, never as a percentage of "fake".
# "uncertain" is a reading aid, not a measured quantity: a score that close below the threshold
# is no evidence either way, so the band says so instead of "not flagged".
UNCERTAIN_MARGIN = 0.10
BAND_RULE = (f"flagged: score at or above the detector's operating threshold; uncertain: less than "
             f"{UNCERTAIN_MARGIN:.2f} below it; not flagged: lower still. The margin is a reading aid, "
             "not a measured error rate.")


def band(score: float | None, threshold: float | None) -> str | None:
    """The band of a score at an operating threshold: "flagged", "uncertain" or "not flagged".

    The one rule every front end shows beside a score (see BAND_RULE).

    Args:
        score: a video, track or ensemble score in [0, 1], or None when there is none.
        threshold: the operating threshold the score was stored with, or None.
    Returns:
        The band, or None without a score or a threshold (a failure is never banded).

    >>> band(0.95, 0.92), band(0.85, 0.92), band(0.699, 0.95)
    ('flagged', 'uncertain', 'not flagged')
    """
    if score is None or threshold is None:
        return None
    if score >= threshold:
        return "flagged"
    return "uncertain" if score >= threshold - UNCERTAIN_MARGIN else "not flagged"


def measured_fpr(evaluation: dict | None, threshold: float | None) -> dict | None:
    """The false-positive rate a stored evaluation measured at this very threshold, if it did.

    Args:
        evaluation: a detector's latest stored evaluation (Store.latest_evaluation), or None.
        threshold: the threshold a score was judged at; an evaluation at another threshold says nothing about it.
    Returns:
        {"fpr", "real" (real files scored), "dataset", "evaluation_id"}, or None.
    """
    if evaluation is None or threshold is None:
        return None
    section = evaluation.get("result") or {}
    evaluated = section.get("threshold", evaluation.get("threshold"))
    rate = ((section.get("metrics") or {}).get("operating_point") or {}).get("fpr") or {}
    if evaluated is None or not math.isclose(evaluated, threshold, abs_tol=1e-9) or rate.get("value") is None:
        return None
    return {"fpr": rate["value"], "real": rate.get("n"), "dataset": evaluation.get("dataset"),
            "evaluation_id": evaluation.get("evaluation_id")}


def band_text(score: float | None, threshold: float | None, measured: dict | None = None) -> str | None:
    """A band in words with its threshold and, where measured, its false-positive rate there.

    Returns:
        e.g. "flagged at threshold 0.92 (FPR 1.9% on 270 real files of fairface.csv)"; None when `band` is None.
    """
    said = band(score, threshold)
    if said is None:
        return None
    text = f"{said}: just below threshold {threshold:.2f}" if said == "uncertain" else f"{said} at threshold {threshold:.2f}"
    if measured is not None:
        text += f" (FPR {measured['fpr']:.1%} on {measured['real']} real files of {measured['dataset']})"
    return text
