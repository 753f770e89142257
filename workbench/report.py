"""Export a case as one self-contained HTML report (summary first, caveat once, JPEG key frames, a report hash on every printed page) and print it to PDF."""
from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from detectors.base import CARD_FIELDS, SCOPE_CAVEAT
from detectors.registry import UnknownDetector, get_detector
from explain.gradcam import explain
from workbench import __version__
from workbench.aggregate import (
    BAND_RULE, ENSEMBLE_RULES, ENSEMBLE_THRESHOLD_RULE, band, band_text, measured_fpr, score_rules, video_lines,
)
from workbench.cases import listed_evidence
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
    has_ensemble,
    headline_series,
    load_review,
    series,
    threshold_for,
    timeline_figure,
    track_colour,
)
from workbench.store import Store, utc_now
from workbench.video import FrameReader

# Key frames are JPEGs no wider than this (about the width of an A4 page at 130 dpi; the caption says when
# a frame was scaled); the heatmap placed on the frame is smaller still, its crop beside it is full size.
FRAME_MAX_WIDTH = 960
HEATMAP_FRAME_MAX_WIDTH = 640
JPEG_QUALITY = 82
CROP_JPEG_QUALITY = 92  # the model-input crops are tiny and shown enlarged: keep their detail
AUDIT_EXCERPT = 60
TIMELINE_SIZE = (700, 360)  # px: fits the printable width of an A4 page, so screen and print draw the same chart

# The report hash. Every place that shows it holds REPORT_HASH_SLOT while the document is built; the
# hash is the sha256 of the UTF-8 document with 64 zeros (ZERO_HASH) in those places. So anyone can
# check it: replace the 64-hex hash shown in the report by 64 zeros wherever it occurs, hash the bytes.
REPORT_HASH_SLOT = "<!--report-sha256-->"  # escaped user text can never contain "<"
ZERO_HASH = "0" * 64
REPORT_HASH_META = re.compile(r'<meta name="report-sha256" content="([0-9a-f]{64})">')
DEFAULT_CHROMIUM = "/usr/bin/chromium"
PDF_TIMEOUT_MS = 120_000

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
table.summary td.num { white-space: nowrap; }
.muted { color: var(--muted); }
.caveat { border-left: 8px solid #d97706; background: var(--note-bg); padding: 8px 12px; margin: .8em 0; }
.caveat ul { margin: .3em 0 0; padding-left: 1.2em; font-size: .92em; }
.caveat-ref { font-size: .85em; color: var(--muted); margin: .3em 0; }
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
.heatmaps figure { flex: 0 0 auto; } .heatmaps figure.onframe { flex: 1 1 300px; }
.heatmaps img.crop { width: 160px; height: 160px; image-rendering: pixelated; }
.heatmaps img.onframe { max-width: 100%; height: auto; }
figcaption { font-size: .85em; color: var(--muted); }
.swatch { display: inline-block; width: .9em; height: .9em; border-radius: 2px; vertical-align: -.1em;
          print-color-adjust: exact; -webkit-print-color-adjust: exact; }
.timeline { min-height: 360px; }
.report-hash { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85em; }
nav ul { columns: 2; }
footer { margin-top: 3em; font-size: .85em; color: var(--muted); }
@page {
  size: A4; margin: 14mm 12mm 18mm;
  @bottom-left { content: "Report sha256 <!--report-sha256-->"; font: 6.5pt monospace; color: #586069; }
  @bottom-right { content: "page " counter(page) " of " counter(pages); font: 8pt sans-serif; color: #586069; }
}
@media print {
  body { max-width: none; padding: 0; font-size: 9.5pt; line-height: 1.35; }
  nav, .screen-only { display: none; }
  h1 { font-size: 16pt; } h2 { font-size: 13pt; margin-top: 0; } h4 { margin: .8em 0 .3em; }
  section.evidence, #cards, #notes { break-before: page; }
  table { font-size: 8pt; } th, td { padding: 2px 5px; }
  .note, tr, figure, .caveat, .history-ok, .heatmaps { break-inside: avoid; }
  h2, h3, h4, .caveat-ref { break-after: avoid; }
  .keyframe { padding: 6px 10px; margin: .5em 0; }
  .keyframe img.frame { max-height: 90mm; max-width: 100%; width: auto; }
  .heatmaps { flex-wrap: nowrap; gap: 3mm; }
  .heatmaps img.crop { width: 30mm; height: 30mm; }
  .heatmaps figure.onframe { flex: 1 1 auto; min-width: 0; }
  .heatmaps img.onframe { max-height: 60mm; width: auto; max-width: 100%; }
  a { color: inherit; text-decoration: none; }
  * { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
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


def _caveat_ref(extra: str = "") -> str:
    """A back-reference to the one caveat block at the top (the caveat itself is printed once)."""
    more = f" {esc(extra)}" if extra else ""
    return f'<p class="caveat-ref">Read with the <a href="#caveat">caveat at the top</a>.{more}</p>'


def _num(value, decimals: int = 3) -> str:
    """A number rounded for reading (at most `decimals` decimals, no trailing zeros); None becomes an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return esc(value)
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    return esc(text)


ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?Z?$")


def _when(value) -> str:
    """A stored UTC time to the second, for reading ("2026-12-02 03:29:40"); the store keeps it exact."""
    if value is None:
        return "—"
    found = ISO_TIME.match(str(value))
    return esc(f"{found.group(1)} {found.group(2)}" if found else value)


def _rounded(value):
    """JSON-like details with floats rounded to 3 decimals (for the audit excerpt's reading copy)."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def jpeg_data_uri(rgb: np.ndarray, max_width: int | None = None, quality: int = JPEG_QUALITY) -> str:
    """An RGB uint8 image as a data:image/jpeg;base64 URI (optionally scaled down to max_width)."""
    if max_width and rgb.shape[1] > max_width:
        h = max(1, round(rgb.shape[0] * max_width / rgb.shape[1]))
        rgb = cv2.resize(rgb, (max_width, h), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


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
    for line in video_lines(d.upstream):
        out += f"<br><span class=\"muted\">{esc(line)}</span>"
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
        if det.kind == "video":
            raise LookupError(f"{view.name} judges whole videos (its authors' tubes and clips): Grad-CAM is offered "
                              "for detectors that score one face crop at a time")
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
            f"{_when(d.created_at)}<br><span class=\"muted\">model time {esc(predict)}</span>",
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
        _caveat_ref("A status other than ok carries a reason and never a score.") + table
        + f'<p class="muted">Bands: {esc(BAND_RULE)}</p>'
        + ("<h4>Per-track scores</h4>" + tracks if tracks else "")
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
            f'<figure><img class="crop" alt="heatmap over the crop" src="{jpeg_data_uri(exp.overlay(), quality=CROP_JPEG_QUALITY)}">'
            f"<figcaption>Heatmap over the crop</figcaption></figure>"
            f'<figure><img class="crop" alt="exact model input" src="{jpeg_data_uri(exp.model_input, quality=CROP_JPEG_QUALITY)}">'
            f"<figcaption>Exact model input ({size}×{size} px, before normalisation)</figcaption></figure>"
            f'<figure class="onframe"><img class="onframe" alt="heatmap in place on the frame" '
            f'src="{jpeg_data_uri(det.place_heatmap(rgb, box_used, marks_used, exp.heatmap), HEATMAP_FRAME_MAX_WIDTH)}">'
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
    parts = [_caveat_ref(f"Boxes are labelled T<track> and the {series_name or 'detector'} score of that face on that frame.")]
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
            scaled = f", shown {FRAME_MAX_WIDTH} px wide" if rgb.shape[1] > FRAME_MAX_WIDTH else ""
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
                f'src="{jpeg_data_uri(drawn, FRAME_MAX_WIDTH)}">'
                f"<figcaption>Frame {key.frame} ({rgb.shape[1]}×{rgb.shape[0]} px{scaled}, JPEG); solid box: detected or tracked on an "
                f"analysed frame, dashed: interpolated between analysed frames.</figcaption></figure>"
                f"{table}{heat}</div>"
            )
    return "".join(parts)


# -- sections ----------------------------------------------------------------------------------------


@dataclass
class _Headline:
    """The result read first for one file: the stored ensemble when it combines detectors, else one detector."""

    label: str
    status: str
    score: float | None
    threshold: float | None
    reason: str | None
    evaluation_key: str


def headline_result(review: ReviewData) -> _Headline | None:
    """The file's headline result (None when no detector has analysed it).

    The stored ensemble when it combines two or more detectors; otherwise the first detector with an
    ok result, else the first detector with its status and reason (a failure never gets a number).
    """
    if has_ensemble(review):
        ens = review.ensemble
        return _Headline(f"ensemble ({ens['rule']}) of {', '.join(ens['members'])}", ens["status"],
                         ens["score"] if ens["status"] == "ok" else None, ens["threshold"], None, "ensemble")
    views = list(review.detectors.values())
    if not views:
        return None
    view = next((d for d in views if d.status == "ok"), views[0])
    return _Headline(f"{view.name} v{view.version}", view.status, view.score if view.status == "ok" else None,
                     view.threshold, view.reason, view.name)


def _file_verdict(verdicts: list[dict], sha: str) -> dict | None:
    """The analyst's current verdict on this one file (the newest recorded for it), or None."""
    return next((v for v in verdicts if v.get("sha256") == sha), None)


def _verdict_cell(verdict: dict | None, none: str = "none recorded for this file") -> str:
    if verdict is None:
        return f'<span class="muted">{esc(none)}</span>'
    return (f"<strong>{esc(verdict['verdict'])}</strong><br><span class=\"muted\">{esc(verdict['author'])}, "
            f"{_when(verdict['created_at'])} UTC</span>")


@dataclass
class _FileReport:
    """One evidence file's section of the report and its row of the summary table."""

    html: str
    verified: bool
    detectors: list[str]
    summary_row: list[str]


def _evidence_section(store: Store, case_id: int, index: int, row: dict, actor: str, with_heatmaps: bool,
                      max_key_frames: int, explainers: _Explainers, figures: list[str],
                      verdicts: list[dict]) -> _FileReport:
    """One evidence file's section (its summary first), and its row of the case's summary table."""
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
        check = f'<span class="status status-ok">verified</span> — re-hashed at {_when(utc_now())} UTC, matches'
        banner = ""
    else:
        check = f'<span class="status status-bad">HASH MISMATCH</span> — {esc(problem)}'
        banner = (f'<p class="alert">INTEGRITY FAILURE: the stored file no longer matches the sha256 recorded at intake. '
                  f"{esc(problem)}. Its frames are not shown. Results below were stored earlier and describe the "
                  f"file as it was when analysed.</p>")
    review = load_review(store, sha)
    evaluations = {n: store.latest_evaluation(n) for n in [*review.detectors, "ensemble"]}
    head = headline_result(review)
    if head is None:
        result, band_html, score_html, threshold_html = "not analysed", "—", "—", "—"
    else:
        result = esc(head.label)
        threshold_html = _num(head.threshold)
        if head.score is not None:
            band_html = _band_cell(head.score, head.threshold, evaluations.get(head.evaluation_key))
            score_html = f"<strong>{_fmt_score(head.score)}</strong>"
        else:
            band_html = "—"
            score_html = f"no score — {_status(head.status)}" + (f": {esc(head.reason)}" if head.reason else "")
    verdict = _verdict_cell(_file_verdict(verdicts, sha))
    integrity = '<span class="status status-ok">verified</span>' if verified else \
        '<span class="status status-bad">HASH MISMATCH</span>'
    name = esc(row["original_name"])
    summary_row = [f'<a href="#evidence-{index}">{index}</a>', f'{name}<br><span class="hash">{esc(sha)}</span>',
                   f"{result}<br>{band_html}", score_html, threshold_html, verdict, integrity]
    width, height = probe.get("width"), probe.get("height")
    facts = _facts([
        ("Headline result", result), ("Band", band_html), ("Score", score_html), ("Threshold", threshold_html),
        ("Analyst verdict", verdict),
        ("sha256", f'<span class="hash">{esc(sha)}</span>'),
        ("Integrity", check),
        ("Original name", f"{name} <span class=\"muted\">(as supplied; never used as a path)</span>"),
        ("Size", f"{esc(row['size'])} bytes"),
        ("Added", f"{_when(row['added_at'])} UTC by {esc(row['added_by'])}"),
        ("Frames", _num(probe.get("frames"))),
        ("Frame rate", f"{_num(probe.get('fps'))} fps"),
        ("Width × height", f"{esc(width)} × {esc(height)} px"),
        ("Duration", f"{_num(probe.get('duration_s'), 2)} s"),
        ("Codec", esc(probe.get("codec"))),
        ("Container", esc(probe.get("container"))),
        ("Rotation", f"{esc(probe.get('rotation'))}°"),
    ])
    timings = {a["id"]: a.get("timings") or {} for a in store.analyses(sha)}
    detectors_html, _ = _detector_section(review, timings, evaluations)
    others = len(timings) - len(review.detectors)
    if others > 0:
        detectors_html += (f'<p class="muted">{others} earlier or superseded analysis run(s) of this file are stored '
                           f"but not shown; the audit log lists them.</p>")
    timeline = '<p class="muted">No timeline: the file has not been analysed.</p>'
    if review.face_run_id is not None:
        # The threshold band of the series read first (the stored ensemble's threshold when there is one),
        # as the app's timeline draws it.
        fig = timeline_figure(review, threshold=threshold_for(review, headline_series(review)))
        width_px, height_px = TIMELINE_SIZE
        fig.update_layout(template="plotly_white", width=width_px, height=height_px, autosize=False)
        figures.append(sha)
        timeline = (
            _caveat_ref() + '<div class="timeline">'
            + fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"timeline-{index}",
                          config={"displaylogo": False, "responsive": False, "staticPlot": False},
                          default_width=f"{width_px}px", default_height=f"{height_px}px")
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
        f'<section class="evidence" id="evidence-{index}"><h2>Evidence {index}: {name}</h2>'
        f"{banner}<h4>File summary</h4>{facts}<h4>Detectors</h4>{detectors_html}<h4>Timeline</h4>{timeline}"
        f"<h4>Key frames</h4>{frames}</section>"
    )
    return _FileReport(body, verified, list(review.detectors), summary_row)


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
    if note.get("frame") is not None and note.get("frame_end") is not None:
        bits.append(f"frames {esc(note['frame'])}–{esc(note['frame_end'])}")
    elif note.get("frame") is not None:
        bits.append(f"frame {esc(note['frame'])}")
    if note.get("time_s") is not None and note.get("time_end_s") is not None:
        bits.append(f"{note['time_s']:.2f}–{note['time_end_s']:.2f} s")
    elif note.get("time_s") is not None:
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
            f'<li class="{"deleted" if v["deleted"] else "version"}">v{esc(v["version"])} · {_when(v["created_at"])} UTC · '
            f'{esc(v["author"])}{" (deleted)" if v["deleted"] else ""}<br><span class="text">{esc(v["text"])}</span></li>'
            for v in history
        )
        parts.append(
            f'<div class="note"><p><strong>Note {esc(note["note_id"])}</strong>{state} · v{esc(note["version"])} by '
            f'{esc(note["author"])} at {_when(note["created_at"])} UTC · on {_where(note, names)}</p>'
            f'<p class="text">{esc(note["text"])}</p>'
            f"<details open><summary>Version history ({len(history)})</summary><ol class=\"history\">{versions}</ol></details></div>"
        )
    return "".join(parts)


def _verdicts_section(verdicts: list[dict], names: dict[str, str]) -> str:
    """Every verdict, newest first; "(current)" marks the newest one per file and for the case as a whole."""
    if not verdicts:
        return '<p class="muted">No verdict has been recorded.</p>'
    rows, seen = [], set()
    for v in verdicts:
        subject = v.get("sha256")
        current = subject not in seen
        seen.add(subject)
        about = esc(names.get(subject, subject)) if subject else "the case as a whole"
        rows.append([_when(v["created_at"]) + (" <strong>(current)</strong>" if current else ""),
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
    rows = [[_when(e["at"]), esc(e["actor"]), f"<code>{esc(e['action'])}</code>", f'<span class="hash">{esc(e["subject"])}</span>',
             f'<span class="hash">{esc(json.dumps(_rounded(e["details"]), sort_keys=True))}</span>'] for e in latest]
    return (f'<p class="muted">The {len(latest)} most recent entries for this case and its evidence, newest first '
            f"(the full log stays in the case store; here figures are rounded to 3 decimals and times to the "
            f"second).</p>" + _table(["Time (UTC)", "Actor", "Action", "Subject", "Details"], rows))


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


def _caveat_block() -> str:
    """The one caveat block of the report, at the top; every result section refers back to it."""
    return (
        f'<div class="caveat" id="caveat"><p><strong>Read this first:</strong> {esc(SCOPE_CAVEAT)} {esc(NOT_EVIDENCE)}</p>'
        "<ul><li>Every detector has known biases and failure modes (for example with image quality, compression, "
        'lighting, skin tone, age and pose): see each <a href="#cards">model card</a>, and prefer the frames '
        "and the analyst's notes over a single number.</li>"
        f"<li>Bands: {esc(BAND_RULE)}</li>"
        "<li>Heatmaps show where a model's output was sensitive, not why, and not proof of manipulation.</li>"
        "<li>Only the frames listed as analysed were scored; grey bands on the timelines were not looked at.</li>"
        "<li>Results are tied to the exact detector version and weights sha256 shown; another version may score "
        "differently.</li></ul></div>"
    )


# -- the report hash --------------------------------------------------------------------------------


class ReportError(Exception):
    """A report cannot be verified or printed (the message says why and what to do)."""


def _seal(doc_with_slots: str) -> tuple[str, str]:
    """Fill the hash slots: returns (document, report sha256) as defined at REPORT_HASH_SLOT."""
    digest = hashlib.sha256(doc_with_slots.replace(REPORT_HASH_SLOT, ZERO_HASH).encode("utf-8")).hexdigest()
    return doc_with_slots.replace(REPORT_HASH_SLOT, digest), digest


def verify_report(doc: str) -> dict:
    """Check a report's own hash: the sha256 of the document with its shown hash replaced by 64 zeros.

    Args:
        doc: the report as exported (str, decoded from UTF-8).

    Returns:
        {"ok": bool, "claimed": the hash the report shows (None if it shows none), "computed": the recomputed hash}.
    """
    found = REPORT_HASH_META.search(doc)
    claimed = found.group(1) if found else None
    computed = hashlib.sha256((doc.replace(claimed, ZERO_HASH) if claimed else doc).encode("utf-8")).hexdigest()
    return {"ok": claimed is not None and computed == claimed, "claimed": claimed, "computed": computed}


# -- the report -------------------------------------------------------------------------------------


def case_report(store: Store, case_id: int, *, actor: str = "local", with_heatmaps: bool = True,
                max_key_frames: int = 6, include_archived: bool = False) -> str:
    """Render a case as one self-contained HTML document (no external resources; plotly.js inline once).

    The summary table comes first (one row per file: headline result, band, threshold, the analyst's
    verdict on that file, sha256), under the one caveat block that every result section refers back to.
    Every evidence file is re-hashed first; a mismatch is flagged in the report (and audited by
    `verify`) and that file's frames are withheld. The audit history is verified first too
    (`Store.verify_history`): the report says "History verified" with its head hash, or "History
    BROKEN at entry N" with the reason. Every user-supplied string is HTML-escaped. The report's own
    sha256 (see REPORT_HASH_SLOT; `verify_report` checks it) is shown at the top and, printed, on every
    page with the page number; the export is recorded in the audit log with that hash.

    Args:
        store: the case store.
        case_id: the case to export.
        actor: who exports it (recorded in the audit log).
        with_heatmaps: add Grad-CAM heatmaps of the top-scoring ok detector to key frames.
        max_key_frames: at most this many key frames per evidence file.
        include_archived: also report the files archived in this case (by default they are left out,
            and named with who archived them and why).

    Returns:
        The complete HTML document.

    Raises:
        StoreError: no case with this id.
    """
    case = store.case(case_id)
    history = _history_section(store.verify_history())
    generated = utc_now()
    listed = listed_evidence(store, case_id, include_archived=True)
    evidence = [e for e in listed if include_archived or not e["archived"]]
    left_out = [e for e in listed if e not in evidence]
    verdicts = store.verdicts(case_id)
    names = {e["sha256"]: e["original_name"] for e in listed}
    explainers = _Explainers()
    figures: list[str] = []
    files, failed, detector_names, versions = [], [], [], {}
    for i, row in enumerate(evidence, 1):
        part = _evidence_section(store, case_id, i, row, actor, with_heatmaps, max_key_frames, explainers, figures,
                                 verdicts)
        files.append(part)
        if not part.verified:
            failed.append(row)
        for a in store.analyses(row["sha256"]):
            if a["detector"] in part.detectors:
                versions.setdefault(a["detector"], set()).add(a["detector_version"])
        detector_names += [n for n in part.detectors if n not in detector_names]

    case_verdict = next((v for v in verdicts if not v.get("sha256")), None)
    alerts = "".join(
        f'<p class="alert">Evidence “{esc(r["original_name"])}” (<span class="hash">{esc(r["sha256"])}</span>) FAILED its '
        f"integrity check: the stored file no longer matches its recorded hash.</p>" for r in failed
    )
    alerts += "".join(
        f'<p class="muted">Archived in this case and left out of this report: “{esc(r["original_name"])}” '
        f'(<span class="hash">{esc(r["sha256"])}</span>), archived {_when(r["archived"]["at"])} UTC by '
        f'{esc(r["archived"]["actor"])}: {esc(r["archived"]["reason"])}</p>' for r in left_out)
    if files:
        summary = _table(["#", "File and sha256", "Headline result and band", "Score", "Threshold",
                          "Analyst verdict on this file", "Integrity"], [f.summary_row for f in files], "summary")
    else:
        summary = '<p class="muted">This case has no evidence.</p>'
    facts = _facts([
        ("Case", f"#{esc(case['id'])}, created {_when(case['created_at'])} UTC by {esc(case['created_by'])}"),
        ("Evidence files", f"{len(evidence)} ({len(evidence) - len(failed)} verified, {len(failed)} failed)"
                           + (f"; {len(left_out)} archived, left out" if left_out else "")),
        ("Verdict on the case as a whole", _verdict_cell(case_verdict, "none recorded (verdicts per file are above)")),
        ("Generated", f"{_when(generated)} UTC by {esc(actor)}"),
        ("Generator", f"deepfake-video analyst workbench {esc(__version__)}"),
        ("Report sha256", f'<span class="hash report-hash">{REPORT_HASH_SLOT}</span> <span class="muted">(check it with '
                          "<code>python -m workbench report verify FILE</code>)</span>"),
    ])
    nav = ('<nav><ul><li><a href="#summary">Summary</a></li>'
           + "".join(f'<li><a href="#evidence-{i}">Evidence {i}: {esc(r["original_name"])}</a></li>' for i, r in enumerate(evidence, 1))
           + '<li><a href="#cards">Model cards</a></li><li><a href="#notes">Notes</a></li>'
           '<li><a href="#verdicts">Verdict history</a></li><li><a href="#audit">Audit excerpt</a></li></ul></nav>')
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
<meta name="report-sha256" content="{REPORT_HASH_SLOT}">
<title>Case report: {esc(case['name'])}</title>
<style>{CSS}</style>
{plotly_js}
</head>
<body>
<header>
<p class="muted">Case report · generated {_when(generated)} UTC · workbench {esc(__version__)} ·
report sha256 <span class="report-hash">{REPORT_HASH_SLOT}</span></p>
<h1>{esc(case['name'])}</h1>
{description}
{_caveat_block()}
<section id="summary">
<h2 class="first">Summary</h2>
{summary}
{alerts}
{history}
{facts}
</section>
{nav}
</header>
<main>
{"".join(f.html for f in files)}
<section id="cards"><h2>Model cards</h2>
{_caveat_ref()}
{_cards_section(detector_names, versions)}</section>
<section id="notes"><h2>Notes</h2>
{_notes_section(store, case_id, names)}
<h2 id="verdicts">Verdict history</h2>
<p class="muted">Newest first; earlier verdicts are kept. "(current)" marks the newest verdict on each file and on
the case as a whole.</p>
{_verdicts_section(verdicts, names)}
<h2 id="audit">Audit excerpt</h2>
{_audit_section(store, case_id, list(names))}</section>
</main>
<footer>Self-contained report: every image and script is embedded; it opens offline. Generated {_when(generated)} UTC by
deepfake-video analyst workbench {esc(__version__)}. Report sha256 <span class="report-hash">{REPORT_HASH_SLOT}</span>:
the sha256 of this file's UTF-8 bytes with that hash replaced by 64 zeros wherever it appears.</footer>
</body>
</html>
"""
    doc, digest = _seal(doc)
    store.audit(actor, "case.report", f"case:{case_id}", {
        "report_sha256": digest, "bytes": len(doc.encode("utf-8")),
        "evidence": list(names), "failed_verification": [r["sha256"] for r in failed], "with_heatmaps": with_heatmaps,
    })
    return doc


# -- PDF --------------------------------------------------------------------------------------------


def chromium_path() -> str:
    """The Chromium that prints PDFs: WORKBENCH_CHROMIUM if set, else Debian's /usr/bin/chromium."""
    return os.environ.get("WORKBENCH_CHROMIUM") or DEFAULT_CHROMIUM


def html_to_pdf(doc: str, chromium: str | None = None) -> bytes:
    """Print a report to an A4 PDF with headless Chromium (the report's print stylesheet: page i of N
    and the report sha256 at the foot of every page). No network: every request is refused.

    Args:
        doc: the report HTML (self-contained).
        chromium: the Chromium binary (default: chromium_path()).

    Returns:
        The PDF's bytes.

    Raises:
        ReportError: no Chromium there, playwright missing, or printing failed.
    """
    path = chromium or chromium_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ReportError(
            f"PDF export needs Chromium and there is none at {path}: install Debian's chromium "
            "(`sudo bash scripts/install-browser.sh`) or set WORKBENCH_CHROMIUM to a Chromium binary. "
            "The HTML report needs no browser to build; print it from any Chromium-based browser instead.")
    try:
        from playwright.sync_api import Error as PlaywrightError
    except ImportError as exc:
        raise ReportError(f"PDF export needs the playwright package (requirements.txt): {exc}") from exc
    # In a thread of its own: playwright's sync API refuses a thread that runs an asyncio loop (a web
    # server's handler may), and a fresh thread never does.
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(_print_pdf, doc, path).result()
        except PlaywrightError as exc:
            raise ReportError(f"Chromium could not print the report: {exc}") from exc


def _print_pdf(doc: str, path: str) -> bytes:
    """The printing itself (see html_to_pdf): charts laid out at the A4 page's printable width."""
    from playwright.sync_api import sync_playwright

    width_px = round((210 - 2 * 12) / 25.4 * 96)  # A4 less the @page side margins, in CSS px
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": width_px, "height": 1100}, java_script_enabled=True)
            page.route("**/*", lambda route: route.abort())  # the report is self-contained: refuse any fetch
            page.set_content(doc, wait_until="load", timeout=PDF_TIMEOUT_MS)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.plotly-graph-div')].every(d => d.querySelector('.main-svg'))",
                timeout=PDF_TIMEOUT_MS)
            page.emulate_media(media="print")
            return page.pdf(prefer_css_page_size=True, print_background=True, display_header_footer=False)
        finally:
            browser.close()


def case_pdf(store: Store, case_id: int, doc: str, *, actor: str = "local") -> bytes:
    """Print a case's report (from case_report) to PDF and record the export in the audit log.

    The audit entry (`case.report.pdf`) holds the report sha256 printed on every page and the PDF's
    own sha256, so `python -m workbench report verify FILE.pdf` can find it.

    Raises:
        ReportError: the document is not an intact report of this case exported from this store, or it
            cannot be printed (see html_to_pdf).
    """
    checked = verify_report(doc)
    if not checked["ok"]:
        raise ReportError("this is not an intact workbench report: its report sha256 does not match its content")
    exported = find_export(store, report_sha256=checked["claimed"])
    if exported is None or exported["subject"] != f"case:{case_id}":
        raise ReportError(f"this report was not exported from case {case_id} of this database: build it first")
    pdf = html_to_pdf(doc)
    store.audit(actor, "case.report.pdf", f"case:{case_id}", {
        "report_sha256": checked["claimed"], "pdf_sha256": hashlib.sha256(pdf).hexdigest(), "bytes": len(pdf),
    })
    return pdf


def find_export(store: Store, *, report_sha256: str | None = None, pdf_sha256: str | None = None) -> dict | None:
    """The audit entry that recorded exporting this report (by its report sha256) or this PDF (by the
    file's sha256), newest first; None when this store never exported it."""
    action, key, value = ("case.report.pdf", "pdf_sha256", pdf_sha256) if pdf_sha256 else \
        ("case.report", "report_sha256", report_sha256)
    return next((e for e in store.audit_log(limit=1_000_000)
                 if e["action"] == action and (e["details"] or {}).get(key) == value), None)
