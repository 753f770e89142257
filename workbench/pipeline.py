"""The analysis pipeline as named stages: load -> plan -> (reuse) -> stream -> score -> summarise; no storage here."""
from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from detectors.base import SCOPE_CAVEAT, Detector, FaceFinder, Status
from detectors.weights import WeightsUnavailable
from detectors.registry import get_detector
from detectors.video import VideoDetector, VideoRun, VideoVerdict
from workbench import __version__
from workbench.aggregate import DEFAULT_RULE, Rule, crossing_frames, ensemble, frame_ensemble
from workbench.faces import CANDIDATE_PROB, CONFIRM_PROB, Face, FaceDetector, search_floor_px
from workbench.geometry import iou
from workbench.tracking import FaceTrack, Tracker, fill_between
from workbench.upstream_faces import MTCNNFinder
from workbench.sandbox import isolated_frames, probe_isolated
from workbench.video import VideoError, VideoInfo

Progress = Callable[[int, int, str], None]

# Frames waiting for their boxes are held in memory; keep that bounded whatever the resolution.
PENDING_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class Sampling:
    """Which frames are analysed and how faces are found on them.

    Args:
        sample_fps: frames per second to analyse (triage); None analyses every frame.
        detect_every: run face detection on every k-th analysed frame and link the boxes in
            between by tracking; None picks k so that detection runs about 3 times a second
            of video (every sampled frame in triage at 2 fps).
        detect_size: longer side of the frame MTCNN sees, in pixels, where faces allow: never so
            small that a face of `find_face_px` would fall below MTCNN's reliable size (40 px), so
            a 1080p frame is searched at 1200 px wide, a 720p one at 800.
        min_face_px: faces whose box is smaller than this (full-resolution pixels) are not scored.
        find_face_px: faces this size or larger (full-resolution pixels) are looked for on every
            detection frame; smaller ones down to `min_face_px` by the full-resolution retry on
            detection frames that show fewer faces than the tracks expect.
        candidate_prob: MTCNN probability a detection needs to be followed at all.
        confirm_prob: a track is a face once one detection reaches this probability, or
        confirm_hits: once it is detected on this many detection frames in a row.
        rule: how frame scores become track and video scores.
    """

    sample_fps: float | None = 2.0
    detect_every: int | None = None
    detect_size: int = 640
    min_face_px: int = 32
    find_face_px: int = 64
    candidate_prob: float = CANDIDATE_PROB
    confirm_prob: float = CONFIRM_PROB
    confirm_hits: int = 3
    rule: Rule = DEFAULT_RULE

    def analysed_frames(self, info: VideoInfo) -> list[int]:
        if self.sample_fps is None or self.sample_fps >= info.fps:
            return list(range(info.frames))
        step = info.fps / self.sample_fps
        return sorted({min(info.frames - 1, int(round(i * step))) for i in range(int(info.frames / step) + 1)})

    def detection_step(self, info: VideoInfo) -> int:
        if self.detect_every:
            return max(1, self.detect_every)
        analysed_rate = info.fps if self.sample_fps is None else min(info.fps, self.sample_fps)
        return max(1, int(round(analysed_rate / 3.0)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rule"] = self.rule.name
        return d


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class TrackData:
    """A face track as results carry it: frames in order and one box per frame."""

    id: int
    frames: list[int]
    boxes: list[tuple[float, float, float, float]]
    detected: list[bool]

    def box_at(self, frame: int):
        try:
            return self.boxes[self.frames.index(frame)]
        except ValueError:
            return None


@dataclass
class DetectorOutcome:
    """One detector's result on one video. A score exists only when status is ok."""

    name: str
    version: str
    status: str
    score: float | None = None
    reason: str | None = None
    frames_used: list[int] = field(default_factory=list)
    weights_sha256: str | None = None
    threshold: float | None = None
    rule: str | None = None
    track_scores: dict[int, dict] = field(default_factory=dict)
    frame_scores: list[tuple[int, int, float]] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    analysis_id: int | None = None
    reused: bool = False
    # For a detector reproduced from its authors (see `_authors_headline`): {"rule": their video rule in
    # words, "score": its score (the headline `score`), "track_rule": our rule's name, "track_score": its
    # score (the explanation)}; both scores None unless status is ok.
    upstream: dict | None = None

    def __post_init__(self):
        if self.status != Status.OK.value and self.score is not None:
            raise ValueError("only an ok result may carry a score")


@dataclass
class AnalysisResult:
    video: VideoInfo
    sha256: str | None
    sampling: Sampling
    frames_analysed: list[int]
    detection_frames: list[int]
    tracks: list[TrackData]
    detectors: dict[str, DetectorOutcome]
    ensemble: dict
    timings: dict
    face_run_id: int | None = None
    # For whoever stores the result: the plan's keys, the newly found face tracks (None when
    # the faces came from a stored run) and, when decoding failed part-way, why.
    plan: "Plan | None" = None
    face_tracks: list[FaceTrack] | None = None
    error: str | None = None

    def ensemble_frame_scores(self) -> dict[tuple[int, int], float]:
        """Per (frame, track): the ensemble's rule over its members' frame scores."""
        by_name = {name: {(f, t): sc for f, t, sc in o.frame_scores} for name, o in self.detectors.items()}
        return frame_ensemble(by_name, self.ensemble["members"], self.ensemble["rule"])

    def ensemble_crossings(self) -> list[int]:
        """Frames where a face's ensemble score crosses the ensemble threshold (as on the timeline)."""
        if self.ensemble["threshold"] is None:
            return []
        return crossing_frames(self.ensemble_frame_scores(), self.ensemble["threshold"])

    def to_json(self) -> dict:
        """The documented JSON contract (see README, 'JSON output')."""
        tracks = []
        for t in self.tracks:
            scores = {}
            for name, outcome in self.detectors.items():
                per_frame = {f: s for f, tid, s in outcome.frame_scores if tid == t.id}
                scores[name] = [per_frame.get(f) for f in t.frames]
            track_summary = {
                name: outcome.track_scores.get(t.id) for name, outcome in self.detectors.items() if t.id in outcome.track_scores
            }
            tracks.append({
                "id": t.id, "frames": t.frames, "boxes": [[round(v, 2) for v in b] for b in t.boxes],
                "detected": t.detected, "scores": scores, "track_scores": track_summary,
            })
        return {
            "video": {
                "path": self.video.path, "sha256": self.sha256, "frames": self.video.frames, "fps": self.video.fps,
                "width": self.video.width, "height": self.video.height, "duration_s": self.video.duration_s,
                "codec": self.video.codec, "rotation": self.video.rotation,
            },
            "detectors": {
                name: {
                    "status": o.status, "score": o.score, "reason": o.reason, "frames_used": o.frames_used,
                    "weights_sha256": o.weights_sha256, "version": o.version, "threshold": o.threshold,
                    "rule": o.rule, "reused": o.reused, "analysis_id": o.analysis_id, "upstream": o.upstream,
                }
                for name, o in self.detectors.items()
            },
            "tracks": tracks,
            "ensemble": dict(self.ensemble, frame_crossings=self.ensemble_crossings()),
            "sampling": self.sampling.to_dict(),
            "frames_analysed": self.frames_analysed,
            "detection_frames": self.detection_frames,
            "timings": self.timings,
            "caveat": SCOPE_CAVEAT,
        }


def software_versions() -> dict:
    import av
    import facenet_pytorch  # noqa: F401
    import torch
    from importlib.metadata import version

    return {
        "workbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "facenet-pytorch": version("facenet-pytorch"), "av": av.__version__, "numpy": np.__version__,
    }


# After a full-resolution retry that found nothing more, the next this many detection frames that
# would deserve one go without, doubling after each fruitless retry up to RETRY_BACKOFF_MAX: a
# faceless minute at 2 fps costs about six retries, not sixty; a retry that finds a face resets it.
RETRY_BACKOFF = 4
RETRY_BACKOFF_MAX = 32


def _stream_tracked_frames(
    video: str, info: VideoInfo, frames: list[int], detection_frames: set[int], detector: FaceDetector,
    tracker: Tracker, progress: Progress | None,
) -> Iterator[tuple[int, np.ndarray, list[tuple[int, tuple]]]]:
    """Decode the wanted frames in order and yield (frame, rgb, [(track id, box)]) once final.

    The frames come from the decode sandbox (`sandbox.isolated_frames`): one checked decode of
    the whole file in a confined child process.

    Frames wait in a small buffer until the next detection frame: only then are the boxes of
    the frames between two detections known (by interpolation along each track). Frames a
    tentative track covers wait until the tracker confirms or drops it (a few detection frames),
    unless the buffer is full. A detection frame with fewer faces than the tracker expects
    (none, or a face lost) is searched again at full resolution and every scale.
    """
    frame_bytes = info.width * info.height * 3
    step = max(1, len(frames) // max(1, len(detection_frames)))
    det_batch = max(1, min(8, PENDING_BYTES // max(1, frame_bytes * step * (1 + tracker.confirm_hits))))
    pending: list[tuple[int, np.ndarray]] = []
    pending_det: list[int] = []
    done = 0
    retry_wait, backoff = 0, RETRY_BACKOFF

    def final(n: int, rgb: np.ndarray):
        nonlocal done
        boxes = [(t.id, t.points[n].box, t.points[n].landmarks) for t in tracker.tracks if n in t.points]
        done += 1
        if progress:
            progress(done, len(frames), "faces")
        return n, rgb, boxes

    def flush(last: bool):
        nonlocal retry_wait, backoff
        det_rgb = {n: rgb for n, rgb in pending if n in pending_det}
        faces_per_frame = detector.detect([det_rgb[n] for n in pending_det])
        pending_frames = [n for n, _ in pending]
        for n, faces in zip(pending_det, faces_per_frame):
            if len(faces) < max(1, tracker.expected_faces()):
                if retry_wait:
                    retry_wait -= 1
                else:
                    again = detector.retry(det_rgb[n])
                    if len(again) > len(faces):
                        faces, backoff = again, RETRY_BACKOFF
                    else:
                        retry_wait, backoff = backoff, min(RETRY_BACKOFF_MAX, 2 * backoff)
            for track, point, prev in tracker.update(n, faces):
                if point is not None and prev is not None:
                    fill_between(track, prev, n, pending_frames)
        limit = pending_det[-1] if pending_det else -1
        held = tracker.tentative_since()
        if last:
            limit = pending_frames[-1] if pending_frames else -1
        elif held is not None:
            limit = min(limit, held - 1)
        keep = [(n, rgb) for n, rgb in pending if n > limit]
        for n, rgb in pending:
            if n <= limit:
                yield final(n, rgb)
        # A chain of tentative tracks must not hold the whole video: past the budget, the oldest
        # frames go out with the boxes known now.
        while keep and len(keep) * frame_bytes > PENDING_BYTES:
            yield final(*keep.pop(0))
        pending[:] = keep
        pending_det.clear()

    for n, rgb in isolated_frames(video, info, frames):
        pending.append((n, rgb))
        if n in detection_frames:
            pending_det.append(n)
            if len(pending_det) >= det_batch:
                yield from flush(last=False)
    if pending:
        yield from flush(last=True)


def _stored_frames(video: str, info: VideoInfo, frames: list[int], track_rows: dict[int, list[dict]], progress):
    """Like _stream_tracked_frames, with boxes from a stored face run (no detection)."""
    by_frame: dict[int, list] = {}
    for tid, rows in track_rows.items():
        for r in rows:
            by_frame.setdefault(r["frame"], []).append((tid, (r["x1"], r["y1"], r["x2"], r["y2"]), r["landmarks"]))
    for i, (n, rgb) in enumerate(isolated_frames(video, info, frames)):
        if progress:
            progress(i + 1, len(frames), "faces")
        yield n, rgb, by_frame.get(n, [])


def _tracks_from_rows(track_rows: dict[int, list[dict]]) -> list[TrackData]:
    return [
        TrackData(tid, [r["frame"] for r in rows], [(r["x1"], r["y1"], r["x2"], r["y2"]) for r in rows],
                  [bool(r["detected"]) for r in rows])
        for tid, rows in sorted(track_rows.items())
    ]


# A track found on fewer than this share of the detection frames it spans is too unstable to judge:
# its boxes are mostly guesses between rare detections (flicker, occlusion, a face at the limit).
MIN_DETECTION_RATE = 0.5
MIN_DETECTIONS_FOR_RATE = 4


def detection_rate(track: TrackData, detection_frames: list[int]) -> tuple[int, int]:
    """(detection frames in the track's span where it was detected, detection frames in its span)."""
    if not track.frames:
        return 0, 0
    first, last = track.frames[0], track.frames[-1]
    span = [f for f in detection_frames if first <= f <= last]
    found = {f for f, d in zip(track.frames, track.detected) if d}
    return sum(1 for f in span if f in found), len(span)


def _summarise(det: Detector, outcome: DetectorOutcome, tracks: list[TrackData], rule: Rule,
               n_analysed: int, largest_small_face: float | None, min_face_px: float,
               detection_frames: list[int] | None = None) -> None:
    """Fill in track scores, the video score and the status from the frame scores."""
    per_track: dict[int, list[float]] = {}
    for _, tid, s in outcome.frame_scores:
        per_track.setdefault(tid, []).append(s)
    by_id = {t.id: t for t in tracks}
    unstable = {}
    for tid in per_track:
        if detection_frames and tid in by_id:
            found, spanned = detection_rate(by_id[tid], detection_frames)
            if spanned >= MIN_DETECTIONS_FOR_RATE and found < MIN_DETECTION_RATE * spanned:
                unstable[tid] = (found, spanned)
    for tid, scores in per_track.items():
        if tid in unstable:
            found, spanned = unstable[tid]
            outcome.track_scores[tid] = {"score": None, "n_frames": len(scores), "status": "inconclusive",
                                         "reason": f"face detections too unstable to judge: found on {found} of the "
                                                   f"{spanned} detection frames the track spans"}
        elif len(scores) >= rule.min_frames:
            outcome.track_scores[tid] = {"score": rule.track_score(scores), "n_frames": len(scores), "status": "ok", "reason": None}
        else:
            outcome.track_scores[tid] = {"score": None, "n_frames": len(scores), "status": "inconclusive",
                                         "reason": f"scored on {len(scores)} frame(s), fewer than {rule.min_frames}"}
    qualified = [t["score"] for t in outcome.track_scores.values() if t["status"] == "ok"]
    outcome.rule = rule.name
    if qualified:
        outcome.status, outcome.score = Status.OK.value, rule.video_score(qualified)
    elif not tracks:
        outcome.status = Status.INCONCLUSIVE.value
        outcome.reason = (f"no face found at any scale (down to {search_floor_px(min_face_px)} px) "
                          f"in {n_analysed} analysed frames")
    elif not outcome.frame_scores and largest_small_face:
        outcome.status = Status.INCONCLUSIVE.value
        outcome.reason = (f"faces found but too small: the largest was {largest_small_face:.0f} px, "
                          f"below the minimum of {min_face_px:.0f} px")
    elif not outcome.frame_scores:
        outcome.status = Status.INCONCLUSIVE.value
        outcome.reason = "no tracked face on the frames this detector samples"
    elif unstable and all(tid in unstable for tid in per_track):
        outcome.status = Status.INCONCLUSIVE.value
        outcome.reason = "face detections too unstable to judge: " + "; ".join(
            f"track {tid} found on {f} of {n} detection frames" for tid, (f, n) in sorted(unstable.items()))
    else:
        outcome.status = Status.INCONCLUSIVE.value
        outcome.reason = (f"faces found but too few frames with a usable face: no track was scored on "
                          f"{rule.min_frames} or more frames")


AUTHORS_RULE = "authors:"  # `rule` of an outcome whose headline score is its authors' video rule


def _authors_headline(det: Detector, outcome: DetectorOutcome, member_scores: list[np.ndarray]) -> None:
    """Make the authors' video rule the headline score of a reproduced detector; ours becomes its explanation.

    Our gates keep the status: only an ok outcome gets a number, and it is the authors'. When their
    rule gives none (or fails), the outcome says why and carries no score, never a stand-in.
    """
    track_rule, track_score = outcome.rule, outcome.score
    authors, failure = None, None
    if outcome.status == Status.OK.value:
        faces = sum(m.shape[-1] for m in member_scores)
        try:
            authors = det.upstream_aggregate(np.concatenate(member_scores, axis=1)) if member_scores else None
        except Exception as exc:  # the rule's failure is the result: status error
            failure = f"the authors' video rule failed: {type(exc).__name__}: {exc}"
        if authors is not None and not np.isfinite(authors):
            failure, authors = f"the authors' video rule gave a non-finite score ({authors})", None
        if failure:
            outcome.status, outcome.reason = Status.ERROR.value, failure
        elif authors is None:
            outcome.status = Status.INCONCLUSIVE.value
            outcome.reason = f"the authors' video rule gives no score on the {faces} face(s) scored"
        else:
            authors = float(authors)
    outcome.score = authors
    outcome.rule = AUTHORS_RULE + det.name
    outcome.upstream = {"rule": det.upstream_rule, "score": authors, "track_rule": track_rule,
                        "track_score": track_score if authors is not None else None}




# -- the stages ---------------------------------------------------------------------------------
DetectorSource = Callable[[str], Detector]


def load_detectors(names: Iterable[str], device: str, get: DetectorSource = get_detector,
                   ) -> tuple[dict[str, Detector], dict[str, DetectorOutcome]]:
    """Stage 1, load: each named detector with its weights on `device`.

    Returns:
        (detectors ready to run by name, outcomes of those that cannot run: unavailable or error).
    """
    runnable: dict[str, Detector] = {}
    refused: dict[str, DetectorOutcome] = {}
    for name in names:
        det = get(name)
        status = det.weights_status()
        if not status.installed:
            refused[name] = DetectorOutcome(name, det.version, Status.UNAVAILABLE.value, reason=status.detail)
            continue
        try:
            det.model(device)
        except WeightsUnavailable as exc:
            refused[name] = DetectorOutcome(name, det.version, Status.UNAVAILABLE.value, reason=str(exc))
            continue
        except Exception as exc:  # WeightsError or a broken file: an error, never a score
            refused[name] = DetectorOutcome(name, det.version, Status.ERROR.value, reason=f"weights refused: {exc}")
            continue
        runnable[name] = det
    return runnable, refused


@dataclass(frozen=True)
class Plan:
    """Stage 2, plan: which frames are decoded, where faces are detected, and the keys results are reused by."""

    info: VideoInfo
    sampling: Sampling
    analysed: list[int]
    frames: list[int]
    detection_frames: list[int]
    detector_frames: dict[str, list[int]]
    face_params: dict
    face_key: str
    params_keys: dict[str, str]
    descriptions: dict[str, dict]  # each detector's describe(), stored with its result


def plan(info: VideoInfo, sampling: Sampling, runnable: Mapping[str, Detector]) -> Plan:
    """The frames each detector wants, the frames to decode and to run face detection on, and the reuse keys."""
    analysed = sampling.analysed_frames(info)
    det_frames = {name: (det.wanted_frames(info) if isinstance(det, VideoDetector)
                         else det.sampling.frames(info.frames, analysed)) for name, det in runnable.items()}
    frames = sorted(set(analysed).union(*det_frames.values())) if det_frames else list(analysed)
    # Our face tracks cover the analysed frames and those the crop detectors score. A video-level
    # detector finds its own faces: the frames only it reads are decoded for it, and get no face
    # detection of ours (their boxes, where a track spans them, are interpolated).
    tracked = sorted(set(analysed).union(*(det_frames[n] for n, d in runnable.items()
                                          if not isinstance(d, VideoDetector))))
    step = sampling.detection_step(info)
    # Detectors that align faces need landmarks, which only a real detection gives.
    landmark_frames = set().union(*(det_frames[n] for n, d in runnable.items() if d.needs_landmarks)) if runnable else set()
    detection_frames = sorted(set(tracked[::step]) | ({tracked[-1]} if tracked else set()) | landmark_frames)
    face_params = {k: v for k, v in sampling.to_dict().items() if k != "rule"}
    face_params.update(face_detector="facenet-pytorch MTCNN, full-resolution retry, confirmed tracks")
    face_key = _key(dict(face_params, frames=_key({"f": tracked, "detect": detection_frames})))
    descriptions = {name: det.describe() for name, det in runnable.items()}
    params_keys = {
        name: _key({"face": face_key, "detector": descriptions[name], "frames": det_frames[name], "rule": sampling.rule.name})
        for name in runnable
    }
    return Plan(info, sampling, analysed, frames, detection_frames, det_frames, face_params, face_key, params_keys,
                descriptions)


@dataclass
class Reuse:
    """What storage already holds for a plan (plain values): finished outcomes and a face run's boxes."""

    outcomes: dict[str, DetectorOutcome] = field(default_factory=dict)
    face_run_id: int | None = None
    face_rows: dict[int, list[dict]] | None = None  # {track id: box rows by frame} of the stored face run


ReuseLookup = Callable[[Plan, Mapping[str, Detector]], Reuse]


# A face a detector finds itself is filed under the tracked face it overlaps at least this much.
TRACK_MATCH_IOU = 0.3


def match_to_tracks(found: list[tuple], tracked: list[tuple]) -> dict[int, int]:
    """Which tracked face each found box is: greedy by IoU, each track at most once.

    Args:
        found: boxes (x1, y1, x2, y2) a detector's own finder returned on a frame.
        tracked: (track id, box) of our tracks on the same frame.
    Returns:
        {index into found: track id} for the boxes overlapping a track by TRACK_MATCH_IOU or more.
    """
    pairs = sorted(((iou(tuple(b), tuple(t)), i, tid) for i, b in enumerate(found) for tid, t in tracked),
                   key=lambda p: -p[0])
    matched: dict[int, int] = {}
    for overlap, i, tid in pairs:
        if overlap < TRACK_MATCH_IOU:
            break
        if i not in matched and tid not in matched.values():
            matched[i] = tid
    return matched


FindFaces = Callable[[np.ndarray], list[Face]]


def face_finders(runnable: Mapping[str, Detector], device: str) -> dict[str, FindFaces]:
    """Each detector's own face finder, for those that declare one (`Detector.face_finder`).

    An MTCNN finder is built once per configuration and shared; a RetinaFace finder is the
    detector's own `find_faces` (its weights load with the detector).
    """
    built: dict[FaceFinder, MTCNNFinder] = {}
    finders: dict[str, FindFaces] = {}
    for name, det in runnable.items():
        spec = det.face_finder
        if spec is None:
            continue
        if spec.kind == "mtcnn":
            if spec not in built:
                built[spec] = MTCNNFinder(spec.thresholds, spec.factor, spec.min_face_size, spec.scale, spec.keep,
                                          device)
            finders[name] = built[spec].find
        else:
            finders[name] = det.find_faces
    return finders


@functools.lru_cache(maxsize=8)
def _explaining_finder(spec: FaceFinder, device: str) -> MTCNNFinder:
    """One MTCNN per finder configuration for explanations (each Grad-CAM click or report key frame
    would otherwise build its own); an analysis builds its own in `face_finders`."""
    return MTCNNFinder(spec.thresholds, spec.factor, spec.min_face_size, spec.scale, spec.keep, device)


def face_as_scored(det: Detector, rgb: np.ndarray, box, landmarks, device: str = "cpu"):
    """The face box (and landmarks) a detector cut its input from for a tracked face on a frame.

    For most detectors that is the tracked box itself. A detector with its own face finder cut
    from what that finder found on the frame, filed under the track it overlaps; to explain the
    same input (Grad-CAM), the finder runs again here.

    Returns:
        (box, landmarks), or None when the detector's finder finds no face on this track here.
    """
    spec = det.face_finder
    if spec is None:
        return box, landmarks
    found = (_explaining_finder(spec, device).find if spec.kind == "mtcnn" else det.find_faces)(rgb)
    if det.face_finder.keep == "largest":
        found = found[:1]
    matched = match_to_tracks([f.box for f in found], [(0, tuple(box))])
    for i in matched:
        face = found[i]
        return face.box, None if face.landmarks is None else np.asarray(face.landmarks, np.float32)
    return None


class Scorer:
    """Stage 4, score: cut each wanted face, batch the crops per detector, keep frame scores.

    A detector that declares its own face finder gets, on each frame it samples, the faces that
    finder finds on the decoded frame (a real detection, never an interpolated box); each is filed
    under the tracked face it overlaps, and one overlapping none still enters the authors' rule
    but no track's scores (counted in `untracked`). A detector that raises is recorded as failed
    and scores nothing more; the others go on.
    """

    def __init__(self, runnable: Mapping[str, Detector], plan_: Plan, device: str = "cpu",
                 progress: Progress | None = None):
        self.runnable = {n: d for n, d in runnable.items() if not isinstance(d, VideoDetector)}
        self.videos = VideoScorer({n: d for n, d in runnable.items() if isinstance(d, VideoDetector)}, plan_, progress)
        self.min_face_px = float(plan_.sampling.min_face_px)
        self.wanted = {name: set(plan_.detector_frames[name]) for name in self.runnable}
        self.queues: dict[str, list[tuple[int, int | None, np.ndarray]]] = {name: [] for name in self.runnable}
        self.frame_scores: dict[str, list[tuple[int, int, float]]] = {name: [] for name in self.runnable}
        self.member_scores: dict[str, list[np.ndarray]] = {name: [] for name in self.runnable}
        self.predict_s = {name: 0.0 for name in self.runnable}
        self.largest_small_face: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.finders = face_finders(self.runnable, device)
        self.find_s = {name: 0.0 for name in self.finders}
        self.untracked = {name: 0 for name in self.finders}

    def own_faces(self, name: str, rgb: np.ndarray, boxes: list) -> list[tuple[int | None, tuple, tuple | None]]:
        """(track id or None, box, landmarks) of the faces a detector's own finder finds on a frame."""
        t = time.perf_counter()
        try:
            found = self.finders[name](rgb)
        except Exception as exc:  # the finder is part of the detector: its failure is the detector's
            self.failed[name] = f"face finder: {type(exc).__name__}: {exc}"
            return []
        finally:
            self.find_s[name] += time.perf_counter() - t
        if self.runnable[name].face_finder.keep == "largest":
            found = found[:1]
        matched = match_to_tracks([f.box for f in found], [(tid, box) for tid, box, _ in boxes])
        return [(matched.get(i), f.box, f.landmarks) for i, f in enumerate(found)]

    def add_frame(self, n: int, rgb: np.ndarray, boxes: list) -> None:
        self.videos.add_frame(n, rgb, boxes)
        for name, det in self.runnable.items():
            if n not in self.wanted[name] or name in self.failed:
                continue
            chosen = boxes
            if name in self.finders:
                chosen = self.own_faces(name, rgb, boxes)
            elif det.sampling.faces == "largest" and boxes:
                chosen = [max(boxes, key=lambda b: (b[1][2] - b[1][0]) * (b[1][3] - b[1][1]))]
            for tid, box, landmarks in chosen:
                size = min(box[2] - box[0], box[3] - box[1])
                if size < self.min_face_px:
                    self.largest_small_face[name] = max(self.largest_small_face.get(name, 0.0), size)
                    continue
                crop = det.cut(rgb, box, None if landmarks is None else np.asarray(landmarks, np.float32))
                if crop is not None:
                    self.queues[name].append((n, tid, crop))
            if len(self.queues[name]) >= det.batch_size:
                self.run_queue(name)

    def run_queue(self, name: str) -> None:
        batch, self.queues[name] = self.queues[name], []
        if not batch or name in self.failed:
            return
        t = time.perf_counter()
        det = self.runnable[name]
        try:
            crops = np.stack([c for _, _, c in batch])
            if det.upstream_rule:
                members = det.predict_members(crops)
                self.member_scores[name].append(members)
                probs = det.combine_members(members)
            else:
                probs = det.predict(crops)
        except Exception as exc:  # the detector's failure is its result: status error
            self.failed[name] = f"{type(exc).__name__}: {exc}"
            return
        self.predict_s[name] += time.perf_counter() - t
        # A face on no track enters the authors' rule (member scores) but no track's frame scores.
        self.frame_scores[name].extend((f, tid, float(p)) for (f, tid, _), p in zip(batch, probs) if tid is not None)
        if name in self.untracked:
            self.untracked[name] += sum(1 for _, tid, _ in batch if tid is None)

    def record_own_faces(self, outcomes: Mapping[str, DetectorOutcome]) -> None:
        """Put the own-finder figures on the outcomes: face-finding time, and faces on no track."""
        for name in self.finders:
            outcome = outcomes.get(name)
            if outcome is None or name in self.failed:
                continue
            outcome.timings["find_faces_s"] = round(self.find_s[name], 3)
            if outcome.upstream is not None:
                outcome.upstream["faces_without_track"] = self.untracked[name]

    def finish(self) -> None:
        for name in self.runnable:
            self.run_queue(name)
        self.videos.finish()


class VideoScorer:
    """Stage 4 for video-level detectors: hand each its wanted frames, then take its verdict.

    Our tracked boxes on those frames are kept (boxes only) so the faces the detector found itself
    can be filed under our tracks. A detector that raises is recorded as failed; the others go on.
    """

    def __init__(self, runnable: Mapping[str, VideoDetector], plan_: Plan, progress: Progress | None = None):
        self.runnable = dict(runnable)
        self.wanted = {name: set(plan_.detector_frames[name]) for name in self.runnable}
        self.runs: dict[str, VideoRun] = {}
        self.failed: dict[str, str] = {}
        self.verdicts: dict[str, VideoVerdict] = {}
        self.seconds = {name: 0.0 for name in self.runnable}
        self.tracked: dict[str, dict[int, list[tuple[int, tuple]]]] = {name: {} for name in self.runnable}
        # What the caller's progress callback raised (a job's cancel): it stops the analysis, and is
        # never taken for the detector failing, even where a detector catches its members' errors.
        self.interrupt: BaseException | None = None
        self.progress = progress
        for name, det in self.runnable.items():
            try:
                self.runs[name] = det.start(plan_.info, self._progress if progress else None)
            except Exception as exc:  # the detector's failure is its result: status error
                self.failed[name] = f"{type(exc).__name__}: {exc}"
            self._stop_if_interrupted()

    def _progress(self, done: int, total: int, stage: str) -> None:
        if self.interrupt is not None:
            raise self.interrupt
        try:
            self.progress(done, total, stage)
        except BaseException as exc:
            self.interrupt = exc
            raise

    def _stop_if_interrupted(self) -> None:
        if self.interrupt is not None:
            raise self.interrupt

    def add_frame(self, n: int, rgb: np.ndarray, boxes: list) -> None:
        for name, run in self.runs.items():
            if n not in self.wanted[name] or name in self.failed:
                continue
            self.tracked[name][n] = [(tid, tuple(box)) for tid, box, _ in boxes]
            t = time.perf_counter()
            try:
                run.add(n, rgb)
            except Exception as exc:
                self.failed[name] = f"{type(exc).__name__}: {exc}"
            self._stop_if_interrupted()
            self.seconds[name] += time.perf_counter() - t

    def finish(self) -> None:
        for name, run in self.runs.items():
            if name in self.failed:
                continue
            t = time.perf_counter()
            try:
                verdict = run.finish()
                if not isinstance(verdict, VideoVerdict):
                    raise TypeError(f"finish() returned {type(verdict).__name__}, not a VideoVerdict")
                self.verdicts[name] = verdict
            except Exception as exc:
                self.failed[name] = f"{type(exc).__name__}: {exc}"
            self._stop_if_interrupted()
            self.seconds[name] += time.perf_counter() - t
        self.runs.clear()  # what the runs held (frames, crops) is not needed past here

    def predict_seconds(self) -> float:
        return sum(self.seconds.values())

    def outcome(self, name: str, plan_: Plan) -> DetectorOutcome:
        """The stored shape of a video-level result: the authors' rule as the headline, members,
        faces filed under our tracks where they overlap one, and the frames it read."""
        det = self.runnable[name]
        outcome = DetectorOutcome(name, det.version, Status.OK.value, weights_sha256=det.weights_sha256,
                                  threshold=det.threshold, rule=AUTHORS_RULE + name,
                                  timings={"predict_s": round(self.seconds[name], 3)})
        if name in self.failed:
            outcome.status, outcome.reason = Status.ERROR.value, f"the detector failed: {self.failed[name]}"
            outcome.upstream = {"rule": det.upstream_rule, "score": None, "kind": "video"}
            return outcome
        verdict = self.verdicts[name]
        outcome.status, outcome.score, outcome.reason = verdict.status, verdict.score, verdict.reason
        outcome.frames_used = sorted(verdict.frames_analysed)
        outcome.timings.update(verdict.timings)
        face_track = file_faces_under_tracks(verdict, self.tracked[name])
        outcome.frame_scores = sorted((f, face_track[fid], float(v)) for f, fid, v in verdict.frame_scores
                                      if face_track.get(fid) is not None)
        for face in verdict.faces:
            tid = face_track.get(face.id)
            if tid is None or tid in outcome.track_scores:
                continue
            ok = face.score is not None
            outcome.track_scores[tid] = {"score": face.score, "n_frames": len(face.frames),
                                         "status": "ok" if ok else "inconclusive",
                                         "reason": None if ok else (face.reason or "no score for this face")}
        details = verdict.details()
        for face in details["faces"]:
            face["track"] = face_track.get(face["id"])
        outcome.upstream = {"rule": det.upstream_rule, "score": verdict.score, **details,
                            "faces_without_track": sum(1 for f in verdict.faces if face_track.get(f.id) is None)}
        return outcome


def file_faces_under_tracks(verdict: VideoVerdict, tracked: Mapping[int, list[tuple[int, tuple]]]) -> dict[int, int | None]:
    """Which of our tracks each face of a video-level detector is: the track its boxes overlap
    (by TRACK_MATCH_IOU or more) on most of the frames where both exist; None when none does."""
    out: dict[int, int | None] = {}
    for face in verdict.faces:
        votes: dict[int, int] = {}
        for f, box in zip(face.frames, face.boxes):
            matched = match_to_tracks([tuple(box)], tracked.get(f, []))
            if 0 in matched:
                votes[matched[0]] = votes.get(matched[0], 0) + 1
        out[face.id] = max(votes, key=lambda t: (votes[t], -t)) if votes else None
    return out


def stream(video: str, plan_: Plan, reuse: Reuse, face_detector: FaceDetector | None, device: str,
           progress: Progress | None) -> tuple[Iterator, Tracker | None]:
    """Stage 3, stream: decoded frames with their face boxes, from a stored face run or found now.

    Returns:
        (iterator of (frame, rgb, [(track id, box, landmarks)]), the tracker when faces are found now).
    """
    if reuse.face_rows is not None:
        return _stored_frames(video, plan_.info, plan_.frames, reuse.face_rows, progress), None
    sampling = plan_.sampling
    tracker = Tracker(confirm_prob=sampling.confirm_prob, confirm_hits=sampling.confirm_hits)
    face_detector = face_detector or FaceDetector(detect_size=sampling.detect_size, min_prob=sampling.candidate_prob,
                                                  min_face_px=sampling.min_face_px,
                                                  find_face_px=sampling.find_face_px, device=device)
    frames = _stream_tracked_frames(video, plan_.info, plan_.frames, set(plan_.detection_frames), face_detector,
                                    tracker, progress)
    return frames, tracker


def summarise(runnable: Mapping[str, Detector], scorer: Scorer, tracks: list[TrackData], plan_: Plan) -> dict[str, DetectorOutcome]:
    """Stage 5, summarise: track and video scores and a status per detector, from the frame scores."""
    rule = plan_.sampling.rule
    outcomes = {}
    for name, det in runnable.items():
        if name in scorer.videos.runnable:
            outcomes[name] = scorer.videos.outcome(name, plan_)
            continue
        outcome = DetectorOutcome(name, det.version, Status.OK.value, frames_used=plan_.detector_frames[name],
                                  weights_sha256=det.weights_sha256, threshold=det.threshold,
                                  timings={"predict_s": round(scorer.predict_s[name], 3)})
        if name in scorer.failed:
            outcome.status, outcome.reason, outcome.rule = Status.ERROR.value, f"the detector failed: {scorer.failed[name]}", rule.name
        else:
            outcome.frame_scores = scorer.frame_scores[name]
            _summarise(det, outcome, tracks, rule, len(plan_.analysed), scorer.largest_small_face.get(name),
                       scorer.min_face_px, plan_.detection_frames)
        if det.upstream_rule:
            _authors_headline(det, outcome, scorer.member_scores[name])
        # frames_used: the frames on which this detector actually scored a face.
        outcome.frames_used = sorted({f for f, _, _ in outcome.frame_scores})
        outcomes[name] = outcome
    return outcomes


def analyze(
    video: str | Path,
    detectors: Iterable[str] | Mapping[str, Detector],
    sampling: Sampling = Sampling(),
    device: str = "cpu",
    progress: Progress | None = None,
    ensemble_rule: str = "mean",
    info: VideoInfo | None = None,
    face_detector: FaceDetector | None = None,
    reuse: ReuseLookup | None = None,
) -> AnalysisResult:
    """Analyse one video with the given detectors (names from the registry, or instances by name).

    Frames are decoded once, in order, holding only a few at a time. Faces are detected on
    every k-th analysed frame and tracked; each detector scores the tracked faces on the frames
    its sampling policy asks for. Nothing is stored here: `reuse` (given by the store layer)
    returns what is already known for the plan, and the caller stores the result.

    Returns:
        AnalysisResult; each detector has a status and, only when ok, a score.

    Raises:
        VideoError: the video is refused by its probe.
    """
    t0 = time.perf_counter()
    video = str(video)
    info = info or probe_isolated(video)
    if isinstance(detectors, Mapping):
        instances = dict(detectors)
        order = list(instances)
        runnable, outcomes = load_detectors(order, device, get=instances.__getitem__)
    else:
        order = list(detectors)
        runnable, outcomes = load_detectors(order, device)
    plan_ = plan(info, sampling, runnable)
    known = reuse(plan_, runnable) if reuse is not None else Reuse()
    for name, outcome in known.outcomes.items():
        outcomes[name] = outcome
        runnable.pop(name, None)
    timings = {"probe_s": round(time.perf_counter() - t0, 3)}
    tracks: list[TrackData] = _tracks_from_rows(known.face_rows) if known.face_rows is not None else []
    face_tracks = None
    error = None
    if runnable or known.face_rows is None:
        t_faces = time.perf_counter()
        frames, tracker = stream(video, plan_, known, face_detector, device, progress)
        scorer = Scorer(runnable, plan_, device, progress)
        try:
            for n, rgb, boxes in frames:
                scorer.add_frame(n, rgb, boxes)
            scorer.finish()
        except VideoError as exc:
            error = f"decoding failed: {exc}"
            for name, det in runnable.items():
                outcomes[name] = DetectorOutcome(name, det.version, Status.ERROR.value, reason=error)
            tracks, runnable = [], {}
        else:
            timings["faces_s"] = round(time.perf_counter() - t_faces - sum(scorer.predict_s.values())
                                       - scorer.videos.predict_seconds(), 3)
            if tracker is not None:
                face_tracks = [t for t in tracker.tracks if t.frames]
                tracks = [TrackData(t.id, t.frames, [t.points[f].box for f in t.frames],
                                    [t.points[f].detected for f in t.frames]) for t in face_tracks]
            outcomes.update(summarise(runnable, scorer, tracks, plan_))
            scorer.record_own_faces(outcomes)
    ordered = {name: outcomes[name] for name in order if name in outcomes}
    ens = ensemble({n: o.score for n, o in ordered.items()}, {n: o.status for n, o in ordered.items()}, ensemble_rule,
                   {n: o.threshold for n, o in ordered.items()})
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    return AnalysisResult(info, None, sampling, plan_.frames, plan_.detection_frames, tracks, ordered, ens, timings,
                          known.face_run_id, plan=plan_, face_tracks=face_tracks, error=error)
