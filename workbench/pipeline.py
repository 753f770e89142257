"""The analysis pipeline: video -> sampled frames -> faces -> tracks -> detector scores -> store."""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from detectors.base import SCOPE_CAVEAT, Detector, Status, WeightsUnavailable
from detectors.registry import get_detector
from workbench import __version__
from workbench.aggregate import DEFAULT_RULE, Rule, ensemble
from workbench.faces import FaceDetector
from workbench.store import Store
from workbench.tracking import Tracker, fill_between
from workbench.video import VideoError, VideoInfo, iter_frames, probe

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
        detect_size: longer side of the frame MTCNN sees, in pixels.
        min_face_px: faces whose box is smaller than this (full-resolution pixels) are not scored.
        rule: how frame scores become track and video scores.
    """

    sample_fps: float | None = 2.0
    detect_every: int | None = None
    detect_size: int = 640
    min_face_px: int = 32
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
    upstream: dict | None = None  # {"rule": authors' rule in words, "score": float | None}

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
            "ensemble": self.ensemble,
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


def _stream_tracked_frames(
    video: str, info: VideoInfo, frames: list[int], detection_frames: set[int], detector: FaceDetector,
    tracker: Tracker, progress: Progress | None,
) -> Iterator[tuple[int, np.ndarray, list[tuple[int, tuple]]]]:
    """Decode the wanted frames in order and yield (frame, rgb, [(track id, box)]) once final.

    Frames wait in a small buffer until the next detection frame: only then are the boxes of
    the frames between two detections known (by interpolation along each track).
    """
    frame_bytes = info.width * info.height * 3
    step = max(1, len(frames) // max(1, len(detection_frames)))
    det_batch = max(1, min(8, PENDING_BYTES // max(1, frame_bytes * step)))
    pending: list[tuple[int, np.ndarray]] = []
    pending_det: list[int] = []
    done = 0

    def flush():
        nonlocal done
        det_rgb = {n: rgb for n, rgb in pending if n in pending_det}
        faces_per_frame = detector.detect([det_rgb[n] for n in pending_det])
        pending_frames = [n for n, _ in pending]
        for n, faces in zip(pending_det, faces_per_frame):
            for track, point, prev in tracker.update(n, faces):
                if point is not None and prev is not None:
                    fill_between(track, prev, n, pending_frames)
        last_det = pending_det[-1]
        keep = []
        for n, rgb in pending:
            if n > last_det:
                keep.append((n, rgb))
                continue
            boxes = [(t.id, t.points[n].box, t.points[n].landmarks) for t in tracker.tracks if n in t.points]
            done += 1
            if progress:
                progress(done, len(frames), "faces")
            yield n, rgb, boxes
        pending[:] = keep
        pending_det.clear()

    for n, rgb in iter_frames(video, frames, rotation=info.rotation):
        pending.append((n, rgb))
        if n in detection_frames:
            pending_det.append(n)
            if len(pending_det) >= det_batch:
                yield from flush()
    if pending_det:
        yield from flush()


def _stored_frames(video: str, info: VideoInfo, frames: list[int], track_rows: dict[int, list[dict]], progress):
    """Like _stream_tracked_frames, with boxes from a stored face run (no detection)."""
    by_frame: dict[int, list] = {}
    for tid, rows in track_rows.items():
        for r in rows:
            by_frame.setdefault(r["frame"], []).append((tid, (r["x1"], r["y1"], r["x2"], r["y2"]), r["landmarks"]))
    for i, (n, rgb) in enumerate(iter_frames(video, frames, rotation=info.rotation)):
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
               n_analysed: int, small_faces: dict[str, float], detection_frames: list[int] | None = None) -> None:
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
        outcome.status, outcome.reason = Status.INCONCLUSIVE.value, f"no face found in {n_analysed} analysed frames"
    elif not outcome.frame_scores and small_faces.get(det.name):
        outcome.status = Status.INCONCLUSIVE.value
        outcome.reason = (f"faces too small to judge: the largest was {small_faces[det.name]:.0f} px, "
                          f"below the minimum of {small_faces['_min']:.0f} px")
    elif not outcome.frame_scores:
        outcome.status = Status.INCONCLUSIVE.value
        outcome.reason = "no tracked face on the frames this detector samples"
    elif unstable and all(tid in unstable for tid in per_track):
        outcome.status = Status.INCONCLUSIVE.value
        outcome.reason = "face detections too unstable to judge: " + "; ".join(
            f"track {tid} found on {f} of {n} detection frames" for tid, (f, n) in sorted(unstable.items()))
    else:
        outcome.status = Status.INCONCLUSIVE.value
        outcome.reason = f"too few frames with a usable face: no track was scored on {rule.min_frames} or more frames"


def analyze(
    video: str | Path,
    detectors: list[str],
    sampling: Sampling = Sampling(),
    store: Store | None = None,
    sha256: str | None = None,
    actor: str = "local",
    device: str = "cpu",
    progress: Progress | None = None,
    ensemble_rule: str = "mean",
    info: VideoInfo | None = None,
    face_detector: FaceDetector | None = None,
) -> AnalysisResult:
    """Analyse one video with the named detectors.

    Frames are decoded once, in order, holding only a few at a time. Faces are detected on
    every k-th analysed frame and tracked; each detector scores the tracked faces on the frames
    its sampling policy asks for. With a store and the evidence sha256, results are saved, and
    a detector already run with the same weights and parameters is reused, not recomputed.

    Returns:
        AnalysisResult; each detector has a status and, only when ok, a score.

    Raises:
        VideoError: the video is refused by its probe.
    """
    t0 = time.perf_counter()
    video = str(video)
    info = info or probe(video)
    analysed = sampling.analysed_frames(info)
    outcomes: dict[str, DetectorOutcome] = {}
    runnable: dict[str, Detector] = {}
    for name in detectors:
        det = get_detector(name)
        status = det.weights_status()
        if not status.installed:
            outcomes[name] = DetectorOutcome(name, det.version, Status.UNAVAILABLE.value, reason=status.detail)
            continue
        try:
            det.model(device)
        except WeightsUnavailable as exc:
            outcomes[name] = DetectorOutcome(name, det.version, Status.UNAVAILABLE.value, reason=str(exc))
            continue
        except Exception as exc:  # WeightsError or a broken file: an error, never a score
            outcomes[name] = DetectorOutcome(name, det.version, Status.ERROR.value, reason=f"weights refused: {exc}")
            continue
        runnable[name] = det

    det_frames = {name: det.sampling.frames(info.frames, analysed) for name, det in runnable.items()}
    frames = sorted(set(analysed).union(*det_frames.values())) if det_frames else list(analysed)
    step = sampling.detection_step(info)
    landmark_frames = set().union(*(det_frames[n] for n, d in runnable.items() if d.needs_landmarks)) if runnable else set()
    detection_frames = sorted(set(frames[::step]) | {frames[-1]} | landmark_frames)
    face_params = {k: v for k, v in sampling.to_dict().items() if k != "rule"}
    face_params.update(face_detector="facenet-pytorch MTCNN", min_prob=0.92)
    face_key = _key(dict(face_params, frames=_key({"f": frames, "detect": detection_frames})))
    params_keys = {
        name: _key({"face": face_key, "detector": det.describe(), "frames": det_frames[name], "rule": sampling.rule.name})
        for name, det in runnable.items()
    }

    # Reuse what the store already has for exactly these inputs.
    if store is not None and sha256:
        for name, det in list(runnable.items()):
            row = store.find_analysis(sha256, name, det.version, det.weights_sha256, params_keys[name])
            if row is not None:
                tracks_scores, frame_rows = store.analysis_scores(row["id"])
                outcomes[name] = DetectorOutcome(
                    name, row["detector_version"], row["status"], row["score"], row["reason"], row["frames_used"],
                    row["weights_sha256"], row["threshold"], row["rule"],
                    {tid: {k: t[k] for k in ("score", "n_frames", "status", "reason")} for tid, t in tracks_scores.items()},
                    [(r["frame"], r["track_id"], r["score"]) for r in frame_rows], row["timings"], row["id"], reused=True,
                    upstream=row.get("upstream"),
                )
                del runnable[name]
    stored_run = store.find_face_run(sha256, face_key) if store is not None and sha256 else None
    tracks: list[TrackData] = []
    timings = {"probe_s": round(time.perf_counter() - t0, 3)}
    face_run_id = stored_run["id"] if stored_run else None

    if stored_run is not None and not runnable:
        tracks = _tracks_from_rows(store.face_run_tracks(stored_run["id"]))
    else:
        t_faces = time.perf_counter()
        tracker = Tracker()
        if stored_run is not None:
            stream = _stored_frames(video, info, frames, store.face_run_tracks(stored_run["id"]), progress)
        else:
            face_detector = face_detector or FaceDetector(detect_size=sampling.detect_size, device=device)
            stream = _stream_tracked_frames(video, info, frames, set(detection_frames), face_detector, tracker, progress)
        queues: dict[str, list[tuple[int, int, np.ndarray]]] = {name: [] for name in runnable}
        predict_s = {name: 0.0 for name in runnable}
        small = {"_min": float(sampling.min_face_px)}
        failed: dict[str, str] = {}
        wanted = {name: set(f) for name, f in det_frames.items()}

        def run_queue(name: str) -> None:
            batch = queues[name]
            queues[name] = []
            if not batch or name in failed:
                return
            t = time.perf_counter()
            det = runnable[name]
            try:
                crops = np.stack([c for _, _, c in batch])
                if det.upstream_rule:
                    members = det.predict_members(crops)
                    member_scores[name].append(members)
                    probs = det.combine_members(members)
                else:
                    probs = det.predict(crops)
            except Exception as exc:  # the detector's failure is its result: status error
                failed[name] = f"{type(exc).__name__}: {exc}"
                return
            predict_s[name] += time.perf_counter() - t
            outcomes_frames[name].extend((f, tid, float(p)) for (f, tid, _), p in zip(batch, probs))

        outcomes_frames: dict[str, list] = {name: [] for name in runnable}
        member_scores: dict[str, list[np.ndarray]] = {name: [] for name in runnable}
        try:
            for n, rgb, boxes in stream:
                for name, det in runnable.items():
                    if n not in wanted[name]:
                        continue
                    chosen = boxes
                    if det.sampling.faces == "largest" and boxes:
                        chosen = [max(boxes, key=lambda b: (b[1][2] - b[1][0]) * (b[1][3] - b[1][1]))]
                    for tid, box, landmarks in chosen:
                        size = min(box[2] - box[0], box[3] - box[1])
                        if size < sampling.min_face_px:
                            small[name] = max(small.get(name, 0.0), size)
                            continue
                        crop = det.cut(rgb, box, None if landmarks is None else np.asarray(landmarks, np.float32))
                        if crop is not None:
                            queues[name].append((n, tid, crop))
                    if len(queues[name]) >= det.batch_size:
                        run_queue(name)
            for name in runnable:
                run_queue(name)
        except VideoError as exc:
            for name, det in runnable.items():
                outcomes[name] = DetectorOutcome(name, det.version, Status.ERROR.value, reason=f"decoding failed: {exc}")
            if store is not None:
                store.audit(actor, "analysis.failed", f"evidence:{sha256}", {"reason": str(exc)})
            timings["total_s"] = round(time.perf_counter() - t0, 3)
            return AnalysisResult(info, sha256, sampling, frames, detection_frames, [], outcomes,
                                  ensemble({}, {n: o.status for n, o in outcomes.items()}, ensemble_rule), timings)
        timings["faces_s"] = round(time.perf_counter() - t_faces - sum(predict_s.values()), 3)
        if stored_run is not None:
            tracks = _tracks_from_rows(store.face_run_tracks(stored_run["id"]))
        else:
            tracks = [
                TrackData(t.id, t.frames, [t.points[f].box for f in t.frames], [t.points[f].detected for f in t.frames])
                for t in tracker.tracks
            ]
            if store is not None and sha256:
                face_run_id = store.save_face_run(sha256, face_key, face_params, frames, detection_frames,
                                                  tracker.tracks, {"faces_s": timings["faces_s"]})
        for name, det in runnable.items():
            outcome = DetectorOutcome(name, det.version, Status.OK.value, frames_used=det_frames[name],
                                      weights_sha256=det.weights_sha256, threshold=det.threshold,
                                      timings={"predict_s": round(predict_s[name], 3)})
            if name in failed:
                outcome.status, outcome.reason, outcome.rule = Status.ERROR.value, f"the detector failed: {failed[name]}", sampling.rule.name
            else:
                outcome.frame_scores = outcomes_frames[name]
                _summarise(det, outcome, tracks, sampling.rule, len(analysed), small, detection_frames)
                if det.upstream_rule:
                    scores = np.concatenate(member_scores[name], axis=1) if member_scores[name] else None
                    outcome.upstream = {"rule": det.upstream_rule,
                                        "score": det.upstream_aggregate(scores) if scores is not None else None}
            # frames_used: the frames on which this detector actually scored a face.
            outcome.frames_used = sorted({f for f, _, _ in outcome.frame_scores})
            outcomes[name] = outcome
            if store is not None and sha256:
                outcome.analysis_id = store.save_analysis(
                    {
                        "sha256": sha256, "face_run_id": face_run_id, "detector": name, "detector_version": det.version,
                        "weights_sha256": det.weights_sha256, "params_key": params_keys[name],
                        "params": {"sampling": sampling.to_dict(), "detector": det.describe(), "frames_requested": len(det_frames[name])},
                        "software": software_versions(), "status": outcome.status, "reason": outcome.reason,
                        "score": outcome.score, "threshold": det.threshold, "rule": outcome.rule,
                        "frames_used": outcome.frames_used, "timings": outcome.timings,
                        "upstream": outcome.upstream,
                    },
                    outcome.track_scores, outcome.frame_scores, actor,
                )

    ordered = {name: outcomes[name] for name in detectors if name in outcomes}
    ens = ensemble({n: o.score for n, o in ordered.items()}, {n: o.status for n, o in ordered.items()}, ensemble_rule)
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    return AnalysisResult(info, sha256, sampling, frames, detection_frames, tracks, ordered, ens, timings, face_run_id)

