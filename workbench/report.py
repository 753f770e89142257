"""Export a case as one self-contained HTML file: evidence, detectors, timeline, key frames, notes, verdicts, caveats."""
from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import dataclass, field

import cv2
import numpy as np

from detectors.base import CARD_FIELDS, SCOPE_CAVEAT
from detectors.registry import UnknownDetector, get_detector
from explain.gradcam import explain
from workbench import __version__
from workbench.aggregate import BAND_RULE, ENSEMBLE_RULES, ENSEMBLE_THRESHOLD_RULE, band, band_text, measured_fpr, score_rules
from workbench.evidence import EvidenceError, verify
from workbench.pipeline import face_as_scored
from workbench.review import (
    AGREEMENT_NOTE,
    DetectorView,
    ReviewData,
    crossings,
    disagreements,
    draw_faces,
    faces_at,
    headline_series,
    load_review,
    series,
    threshold_for,
    timeline_figure,
    track_colour,
)
from workbench.store import Store, utc_now
from workbench.video import FrameReader

FRAME_MAX_WIDTH = 1280  # key frames wider than this are scaled down in the report (the caption says so)
AUDIT_EXCERPT = 60

NOT_EVIDENCE = (
    "Scores are a model's estimate, not evidence on their own: read them with the model cards, the frames "
    "themselves, the provenance of the file and other independent checks."
)

CSS = """
:root { --ink: #1b1f23; --muted: #586069; --line: #d0d7de; --warn: #b42318; --warn-bg: #fef3f2; --note-bg: #fffbeb; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; color: var(--ink);
       max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.7em; margin: 0 0 .2em; } h2 { border-bottom: 2px solid var(--line); padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.6em; } h4 { margin: 1.2em 0 .4em; }
code, .hash { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .88em; word-break: break-all; }
table { border-collapse: collapse; width: 100%; margin: .6em 0 1em; font-size: .92em; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } table.facts th { width: 12em; }
.muted { color: var(--muted); }
.caveat { border-left: 5px solid #d97706; background: var(--note-bg); padding: 8px 12px; margin: .8em 0; }
.caveat.top { font-size: 1.05em; border-width: 8px; }
.alert { border: 3px solid var(--warn); background: var(--warn-bg); color: var(--warn); padding: 10px 14px;
         font-weight: 600; margin: .8em 0; }
.history-ok { border-left: 5px solid #1a7f37; background: #f0fdf4; padding: 8px 12px; margin: .8em 0; }
.status { font-weight: 600; } .status-ok { color: #1a7f37; } .status-bad { color: var(--warn); }
.status-other { color: #9a6700; }
.note, .keyframe, .card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; margin: .8em 0; }
.history { margin: .4em 0 0 1em; font-size: .92em; }
.history li { margin: .3em 0; } .deleted { text-decoration: line-through; color: var(--muted); }
.text { white-space: pre-wrap; }
figure { margin: 0; }
.keyframe img.frame { max-width: 100%; height: auto; display: block; }
.heatmaps { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 8px; align-items: flex-start; }
.heatmaps figure { flex: 0 0 auto; } .heatmaps figure.onframe { flex: 1 1 360px; }
.heatmaps img.crop { width: 192px; height: 192px; image-rendering: pixelated; }
.heatmaps img.onframe { max-width: 100%; height: auto; }
figcaption { font-size: .85em; color: var(--muted); }
.swatch { display: inline-block; width: .9em; height: .9em; border-radius: 2px; vertical-align: -.1em; }
.timeline { min-height: 380px; }
nav ul { columns: 2; }
footer { margin-top: 3em; font-size: .85em; color: var(--muted); }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  nav { display: none; }
  h2 { break-before: page; } h2.first { break-before: avoid; }
  .keyframe, .note, .card, table, figure { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""


def esc(value) -> str:
    """HTML-escape any value (quotes too); None becomes an em dash."""
    if value is None:
        return "—"
    return html.escape(str(value), quote=True)


def _status(status: str | None) -> str:
    cls = "status-ok" if status == "ok" else "status-bad" if status in ("error", "unavailable") else "status-other"
    return f'<span class="status {cls}">{esc(status)}</span>'


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table from already-escaped cell HTML."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _facts(pairs: list[tuple[str, str]]) -> str:
    """A two-column facts table; values are already-escaped HTML."""
    return '<table class="facts"><tbody>' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</tbody></table>"


def _caveat(extra: str = "") -> str:
    return f'<p class="caveat"><strong>Scope:</strong> {esc(SCOPE_CAVEAT)}{(" " + esc(extra)) if extra else ""}</p>'


def png_data_uri(rgb: np.ndarray, max_width: int | None = None) -> str:
    """An RGB uint8 image as a data:image/png;base64 URI (optionally scaled down to max_width)."""
    if max_width and rgb.shape[1] > max_width:
        h = max(1, round(rgb.shape[0] * max_width / rgb.shape[1]))
        rgb = cv2.resize(rgb, (max_width, h), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _fmt_score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _rule_text(d: DetectorView) -> str:
    """Which rule made the video score (stored name and words), with the other rule's score as its explanation."""
    if not d.rule:
        return "—"
    said = score_rules(d.status, d.rule, d.upstream)
    out = f"<code>{esc(d.rule)}</code><br>{esc(said['headline'])}"
    if said["explanation"]:
        out += f"<br><span class=\"muted\">Explanation: {esc(said['explanation'])}</span>"
    return out


# -- detectors ---------------------------------------------------------------------------------------


def _registered(name: str):
    """The registered detector instance, or None when no detector has this name here."""
    try:
        return get_detector(name)
    except UnknownDetector:
        return None


@dataclass
class _Explainers:
    """Loads each detector once per report for Grad-CAM; remembers why one cannot be used."""

    loaded: dict = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def get(self, view: DetectorView):
        key = (view.name, view.version, view.weights_sha256)
        if key in self.loaded:
            return self.loaded[key]
        if key in self.refused:
            raise LookupError(self.refused[key])
        try:
            det = self._load(view)
        except LookupError as exc:
            self.refused[key] = str(exc)
            raise
        self.loaded[key] = det
        return det

    @staticmethod
    def _load(view: DetectorView):
        det = _registered(view.name)
        if det is None:
            raise LookupError(f"{view.name} is not registered on this machine")
        if det.version != view.version:
            raise LookupError(f"the registered {view.name} is version {det.version}, the score came from version {view.version}")
        weights = det.weights_status()
        if not weights.installed:
            raise LookupError(f"{view.name} cannot be loaded: {weights.detail}")
        try:
            det.model()
        except Exception as exc:  # WeightsUnavailable, WeightsError, a broken file
            raise LookupError(f"{view.name} cannot be loaded: {exc}") from exc
        if view.weights_sha256 and det.weights_sha256 != view.weights_sha256:
            raise LookupError(
                f"the installed weights of {view.name} ({det.weights_sha256}) are not the ones that produced the "
                f"score ({view.weights_sha256})"
            )
        return det


def _band_cell(score: float | None, threshold: float | None, evaluation: dict | None) -> str:
    """The band in words (with the FPR measured at that threshold, when measured) as escaped HTML."""
    said = band(score, threshold)
    if said is None:
        return "—"
    return f'<strong class="band band-{said.replace(" ", "-")}">{esc(band_text(score, threshold, measured_fpr(evaluation, threshold)))}</strong>'


def _detector_section(review: ReviewData, timings: dict[int, dict],
                      evaluations: dict[str, dict | None] | None = None) -> tuple[str, dict]:
    """The per-file results: each detector's band and score at its threshold, per-track scores, the ensemble.

    Args:
        evaluations: {detector or "ensemble": its latest stored evaluation}, for the FPR beside a band.
    """
    evaluations = evaluations or {}
    views = list(review.detectors.values())
    if not views:
        return '<p class="muted">No detector has analysed this file yet.</p>', {}
    rows = []
    for d in views:
        if d.status == "ok":
            above = _band_cell(d.score, d.threshold, evaluations.get(d.name))
            score = f"<strong>{_fmt_score(d.score)}</strong>"  # bold like the band beside it, which comes first
        else:
            score = f"no score — {_status(d.status)}: {esc(d.reason)}"
            above = "—"
        t = timings.get(d.analysis_id) or {}
        predict = f"{t['predict_s']:.2f} s" if isinstance(t.get("predict_s"), (int, float)) else "—"
        rows.append([
            f"<strong>{esc(d.name)}</strong>", esc(d.version), _status(d.status), above, score,
            esc("—" if d.threshold is None else f"{d.threshold:.3f}"),
            _rule_text(d), f'<span class="hash">{esc(d.weights_sha256)}</span>', esc(len(d.frames_used)),
            f"{esc(d.created_at)}<br><span class=\"muted\">model time {esc(predict)}</span>",
        ])
    table = _table(["Detector", "Version", "Status", "Band at the operating threshold", "Video score", "Threshold",
                    "Aggregation rule", "Weights sha256", "Frames used", "Analysed at (UTC)"], rows)
    track_rows = []
    for d in views:
        for tid, t in sorted(d.track_scores.items()):
            value = _fmt_score(t.get("score")) if t.get("status") == "ok" else f"no score — {_status(t.get('status'))}: {esc(t.get('reason'))}"
            track_rows.append([esc(d.name), f'<span class="swatch" style="background:{track_colour(tid)}"></span> T{esc(tid)}',
                               esc(t.get("n_frames")), value])
    tracks = _table(["Detector", "Track", "Frames scored", "Track score"], track_rows) if track_rows else ""
    # The ensemble stored with the analysis (the same one the app shows), never a recomputation.
    ens = review.ensemble
    if ens is None:
        ens_html = '<p class="muted">No ensemble was stored for this analysis run.</p>'
    else:
        left_out = ", ".join(f"{esc(n)} ({esc(st)})" for n, st in ens["left_out"].items()) or "none"
        ens_score = _fmt_score(ens["score"]) if ens["status"] == "ok" else f"no score — {_status(ens['status'])}"
        ens_band = _band_cell(ens["score"], ens["threshold"], evaluations.get("ensemble")) if ens["status"] == "ok" else "—"
        ens_html = _facts([
            ("Band", ens_band),
            ("Ensemble score", ens_score),
            ("Rule", esc(ENSEMBLE_RULES[ens["rule"]])),
            ("Threshold", esc("—" if ens["threshold"] is None else f"{ens['threshold']:.3f} ({ENSEMBLE_THRESHOLD_RULE})")),
            ("Members", esc(", ".join(ens["members"]) or "none")),
            ("Left out", left_out),
        ])
    for item in disagreements(review):
        listed = ", ".join(f"{esc(n)} {v:.3f}" for n, v in item["scores"].items())
        ens_html += f'<p class="alert">Detectors disagree strongly on track T{item["track"]} ({listed}).</p>'
    ens_html += f'<p class="muted">{esc(AGREEMENT_NOTE)}</p>'
    return (
        _caveat("A status other than ok carries a reason and never a score.") + table
        + f'<p class="muted">Bands: {esc(BAND_RULE)}</p>'
        + ("<h4>Per-track scores</h4>" + _caveat() + tracks if tracks else "")
        + "<h4>Ensemble</h4>" + ens_html,
        ens,
    )


# -- key frames --------------------------------------------------------------------------------------


@dataclass
class _KeyFrame:
    frame: int
    track: int | None
    reasons: list[str]


def pick_key_frames(review: ReviewData, max_key_frames: int) -> list[_KeyFrame]:
    """Each track's highest-scoring frame, then threshold crossings; first frames when nothing is scored."""
    name = headline_series(review)
    scores = series(review, name) if name else {}
    label = name or ""
    threshold = threshold_for(review, name)
    picked: dict[int, _KeyFrame] = {}

    def add(frame: int, track: int | None, reason: str) -> None:
        if frame in picked:
            picked[frame].reasons.append(reason)
        elif len(picked) < max_key_frames:
            picked[frame] = _KeyFrame(frame, track, [reason])

    if scores:
        by_track: dict[int, list[tuple[float, int]]] = {}
        for (frame, tid), s in scores.items():
            by_track.setdefault(tid, []).append((s, -frame))
        peaks = sorted(((max(v), tid) for tid, v in by_track.items()), reverse=True)
        for (s, neg_frame), tid in peaks:
            add(-neg_frame, tid, f"highest {label} score of track T{tid} ({s:.3f})")
        for i, frame in enumerate(crossings(review, name, threshold) if name else []):
            at = {tid: s for (f, tid), s in scores.items() if f == frame}
            tid = max(at, key=at.get) if at else None
            add(frame, tid, f"{'first ' if i == 0 else ''}{label} threshold crossing (to or from ≥ {threshold:.2f})")
    else:
        for tid, points in sorted(review.tracks.items()):
            detected = sorted(f for f, (_, det) in points.items() if det) or sorted(points)
            if detected:
                add(detected[0], tid, f"first frame of track T{tid} (no score)")
    return sorted(picked.values(), key=lambda k: k.frame)


def _explain_face(rgb: np.ndarray, review: ReviewData, key: _KeyFrame, box, explainers: _Explainers) -> str:

    marks = review.landmarks.get((key.track, key.frame))
    marks = None if marks is None else np.asarray(marks, np.float32)
    ok = [d for d in review.detectors.values() if d.status == "ok"]
    if not ok:
        return '<p class="muted">No heatmap: no detector has an ok result on this file.</p>'
    ok.sort(key=lambda d: (d.frame_scores.get((key.frame, key.track)) is not None,
                           d.frame_scores.get((key.frame, key.track)) or d.score or 0.0), reverse=True)
    notes = []
    for view in ok:
        try:
            det = explainers.get(view)
            as_scored = face_as_scored(det, rgb, box, marks)  # the box this detector itself cut from
            if as_scored is None:
                notes.append(f"Grad-CAM of {view.name} skipped: its own face finder found no face on track "
                             f"T{key.track} on this frame.")
                continue
            box_used, marks_used = as_scored
            crop = det.cut(rgb, box_used, marks_used)
            if crop is None:
                notes.append(f"Grad-CAM of {view.name} skipped: its input could not be cut for this face.")
                continue
            exp = explain(det, crop)
        except LookupError as exc:
            notes.append(f"Grad-CAM of {view.name} skipped: {exc}.")
            continue
        except Exception as exc:  # an explanation failing must not stop the report
            notes.append(f"Grad-CAM of {view.name} failed: {type(exc).__name__}: {exc}.")
            continue
        stored = view.frame_scores.get((key.frame, key.track))
        caption = (f"Grad-CAM of {view.name} v{view.version} for track T{key.track}: where the 'manipulated' output "
                   f"looked. Score recomputed on this decode: {exp.score:.3f}"
                   + (f" (stored: {stored:.3f})." if stored is not None else "."))
        note_html = "".join(f'<p class="muted">{esc(n)}</p>' for n in notes)
        size = crop.shape[0]
        return (
            note_html + f"<p>{esc(caption)}</p>" + '<div class="heatmaps">'
            f'<figure><img class="crop" alt="heatmap over the crop" src="{png_data_uri(exp.overlay())}">'
            f"<figcaption>Heatmap over the crop</figcaption></figure>"
            f'<figure><img class="crop" alt="exact model input" src="{png_data_uri(exp.model_input)}">'
            f"<figcaption>Exact model input ({size}×{size} px, before normalisation)</figcaption></figure>"
            f'<figure class="onframe"><img class="onframe" alt="heatmap in place on the frame" '
            f'src="{png_data_uri(det.place_heatmap(rgb, box_used, marks_used, exp.heatmap), FRAME_MAX_WIDTH)}">'
            f"<figcaption>Heatmap in place on the frame</figcaption></figure></div>"
        )
    return "".join(f'<p class="muted">{esc(n)}</p>' for n in notes) + '<p class="muted">No heatmap for this face.</p>'


def _key_frames_section(review: ReviewData, path, max_key_frames: int, with_heatmaps: bool,
                        explainers: _Explainers) -> str:
    keys = pick_key_frames(review, max_key_frames) if max_key_frames > 0 else []
    if not keys:
        return '<p class="muted">No key frames: no face was tracked in the analysed frames.</p>'
    series_name = headline_series(review)
    ok = [d for d in review.detectors.values() if d.status == "ok"]
    parts = [_caveat(f"Boxes are labelled T<track> and the {series_name or 'detector'} score of that face on that frame.")]
    with FrameReader(path) as reader:
        for key in keys:
            t = key.frame / review.fps if review.fps else 0.0
            try:
                rgb = reader.read(key.frame)
            except Exception as exc:  # a frame that cannot be decoded is reported, not fatal
                parts.append(f'<div class="keyframe"><p class="alert">Frame {key.frame} could not be decoded: {esc(exc)}</p></div>')
                continue
            faces = faces_at(review, key.frame, series_name)
            drawn = draw_faces(rgb, faces)
            scaled = " (scaled down)" if rgb.shape[1] > FRAME_MAX_WIDTH else ""
            rows = []
            for face in faces:
                per = [_fmt_score(d.frame_scores.get((key.frame, face.track_id))) if d.status == "ok" else "—" for d in ok]
                rows.append([f'<span class="swatch" style="background:{track_colour(face.track_id)}"></span> T{face.track_id}',
                             esc(face.kind), *[esc(p) for p in per], esc(_fmt_score(face.score))])
            table = _table(["Track", "Box", *[esc(d.name) for d in ok], esc(series_name or "score")], rows) if rows else ""
            heat = ""
            if with_heatmaps and key.track is not None:
                box = review.tracks.get(key.track, {}).get(key.frame, (None,))[0]
                if box is None:
                    box = next((f.box for f in faces if f.track_id == key.track), None)
                heat = (_explain_face(rgb, review, key, box, explainers) if box is not None
                        else '<p class="muted">No heatmap: the face has no box on this frame.</p>')
            parts.append(
                f'<div class="keyframe"><h4>Frame {key.frame} · {t:.2f} s</h4>'
                f'<p>{esc("; ".join(key.reasons))}</p>'
                f'<figure><img class="frame" alt="frame {key.frame} with face boxes" '
                f'src="{png_data_uri(drawn, FRAME_MAX_WIDTH)}">'
                f"<figcaption>Frame {key.frame} ({rgb.shape[1]}×{rgb.shape[0]}{scaled}); solid box: detected or tracked on an "
                f"analysed frame, dashed: interpolated between analysed frames.</figcaption></figure>"
                f"{table}{heat}</div>"
            )
    return "".join(parts)


# -- sections ----------------------------------------------------------------------------------------


def _evidence_section(store: Store, case_id: int, index: int, row: dict, actor: str, with_heatmaps: bool,
                      max_key_frames: int, explainers: _Explainers, figures: list[str]) -> tuple[str, bool, list[str]]:
    """One evidence file's section; returns (html, verified, detector names seen)."""
    sha = row["sha256"]
    probe = row["probe"] or {}
    verified, problem, path = False, "", None
    try:
        path = verify(store, sha, actor)
        verified = True
    except EvidenceError as exc:
        problem = str(exc)
    except OSError as exc:
        problem = f"the stored file could not be read to re-hash it: {exc}"
    if verified:
        check = f'<span class="status status-ok">verified</span> — re-hashed at {esc(utc_now())}, matches'
        banner = ""
    else:
        check = f'<span class="status status-bad">HASH MISMATCH</span> — {esc(problem)}'
        banner = (f'<p class="alert">INTEGRITY FAILURE: the stored file no longer matches the sha256 recorded at intake. '
                  f"{esc(problem)}. Its frames are not shown. Results below were stored earlier and describe the "
                  f"file as it was when analysed.</p>")
    width, height = probe.get("width"), probe.get("height")
    facts = _facts([
        ("Original name", f"{esc(row['original_name'])} <span class=\"muted\">(as supplied; never used as a path)</span>"),
        ("sha256", f'<span class="hash">{esc(sha)}</span>'),
        ("Integrity", check),
        ("Size", f"{esc(row['size'])} bytes"),
        ("Added", f"{esc(row['added_at'])} by {esc(row['added_by'])}"),
        ("Frames", esc(probe.get("frames"))),
        ("Frame rate", f"{esc(probe.get('fps'))} fps"),
        ("Width × height", f"{esc(width)} × {esc(height)} px"),
        ("Duration", f"{esc(probe.get('duration_s'))} s"),
        ("Codec", esc(probe.get("codec"))),
        ("Container", esc(probe.get("container"))),
        ("Rotation", f"{esc(probe.get('rotation'))}°"),
    ])
    review = load_review(store, sha)
    timings = {a["id"]: a.get("timings") or {} for a in store.analyses(sha)}
    detectors_html, _ = _detector_section(
        review, timings, {n: store.latest_evaluation(n) for n in [*review.detectors, "ensemble"]})
    others = len(timings) - len(review.detectors)
    if others > 0:
        detectors_html += (f'<p class="muted">{others} earlier or superseded analysis run(s) of this file are stored '
                           f"but not shown; the audit log lists them.</p>")
    timeline = '<p class="muted">No timeline: the file has not been analysed.</p>'
    if review.face_run_id is not None:
        # The threshold band of the series read first (the stored ensemble's threshold when there is one),
        # as the app's timeline draws it.
        fig = timeline_figure(review, threshold=threshold_for(review, headline_series(review)))
        fig.update_layout(template="plotly_white")
        figures.append(sha)
        timeline = (
            _caveat() + '<div class="timeline">'
            + fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"timeline-{index}",
                          config={"displaylogo": False, "responsive": True}, default_width="100%")
            + '</div><p class="muted">Grey bands: frames not analysed. Red band: at or above the threshold. '
              "Ticks below zero: the frames each detector scored.</p>"
        )
    if verified:
        try:
            frames = _key_frames_section(review, path, max_key_frames, with_heatmaps, explainers)
        except Exception as exc:  # a decoding problem is reported, it does not stop the export
            frames = f'<p class="alert">Key frames could not be rendered: {esc(type(exc).__name__)}: {esc(exc)}</p>'
    else:
        frames = '<p class="alert">Key frames withheld: the file failed its integrity check.</p>'
    body = (
        f'<section class="evidence" id="evidence-{index}"><h3>Evidence {index}: {esc(row["original_name"])}</h3>'
        f"{banner}{facts}<h4>Detectors</h4>{detectors_html}<h4>Timeline</h4>{timeline}"
        f"<h4>Key frames</h4>{frames}</section>"
    )
    return body, verified, list(review.detectors)


def _cards_section(names: list[str], versions: dict[str, set[str]]) -> str:
    if not names:
        return '<p class="muted">No detector has analysed the evidence of this case.</p>'
    parts = []
    fields = CARD_FIELDS
    for name in names:
        det = _registered(name)
        if det is None or det.card is None:
            parts.append(f'<div class="card"><h4>{esc(name)}</h4><p class="alert">This detector is not registered on '
                         f"the machine that made the report, so its model card is not available. Treat its results "
                         f"with extra caution.</p></div>")
            continue
        used = sorted(versions.get(name, set()))
        mismatch = ""
        if used and used != [det.version]:
            mismatch = (f'<p class="alert">This card is for version {esc(det.version)}; the results in this report '
                        f"came from version(s) {esc(', '.join(used))}.</p>")
        card = det.card.to_dict()
        parts.append(f'<div class="card"><h4>{esc(name)} <span class="muted">v{esc(det.version)}</span></h4>{mismatch}'
                     + _facts([(label, f'<span class="text">{esc(card.get(key))}</span>') for label, key in fields])
                     + "</div>")
    return "".join(parts)


def _where(note: dict, names: dict[str, str]) -> str:
    bits = []
    if note.get("sha256"):
        bits.append(f"evidence {esc(names.get(note['sha256'], ''))} (<span class=\"hash\">{esc(note['sha256'][:12])}…</span>)")
    if note.get("frame") is not None:
        bits.append(f"frame {esc(note['frame'])}")
    if note.get("time_s") is not None:
        bits.append(f"{note['time_s']:.2f} s")
    if note.get("track_id") is not None:
        bits.append(f"track T{esc(note['track_id'])}")
    return ", ".join(bits) or "the case as a whole"


def _notes_section(store: Store, case_id: int, names: dict[str, str]) -> str:
    notes = store.notes(case_id, include_deleted=True)
    if not notes:
        return '<p class="muted">No notes.</p>'
    parts = []
    for note in notes:
        history = store.note_history(note["note_id"])
        state = " <span class=\"status status-bad\">deleted</span>" if note["deleted"] else ""
        versions = "".join(
            f'<li class="{"deleted" if v["deleted"] else "version"}">v{esc(v["version"])} · {esc(v["created_at"])} · '
            f'{esc(v["author"])}{" (deleted)" if v["deleted"] else ""}<br><span class="text">{esc(v["text"])}</span></li>'
            for v in history
        )
        parts.append(
            f'<div class="note"><p><strong>Note {esc(note["note_id"])}</strong>{state} · v{esc(note["version"])} by '
            f'{esc(note["author"])} at {esc(note["created_at"])} · on {_where(note, names)}</p>'
            f'<p class="text">{esc(note["text"])}</p>'
            f"<details open><summary>Version history ({len(history)})</summary><ol class=\"history\">{versions}</ol></details></div>"
        )
    return "".join(parts)


def _verdicts_section(store: Store, case_id: int, names: dict[str, str]) -> str:
    verdicts = store.verdicts(case_id)
    if not verdicts:
        return '<p class="muted">No verdict has been recorded.</p>'
    rows = []
    for i, v in enumerate(verdicts):
        about = esc(names.get(v["sha256"], v["sha256"])) if v.get("sha256") else "the case"
        rows.append([esc(v["created_at"]) + (" <strong>(current)</strong>" if i == 0 else ""),
                     f"<strong>{esc(v['verdict'])}</strong>", f'<span class="text">{esc(v["reason"])}</span>',
                     esc(v["author"]), about])
    return _table(["Time (UTC)", "Verdict", "Reason", "Author", "About"], rows)


def _audit_section(store: Store, case_id: int, shas: list[str]) -> str:
    entries = {e["id"]: e for e in store.audit_log(f"case:{case_id}", AUDIT_EXCERPT)}
    for sha in shas:
        entries.update({e["id"]: e for e in store.audit_log(f"evidence:{sha}", AUDIT_EXCERPT)})
    latest = sorted(entries.values(), key=lambda e: e["id"], reverse=True)[:AUDIT_EXCERPT]
    if not latest:
        return '<p class="muted">No audit entries.</p>'
    rows = [[esc(e["at"]), esc(e["actor"]), f"<code>{esc(e['action'])}</code>", f'<span class="hash">{esc(e["subject"])}</span>',
             f'<span class="hash">{esc(json.dumps(e["details"], sort_keys=True))}</span>'] for e in latest]
    return (f'<p class="muted">The {len(latest)} most recent entries for this case and its evidence, newest first '
            f"(the full log stays in the case store).</p>" + _table(["Time (UTC)", "Actor", "Action", "Subject", "Details"], rows))


def _history_section(result: dict) -> str:
    """The audit history's verification, shown near the top: verified with its head hash, or broken."""
    if not result["ok"]:
        where = f" at entry {esc(result['broken_at'])}" if result["broken_at"] is not None else ""
        return (f'<p class="alert history history-broken">History BROKEN{where}: {esc(result["reason"])}. '
                "The facts in this report may have been changed outside the workbench.</p>")
    head = result["head"] or "none yet"
    return (f'<p class="history history-ok"><strong>History verified</strong> ({esc(result["entries"])} entries, '
            f'head <span class="hash">{esc(head)}</span>) before this export. The audit log is a hash chain that '
            "also records every score, name, note and verdict; keep the head hash elsewhere and check it later with "
            "<code>python -m workbench verify --expect-head HEAD</code>.</p>")


def case_report(store: Store, case_id: int, *, actor: str = "local", with_heatmaps: bool = True,
                max_key_frames: int = 6) -> str:
    """Render a case as one self-contained HTML document (no external resources; plotly.js inline once).

    Every evidence file is re-hashed first; a mismatch is flagged in the report (and audited by
    `verify`) and that file's frames are withheld. The audit history is verified first too
    (`Store.verify_history`): the report says "History verified" with its head hash, or "History
    BROKEN at entry N" with the reason. Every user-supplied string is HTML-escaped.
    The export itself is recorded in the audit log with the report's sha256.

    Args:
        store: the case store.
        case_id: the case to export.
        actor: who exports it (recorded in the audit log).
        with_heatmaps: add Grad-CAM heatmaps of the top-scoring ok detector to key frames.
        max_key_frames: at most this many key frames per evidence file.

    Returns:
        The complete HTML document.

    Raises:
        StoreError: no case with this id.
    """
    case = store.case(case_id)
    history = _history_section(store.verify_history())
    generated = utc_now()
    evidence = store.case_evidence(case_id)
    names = {e["sha256"]: e["original_name"] for e in evidence}
    explainers = _Explainers()
    figures: list[str] = []
    sections, failed, detector_names, versions = [], [], [], {}
    for i, row in enumerate(evidence, 1):
        body, ok, seen = _evidence_section(store, case_id, i, row, actor, with_heatmaps, max_key_frames, explainers, figures)
        sections.append(body)
        if not ok:
            failed.append(row)
        for a in store.analyses(row["sha256"]):
            if a["detector"] in seen:
                versions.setdefault(a["detector"], set()).add(a["detector_version"])
        detector_names += [n for n in seen if n not in detector_names]

    verdicts = store.verdicts(case_id)
    current = (f"<strong>{esc(verdicts[0]['verdict'])}</strong> — {esc(verdicts[0]['author'])}, {esc(verdicts[0]['created_at'])}"
               if verdicts else "none recorded")
    alerts = "".join(
        f'<p class="alert">Evidence “{esc(r["original_name"])}” (<span class="hash">{esc(r["sha256"])}</span>) FAILED its '
        f"integrity check: the stored file no longer matches its recorded hash.</p>" for r in failed
    )
    summary = _facts([
        ("Case", f"#{esc(case['id'])}, created {esc(case['created_at'])} by {esc(case['created_by'])}"),
        ("Evidence files", f"{len(evidence)} ({len(evidence) - len(failed)} verified, {len(failed)} failed)"),
        ("Current verdict", current),
        ("Generated", f"{esc(generated)} (UTC) by {esc(actor)}"),
        ("Generator", f"deepfake-video analyst workbench {esc(__version__)}"),
    ])
    nav = ('<nav><ul><li><a href="#evidence">Evidence and results</a></li>'
           + "".join(f'<li><a href="#evidence-{i}">Evidence {i}: {esc(r["original_name"])}</a></li>' for i, r in enumerate(evidence, 1))
           + '<li><a href="#cards">Model cards</a></li><li><a href="#notes">Notes</a></li>'
           '<li><a href="#verdicts">Verdict history</a></li><li><a href="#audit">Audit excerpt</a></li>'
           '<li><a href="#caveats">Caveats</a></li></ul></nav>')
    caveats = (
        f'<ul><li>{esc(SCOPE_CAVEAT)}</li><li>{esc(NOT_EVIDENCE)}</li>'
        "<li>Every detector has known biases and failure modes (for example with image quality, compression, "
        'lighting, skin tone, age and pose): see each <a href="#cards">model card</a>, and prefer the frames '
        "and the analyst's notes over a single number.</li>"
        "<li>Heatmaps show where a model's output was sensitive, not why, and not proof of manipulation.</li>"
        "<li>Only the frames listed as analysed were scored; grey bands on the timelines were not looked at.</li>"
        "<li>Results are tied to the exact detector version and weights sha256 shown; another version may score differently.</li></ul>"
    )
    plotly_js = ""
    if figures:
        from plotly.offline import get_plotlyjs

        plotly_js = ("<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
                     f'<script id="plotly-js">{get_plotlyjs()}</script>')
    description = (f'<p class="text">{esc(case["description"])}</p>' if case.get("description") else "")
    doc = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="deepfake-video analyst workbench {esc(__version__)}">
<title>Case report: {esc(case['name'])}</title>
<style>{CSS}</style>
{plotly_js}
</head>
<body>
<header>
<p class="muted">Case report · generated {esc(generated)} UTC · workbench {esc(__version__)}</p>
<h1>{esc(case['name'])}</h1>
{description}
<p class="caveat top"><strong>Read this first:</strong> {esc(SCOPE_CAVEAT)} {esc(NOT_EVIDENCE)}</p>
{history}
{alerts}
{summary}
{nav}
</header>
<main>
<h2 class="first" id="evidence">Evidence and results</h2>
{"".join(sections) or '<p class="muted">This case has no evidence.</p>'}
<h2 id="cards">Model cards</h2>
{_caveat()}
{_cards_section(detector_names, versions)}
<h2 id="notes">Notes</h2>
{_notes_section(store, case_id, names)}
<h2 id="verdicts">Verdict history</h2>
<p class="muted">Newest first; earlier verdicts are kept.</p>
{_verdicts_section(store, case_id, names)}
<h2 id="audit">Audit excerpt</h2>
{_audit_section(store, case_id, list(names))}
<h2 id="caveats">Caveats</h2>
{caveats}
</main>
<footer>Self-contained report: every image and script is embedded; it opens offline. Generated {esc(generated)} UTC by
deepfake-video analyst workbench {esc(__version__)}.</footer>
</body>
</html>
"""
    store.audit(actor, "case.report", f"case:{case_id}", {
        "report_sha256": hashlib.sha256(doc.encode("utf-8")).hexdigest(), "bytes": len(doc.encode("utf-8")),
        "evidence": list(names), "failed_verification": [r["sha256"] for r in failed], "with_heatmaps": with_heatmaps,
    })
    return doc
