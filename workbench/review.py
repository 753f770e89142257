"""What the Review page shows, as plain functions: stored results, boxes on a frame, the timeline."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import cv2
import numpy as np
import plotly.graph_objects as go

from workbench.aggregate import ENSEMBLE_RULES, crossing_frames, frame_ensemble
from workbench.geometry import CropPolicy, crop_face, interpolate
from workbench.store import Store

ENSEMBLE = "ensemble"
GALLERY_CROP = CropPolicy(size=160, margin=0.2)
# Twenty qualitative colours that stay readable on video (Trubetskoy's list without white and black;
# the first twelve kept their order, so earlier reports keep their colours); a track keeps its
# colour everywhere.
TRACK_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
                 "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#808000", "#000075", "#ffe119",
                 "#aaffc3", "#ffd8b1", "#a9a9a9", "#fffac8"]


def track_colour(track_id: int) -> str:
    """The colour of a track's box on the frame (by id: tracks 1-20 never share one)."""
    return TRACK_COLOURS[(track_id - 1) % len(TRACK_COLOURS)]


def track_colours(track_ids) -> dict[int, str]:
    """A colour per track shown together, none repeated (up to len(TRACK_COLOURS) tracks).

    Each track keeps its box colour (track_colour) unless a track with a lower id already has it;
    then it takes the first colour no shown track uses.

    >>> track_colours([1, 21])
    {1: '#e6194b', 21: '#3cb44b'}
    """
    out: dict[int, str] = {}
    clashing = []
    for tid in sorted(set(track_ids)):
        colour = track_colour(tid)
        if colour in out.values():
            clashing.append(tid)
        else:
            out[tid] = colour
    free = [c for c in TRACK_COLOURS if c not in out.values()]
    for i, tid in enumerate(clashing):
        # More tracks than colours: only then do colours repeat.
        out[tid] = free[i] if i < len(free) else TRACK_COLOURS[i % len(TRACK_COLOURS)]
    return out


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@dataclass
class DetectorView:
    """One detector's stored analysis, as the page reads it."""

    name: str
    version: str
    status: str
    score: float | None
    reason: str | None
    threshold: float | None
    rule: str | None
    frames_used: list[int]
    weights_sha256: str | None
    created_at: str
    analysis_id: int
    frame_scores: dict[tuple[int, int], float] = field(default_factory=dict)  # (frame, track) -> score
    track_scores: dict[int, dict] = field(default_factory=dict)
    # Reproduced detectors: the authors' video rule (which made `score`) and our track rule's score as
    # its explanation (see aggregate.score_rules; results of earlier detector versions hold it aside).
    upstream: dict | None = None


@dataclass
class ReviewData:
    """Everything the Review page needs about one evidence file and one face run."""

    sha256: str
    probe: dict
    face_run_id: int | None
    frames_analysed: list[int]
    tracks: dict[int, dict[int, tuple[tuple[float, float, float, float], bool]]]  # id -> frame -> (box, detected)
    detectors: dict[str, DetectorView]
    landmarks: dict[tuple[int, int], list] = field(default_factory=dict)  # (track, frame) -> 5 points, where detected
    # The stored ensemble of this face run (rule, status, score, threshold, members {name: analysis id})
    # and its per-face, per-frame scores by the same rule; None when no ensemble was stored.
    ensemble: dict | None = None
    ensemble_frame_scores: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return float(self.probe["fps"])

    @property
    def total_frames(self) -> int:
        return int(self.probe["frames"])

    def scored_detectors(self) -> list[str]:
        return [n for n, d in self.detectors.items() if d.frame_scores]


def face_runs(store: Store, sha256: str) -> list[dict]:
    """The face runs of an evidence file, newest first, each with a short description.

    Each run gets "number": its place among this file's runs (1 = the first), which the label
    leads with; the store's id counts the runs of every file, so it only follows, as a reference.
    """
    runs = store.face_runs(sha256)
    for place, run in enumerate(runs):
        params = run["params"]
        mode = "every frame" if params.get("sample_fps") is None else f"{params['sample_fps']:g} frames/s"
        run["number"] = len(runs) - place
        run["label"] = (f"run {run['number']} of {len(runs)} of this file: {mode}, {len(run['frames_analysed'])} frames, "
                        f"{run['created_at'][:19]}Z (face run #{run['id']})")
    return runs


def load_review(store: Store, sha256: str, face_run_id: int | None = None) -> ReviewData:
    """Stored tracks and the latest analysis of each detector on one face run (newest by default)."""
    evidence = store.evidence(sha256)
    runs = face_runs(store, sha256)
    run = next((r for r in runs if r["id"] == face_run_id), runs[0] if runs else None)
    tracks: dict[int, dict] = {}
    landmarks: dict[tuple[int, int], list] = {}
    detectors: dict[str, DetectorView] = {}
    if run is not None:
        for tid, rows in store.face_run_tracks(run["id"]).items():
            tracks[tid] = {r["frame"]: ((r["x1"], r["y1"], r["x2"], r["y2"]), bool(r["detected"])) for r in rows}
            landmarks.update({(tid, r["frame"]): r["landmarks"] for r in rows if r["landmarks"]})
        for a in store.analyses(sha256):
            if a["face_run_id"] != run["id"] and a["status"] in ("ok", "inconclusive"):
                continue
            track_scores, frame_rows = store.analysis_scores(a["id"])
            detectors[a["detector"]] = DetectorView(
                a["detector"], a["detector_version"], a["status"], a["score"], a["reason"], a["threshold"], a["rule"],
                a["frames_used"] or [], a["weights_sha256"], a["created_at"], a["id"],
                {(r["frame"], r["track_id"]): r["score"] for r in frame_rows}, track_scores, a.get("upstream"),
            )
    ens, ens_frames = None, {}
    if run is not None:
        ens = store.latest_ensemble(sha256, run["id"])
        if ens is not None:
            by_id = {d.analysis_id: d for d in detectors.values()}
            member_frames = {}
            for name, analysis_id in ens["members"].items():
                view = by_id.get(analysis_id)
                member_frames[name] = view.frame_scores if view is not None else {
                    (r["frame"], r["track_id"]): r["score"] for r in store.analysis_scores(analysis_id)[1]}
            ens_frames = frame_ensemble(member_frames, list(ens["members"]), ens["rule"])
    return ReviewData(sha256, evidence["probe"], run["id"] if run else None,
                      run["frames_analysed"] if run else [], tracks, detectors, landmarks, ens, ens_frames)


def ensemble_scores(review: ReviewData) -> dict[tuple[int, int], float]:
    """Per (frame, track): the stored ensemble's rule over its member analyses' scores there."""
    return review.ensemble_frame_scores


def has_ensemble(review: ReviewData) -> bool:
    """True when a stored ensemble combines two or more detectors (one member is that detector itself)."""
    return review.ensemble is not None and len(review.ensemble["members"]) > 1


def ensemble_caption(ensemble: dict) -> str:
    """The stored ensemble in one line: rule, score (or status), threshold, members, left out."""
    shown = f"{ensemble['score']:.3f}" if ensemble["status"] == "ok" and ensemble["score"] is not None \
        else ensemble["status"].upper()
    threshold = f"; threshold {ensemble['threshold']:.2f} (mean of the members')" if ensemble["threshold"] is not None else ""
    left = f"; left out: {', '.join(ensemble['left_out'])}" if ensemble.get("left_out") else ""
    return (f"Ensemble ({ENSEMBLE_RULES[ensemble['rule']]}): {shown}{threshold}; members: "
            f"{', '.join(ensemble['members'])}{left}.")


def headline_series(review: ReviewData) -> str | None:
    """The series read first (the app's default timeline, the report's key frames): the stored
    ensemble when it combines detectors, else the first detector with frame scores."""
    if has_ensemble(review) and review.ensemble_frame_scores:
        return ENSEMBLE
    scored = review.scored_detectors()
    return scored[0] if scored else None


def threshold_for(review: ReviewData, name: str | None, default: float = 0.5) -> float:
    """The operating threshold of a detector, or the stored ensemble's threshold."""
    if name == ENSEMBLE and review.ensemble is not None and review.ensemble["threshold"] is not None:
        return float(review.ensemble["threshold"])
    view = review.detectors.get(name) if name else None
    return float(view.threshold) if view is not None and view.threshold is not None else default


DISAGREEMENT_GAP = 0.5
AGREEMENT_NOTE = (
    "FakeFinder's detectors correlate at about 0.6-0.8 with one another, so several detectors agreeing "
    "is weaker evidence than it looks; strong disagreement means at least one of them is wrong here."
)


def disagreements(review: ReviewData, gap: float = DISAGREEMENT_GAP) -> list[dict]:
    """Tracks on which ok detectors' track scores differ by at least `gap` (highest minus lowest)."""
    by_track: dict[int, dict[str, float]] = {}
    for name, d in review.detectors.items():
        if d.status != "ok":
            continue
        for tid, t in d.track_scores.items():
            if t.get("score") is not None:
                by_track.setdefault(tid, {})[name] = t["score"]
    out = []
    for tid, scores in sorted(by_track.items()):
        if len(scores) > 1 and max(scores.values()) - min(scores.values()) >= gap:
            out.append({"track": tid, "scores": scores, "spread": max(scores.values()) - min(scores.values())})
    return out


def series(review: ReviewData, detector: str) -> dict[tuple[int, int], float]:
    return ensemble_scores(review) if detector == ENSEMBLE else review.detectors[detector].frame_scores


@dataclass
class FaceOnFrame:
    track_id: int
    box: tuple[float, float, float, float]
    kind: str  # "detected", "tracked" (interpolated at analysis) or "between samples" (interpolated here)
    score: float | None
    landmarks: list | None = None  # MTCNN's 5 points where the face was detected on this frame


def faces_at(review: ReviewData, frame: int, detector: str | None = None) -> list[FaceOnFrame]:
    """Every track's box on a frame; between analysed frames the box is interpolated, and says so."""
    scores = series(review, detector) if detector and (detector == ENSEMBLE or detector in review.detectors) else {}
    out = []
    for tid, points in review.tracks.items():
        if frame in points:
            box, detected = points[frame]
            out.append(FaceOnFrame(tid, box, "detected" if detected else "tracked", scores.get((frame, tid)),
                                   review.landmarks.get((tid, frame))))
            continue
        frames = sorted(points)
        i = bisect.bisect_left(frames, frame)
        if 0 < i < len(frames):
            a, b = frames[i - 1], frames[i]
            # Only bridge gaps the sampling made, not a stretch where the face was lost.
            if review.frames_analysed and _consecutive_analysed(review.frames_analysed, a, b):
                box = interpolate(points[a][0], points[b][0], (frame - a) / (b - a))
                out.append(FaceOnFrame(tid, box, "between samples", None))
    return out


def _consecutive_analysed(analysed: list[int], a: int, b: int) -> bool:
    i = bisect.bisect_left(analysed, a)
    return i + 1 < len(analysed) and analysed[i] == a and analysed[i + 1] == b


def draw_faces(rgb: np.ndarray, faces: list[FaceOnFrame]) -> np.ndarray:
    """The frame with each face box in its track's colour, labelled 'T<id> <score>'."""
    out = rgb.copy()
    scale = max(1.0, out.shape[0] / 720)
    thick = max(2, int(round(2 * scale)))
    for face in faces:
        colour = _rgb(track_colour(face.track_id))
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        if face.kind == "between samples":
            _dashed_rect(out, (x1, y1), (x2, y2), colour, thick)
        else:
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        label = f"T{face.track_id}" + (f" {face.score:.2f}" if face.score is not None else "")
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, thick)
        ty = max(th + base, y1)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 4, ty), colour, -1)
        cv2.putText(out, label, (x1 + 2, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def _dashed_rect(img, p1, p2, colour, thick, dash: int = 10) -> None:
    (x1, y1), (x2, y2) = p1, p2
    for x in range(x1, x2, 2 * dash):
        cv2.line(img, (x, y1), (min(x + dash, x2), y1), colour, thick)
        cv2.line(img, (x, y2), (min(x + dash, x2), y2), colour, thick)
    for y in range(y1, y2, 2 * dash):
        cv2.line(img, (x1, y), (x1, min(y + dash, y2)), colour, thick)
        cv2.line(img, (x2, y), (x2, min(y + dash, y2)), colour, thick)


def face_gallery(rgb: np.ndarray, faces: list[FaceOnFrame]) -> list[tuple[FaceOnFrame, np.ndarray]]:
    return [(f, crop_face(rgb, f.box, GALLERY_CROP)) for f in faces]


LOUPE_ZOOMS = (1, 2, 4)
LOUPE_MARGIN = 0.1  # of the face box on each side: the blending seam sits just outside the face


def clamp_region(frame_shape: tuple[int, ...], x: int, y: int, width: int, height: int) -> tuple[int, int, int, int]:
    """A width x height region at (x, y) (top left), moved (not shrunk) to lie inside the frame;
    shrunk only where it is larger than the frame. Returns (x1, y1, x2, y2), x2/y2 exclusive.

    >>> clamp_region((100, 200, 3), 190, -5, 32, 32)
    (168, 0, 200, 32)
    """
    h, w = frame_shape[:2]
    width, height = max(1, min(int(width), w)), max(1, min(int(height), h))
    x1 = max(0, min(int(x), w - width))
    y1 = max(0, min(int(y), h - height))
    return x1, y1, x1 + width, y1 + height


def face_region(frame_shape: tuple[int, ...], box: tuple[float, float, float, float],
                margin: float = LOUPE_MARGIN) -> tuple[int, int, int, int]:
    """A face box with `margin` of its size on each side, in whole pixels inside the frame."""
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = int(np.floor(x1 - mx)), int(np.floor(y1 - my))
    right, bottom = int(np.ceil(x2 + mx)), int(np.ceil(y2 + my))
    h, w = frame_shape[:2]
    left, top, right, bottom = max(0, left), max(0, top), min(w, right), min(h, bottom)
    return left, top, max(left + 1, right), max(top + 1, bottom)


def loupe_fit(region: tuple[int, int, int, int], zoom: int, max_px: int) -> tuple[tuple[int, int, int, int], int]:
    """The region and zoom a loupe of at most max_px a side can show at whole pixels: the zoom
    lowered until the region fits, and at 1x a region still larger cut to max_px around its centre
    (a width in px is shown as it is, so a larger picture would spill out of its column).

    >>> loupe_fit((0, 0, 100, 50), 4, 256)
    ((0, 0, 100, 50), 2)
    >>> loupe_fit((0, 0, 300, 100), 2, 256)
    ((22, 0, 278, 100), 1)
    """
    x1, y1, x2, y2 = region
    fitting = [z for z in LOUPE_ZOOMS if z <= zoom and max(x2 - x1, y2 - y1) * z <= max_px]
    if fitting:
        return region, max(fitting)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    w, h = min(x2 - x1, max_px), min(y2 - y1, max_px)
    nx1, ny1 = max(x1, min(cx - w // 2, x2 - w)), max(y1, min(cy - h // 2, y2 - h))
    return (nx1, ny1, nx1 + w, ny1 + h), 1


def loupe(rgb: np.ndarray, region: tuple[int, int, int, int], zoom: int = 1) -> np.ndarray:
    """The frame's own pixels in `region` (x1, y1, x2, y2), each repeated zoom x zoom times
    (nearest neighbour: no interpolation invents detail or blurs a seam)."""
    if zoom not in LOUPE_ZOOMS:
        raise ValueError(f"zoom must be one of {LOUPE_ZOOMS}, not {zoom!r}")
    x1, y1, x2, y2 = region
    crop = rgb[y1:y2, x1:x2]
    return np.ascontiguousarray(crop.repeat(zoom, axis=0).repeat(zoom, axis=1)) if zoom > 1 else crop.copy()


def unanalysed_spans(review: ReviewData) -> list[tuple[int, int]]:
    """Frame ranges with no analysed frame, wider than the sampling step (start, end inclusive)."""
    analysed, total = review.frames_analysed, review.total_frames
    if not analysed:
        return [(0, total - 1)] if total else []
    gaps = np.diff(analysed) if len(analysed) > 1 else np.array([1])
    step = max(1, int(np.median(gaps)))
    spans = []
    if analysed[0] > step:
        spans.append((0, analysed[0] - 1))
    for a, b in zip(analysed, analysed[1:]):
        if b - a > 1.5 * step:
            spans.append((a + 1, b - 1))
    if total - 1 - analysed[-1] > step:
        spans.append((analysed[-1] + 1, total - 1))
    return spans


FACE_BAND = {"detected": ("#2ca02c", "face detected"), "tracked": ("#98df8a", "face tracked between detections"),
             "none": ("#d62728", "no face found")}


def face_presence(review: ReviewData) -> dict[str, list[int]]:
    """The analysed frames split by what the face finder saw on them.

    Returns:
        {"detected": frames where some face was detected, "tracked": frames where faces are only
        interpolated along a track, "none": analysed frames without any face}.
    """
    kinds: dict[int, str] = {}
    for points in review.tracks.values():
        for frame, (_, detected) in points.items():
            if detected or kinds.get(frame) != "detected":
                kinds[frame] = "detected" if detected else "tracked"
    out: dict[str, list[int]] = {"detected": [], "tracked": [], "none": []}
    for frame in review.frames_analysed:
        out[kinds.get(frame, "none")].append(frame)
    return out


def crossings(review: ReviewData, detector: str, threshold: float) -> list[int]:
    """Frames where a track's score series crosses the threshold (either way), sorted."""
    return crossing_frames(series(review, detector), threshold)


def next_frame(frames: list[int], current: int) -> int | None:
    i = bisect.bisect_right(frames, current)
    return frames[i] if i < len(frames) else None


def previous_frame(frames: list[int], current: int) -> int | None:
    i = bisect.bisect_left(frames, current)
    return frames[i - 1] if i > 0 else None


TOP_TRACKS = 5  # tracks the Review timeline shows by default; the analyst can show all


def ranked_tracks(review: ReviewData, detector: str | None) -> list[int]:
    """Every track, highest peak per-frame score in `detector`'s series first (ties and tracks
    without a score in that series by id, after the scored ones)."""
    peaks: dict[int, float] = {}
    if detector and (detector == ENSEMBLE or detector in review.detectors):
        for (_, tid), s in series(review, detector).items():
            peaks[tid] = max(s, peaks.get(tid, float("-inf")))
    every = set(review.tracks) | set(peaks)
    return sorted(every, key=lambda tid: (tid not in peaks, -peaks.get(tid, 0.0), tid))


def shown_tracks(review: ReviewData, detector: str | None, top: int | None = TOP_TRACKS,
                 selected: int | None = None) -> list[int]:
    """The tracks a timeline shows: only `selected` when given, else the `top` highest-scoring
    tracks in `detector`'s series (all with top=None), in rank order."""
    if selected is not None:
        return [selected]
    ranked = ranked_tracks(review, detector)
    return ranked if top is None else ranked[:top]


def label_shifts(points: list[tuple[float, float]], width: float, px_per_unit: float,
                 row_px: float = 18.0, base_px: float = 10.0) -> list[float]:
    """How far (px) above its point each label goes so that no two labels' boxes meet.

    Args:
        points: (x, y) of each label's point, in axis units.
        width: a label's width in x-axis units (labels are centred on their x).
        px_per_unit: pixels per y-axis unit (an underestimate is safe: labels only move further apart).
        row_px: a label's height in px; base_px: the lift of every label above its point.

    Returns:
        The yshift of each label's bottom edge, in px, in the order of points. Labels are placed
        left to right, each at the first place that meets no label placed before it: just above
        its point, just below it, one row higher, one row lower, and so on (alternating keeps a
        crowd of labels half as tall as stacking them all upwards).

    >>> label_shifts([(0, 0.5), (1, 0.5), (2, 0.5), (50, 0.5)], width=5, px_per_unit=100)
    [10.0, -28.0, 28.0, 10.0]
    """
    placed: list[tuple[float, float]] = []  # (x, bottom of the label box in px above y=0)
    out = [0.0] * len(points)
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], i)):
        x, y = points[i]
        k = 0
        while True:
            level = k // 2
            shift = base_px + level * row_px if k % 2 == 0 else -base_px - (level + 1) * row_px
            bottom = y * px_per_unit + shift
            if all(abs(x - px) >= width or abs(bottom - pb) >= row_px for px, pb in placed):
                break
            k += 1
        placed.append((x, bottom))
        out[i] = shift
    return out


LABEL_WIDTH = 0.1  # of the frame axis: wider than a "T12" label on a timeline 330 px wide or more
LABEL_ROW_PX = 18.0  # a 12-px label with its background
LEGEND_ROW_PX = 18.0
AXIS_PX = 45.0  # the frame axis's ticks and title under the plot


def timeline_figure(review: ReviewData, current_frame: int | None = None, threshold: float = 0.5,
                    detectors: list[str] | None = None, height: int = 360,
                    tracks: list[int] | None = None, label_series: str | None = None) -> go.Figure:
    """Per-frame scores per detector per track, the ensemble, threshold band, gaps, where faces were
    and were not found (a band under the scores), frames used, cursor.

    Args:
        tracks: the tracks whose score lines are drawn (all when None); the face band and the
            frames-used rug always cover every track.
        label_series: the series whose peak of each drawn track gets a "T<id>" label (staggered
            so labels never overlap); the headline series when None.
    """
    fps = review.fps
    names = [n for n in (detectors or review.scored_detectors()) if n in review.detectors and review.detectors[n].frame_scores]
    fig = go.Figure()
    for x0, x1 in unanalysed_spans(review):
        fig.add_vrect(x0=x0 - 0.5, x1=x1 + 0.5, fillcolor="#888", opacity=0.12, line_width=0, layer="below")
    fig.add_hrect(y0=threshold, y1=1.0, fillcolor="#d62728", opacity=0.07, line_width=0, layer="below")
    fig.add_hline(y=threshold, line_dash="dot", line_color="#d62728",
                  annotation_text=f"threshold {threshold:.2f}", annotation_position="top left")
    dashes = ["solid", "dot", "dash", "longdash", "dashdot"]
    plotted = [(n, dashes[i % len(dashes)]) for i, n in enumerate(names)]
    if has_ensemble(review) and review.ensemble_frame_scores:
        plotted.append((ENSEMBLE, "solid"))
    keep = None if tracks is None else set(tracks)
    drawn: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for name, _ in plotted:
        by_track = drawn.setdefault(name, {})
        for (frame, tid), s in series(review, name).items():
            if keep is None or tid in keep:
                by_track.setdefault(tid, []).append((frame, s))
    colours = track_colours(tid for by_track in drawn.values() for tid in by_track)
    for name, dash in plotted:
        for tid, points in sorted(drawn[name].items()):
            points.sort()
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            # Tracks are named by the labels at their peaks, not in the legend: 15 legend rows
            # would squeeze the plot to nothing.
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=f"{name} · T{tid}", showlegend=False,
                line={"color": colours[tid], "dash": dash, "width": 4 if name == ENSEMBLE else 2},
                marker={"size": 5}, customdata=[[tid, x / fps] for x in xs],
                hovertemplate=f"{name} · track {tid}<br>frame %{{x}} (%{{customdata[1]:.2f}} s)<br>score %{{y:.3f}}<extra></extra>",
            ))
    for name, dash in plotted:  # the legend tells the series apart by line style
        if drawn[name]:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=name, hoverinfo="skip",
                                     line={"color": "#555", "dash": dash, "width": 4 if name == ENSEMBLE else 2}))
    # One label per drawn track, at its peak in one series, staggered upwards where labels would collide.
    labelled = label_series if label_series in drawn else next(
        (n for n in ([ENSEMBLE] + names) if n in drawn and drawn[n]), None)
    top_margin = 30.0
    if labelled is not None:
        peaks = [(tid, max(points, key=lambda p: (p[1], -p[0]))) for tid, points in sorted(drawn[labelled].items())]
        # The plot's height in px, under-estimated (every legend entry on its own row): labels
        # computed too close only move further apart.
        legend_rows = len(plotted) + sum(1 for kind in face_presence(review).values() if kind) + len(names)
        plot_px = max(60.0, height - 40 - AXIS_PX - LEGEND_ROW_PX * legend_rows)
        y_low = -0.1 - 0.05 * max(1, len(names))
        px_per_unit = plot_px / (1.02 - y_low)
        shifts = label_shifts([(float(x), float(y) - y_low) for _, (x, y) in peaks],
                              LABEL_WIDTH * max(1, review.total_frames), px_per_unit, LABEL_ROW_PX)
        for (tid, (x, y)), shift in zip(peaks, shifts):
            fig.add_annotation(x=x, y=y, text=f"T{tid}", showarrow=False, yshift=shift, yanchor="bottom",
                               font={"color": colours[tid], "size": 12}, bgcolor="rgba(255,255,255,0.8)",
                               name=f"label T{tid}")
            # Room above the plot for labels stacked over a high peak, so none is cut off.
            top_margin = max(top_margin, (float(y) - 1.02) * px_per_unit + shift + LABEL_ROW_PX + 4)
    # Band: on which analysed frames a face was found, so an inconclusive stretch shows where.
    presence = face_presence(review)
    n_analysed = len(review.frames_analysed)
    for kind, frames in presence.items():
        if not frames:
            continue
        colour, label = FACE_BAND[kind]
        fig.add_trace(go.Scatter(
            x=frames, y=[-0.04] * len(frames), mode="markers", name=f"{label} ({len(frames)} of {n_analysed} frames)",
            marker={"symbol": "square", "size": 6, "color": colour, "line": {"width": 0}},
            hovertemplate=f"frame %{{x}}<extra>{label}</extra>",
        ))
    # Rug: the frames each detector actually scored.
    for i, name in enumerate(names):
        used = review.detectors[name].frames_used
        fig.add_trace(go.Scatter(
            x=used, y=[-0.1 - 0.05 * i] * len(used), mode="markers", name=f"{name}: frames used",
            marker={"symbol": "line-ns-open", "size": 8, "color": "#444"}, hovertemplate="frame %{x}<extra>" + name + "</extra>",
        ))
    if current_frame is not None:
        fig.add_vline(x=current_frame, line_color="#111", line_width=1.5)
    fig.update_layout(
        height=height, margin={"l": 10, "r": 10, "t": round(top_margin), "b": 10},
        legend={"orientation": "h", "y": -0.25, "font": {"size": 10}},
        xaxis={"title": f"frame ({fps:g} fps)", "range": [-0.5, review.total_frames - 0.5]},
        yaxis={"title": "P(manipulated)", "range": [-0.1 - 0.05 * max(1, len(names)), 1.02]},
        clickmode="event+select", hovermode="closest",
    )
    return fig


def score_histogram(review: ReviewData, detector: str, threshold: float) -> go.Figure:
    """The distribution of a detector's per-frame scores on this video, against its threshold."""
    scores = list(series(review, detector).values())
    fig = go.Figure(go.Histogram(x=scores, xbins={"start": 0, "end": 1.0001, "size": 0.05}, marker_color="#4363d8",
                                 name="frame scores"))
    fig.add_vline(x=threshold, line_dash="dot", line_color="#d62728",
                  annotation_text=f"threshold {threshold:.2f}", annotation_position="top")
    above = sum(s >= threshold for s in scores)
    fig.update_layout(height=220, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis={"range": [0, 1], "title": "score"},
                      yaxis={"title": "face crops"}, showlegend=False,
                      title=f"{detector}: {above} of {len(scores)} face crops at or above the threshold")
    return fig


# -- comparing two videos side by side (the Compare page) -----------------------------------------
def compare_frame(time_s: float, fps: float, offset: int, total: int) -> int:
    """One side's frame at the comparison's shared time: the frame shown at time_s, moved by the
    side's offset in frames (to align two clips that start differently), kept within the file.

    >>> compare_frame(2.0, 25, 0, 250), compare_frame(2.0, 10, 3, 250), compare_frame(0.0, 25, -5, 250)
    (50, 23, 0)
    """
    return max(0, min(total - 1, int(round(time_s * fps)) + int(offset)))


def frame_difference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, bool]:
    """The absolute per-pixel difference of two RGB frames, b resized to a's size first when they differ.

    Returns:
        (difference as RGB uint8 of a's size, whether b was resized).
    """
    resized = a.shape[:2] != b.shape[:2]
    if resized:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    return cv2.absdiff(np.ascontiguousarray(a), np.ascontiguousarray(b)), resized


def headline(review: ReviewData) -> dict | None:
    """The series read first (see headline_series) with its stored status, score and threshold;
    None when nothing has been analysed."""
    if review.ensemble is not None and has_ensemble(review):
        e = review.ensemble
        return {"name": ENSEMBLE, "status": e["status"], "score": e["score"], "threshold": e["threshold"],
                "reason": None}
    if not review.detectors:
        return None
    name = headline_series(review) or next(iter(review.detectors))
    d = review.detectors[name]
    return {"name": name, "status": d.status, "score": d.score, "threshold": d.threshold, "reason": d.reason}


# -- a known ground truth on the timeline (the demo clip) ------------------------------------------
GROUND_TRUTH_LABEL = "ground truth: swapped (demo)"


def add_ground_truth(fig: go.Figure, frames: tuple[int, int] | None, label: str = GROUND_TRUTH_LABEL) -> go.Figure:
    """Shade a known manipulated frame range (inclusive) on a timeline figure, labelled; unchanged
    when no range is known. Only a truth the workbench itself generated belongs here (the demo's)."""
    if frames is None:
        return fig
    first, last = frames
    fig.add_vrect(x0=first - 0.5, x1=last + 0.5, fillcolor="#ff7f0e", opacity=0.18, line_width=0, layer="below",
                  annotation_text=label, annotation_position="top right")
    return fig


# -- time ranges and the filmstrip (issue 14) --------------------------------------------------------
RANGE_COLOUR = "#ff7f0e"


def shade_ranges(fig: go.Figure, ranges: list[tuple[int, int, str]], fps: float) -> go.Figure:
    """Shade time ranges on a timeline figure (frame axis), each labelled at its top left.

    Args:
        fig: a figure whose x axis is the frame number (timeline_figure).
        ranges: (first frame, last frame inclusive, label) per range; labels are the page's own
            words (e.g. "note 3"), never a user's text: plotly renders a subset of HTML in them.
        fps: the video's frame rate, for the times in each label.

    Returns:
        The same figure.
    """
    for first, last, label in ranges:
        a, b = sorted((int(first), int(last)))
        fig.add_vrect(x0=a - 0.5, x1=b + 0.5, fillcolor=RANGE_COLOUR, opacity=0.18, line_width=1,
                      line_color=RANGE_COLOUR, layer="below",
                      annotation_text=f"{label}: frames {a}–{b} ({a / fps:.2f}–{b / fps:.2f} s)",
                      annotation_position="top left", annotation_font_size=10)
    return fig


BAND_COLOURS = {"flagged": "#d62728", "uncertain": "#ff9f1c", "not flagged": "#2ca02c", None: "#9e9e9e"}


def filmstrip(review: ReviewData, detector: str | None, threshold: float | None, limit: int = 12) -> list[dict]:
    """Analysed frames to show as thumbnails (at most `limit`, evenly spread), each with its highest face score.

    Args:
        review: the stored results.
        detector: the series to read (a detector or ENSEMBLE); None: no scores, only frames.
        threshold: the operating threshold the band is read at.
        limit: the most thumbnails.

    Returns:
        [{"frame", "score" (the highest of its faces' scores, None where no face was scored),
          "band" (aggregate.band, None without a score), "colour"}], in frame order.
    """
    from workbench.aggregate import band  # lazy: kept in this appended section so edits of the module head do not collide

    frames = review.frames_analysed
    if limit < 1:
        raise ValueError("a filmstrip shows at least one frame")
    if len(frames) > limit:
        picks = np.unique(np.round(np.linspace(0, len(frames) - 1, limit)).astype(int))
        frames = [frames[i] for i in picks]
    scores: dict[int, float] = {}
    if detector is not None and (detector == ENSEMBLE or detector in review.detectors):
        for (frame, _), s in series(review, detector).items():
            scores[frame] = max(s, scores.get(frame, s))
    out = []
    for frame in frames:
        score = scores.get(frame)
        said = band(score, threshold)
        out.append({"frame": frame, "score": score, "band": said, "colour": BAND_COLOURS[said]})
    return out


def bordered_thumbnail(rgb: np.ndarray, colour: str, width: int = 128, border: int = 4) -> np.ndarray:
    """A frame shrunk to `width` pixels wide (aspect kept) inside a border of `colour` (#rrggbb)."""
    h, w = rgb.shape[:2]
    inner = max(1, width - 2 * border)
    small = cv2.resize(rgb, (inner, max(1, int(round(h * inner / w)))), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(small, border, border, border, border, cv2.BORDER_CONSTANT, value=_rgb(colour))
