"""Evaluation runs: labelled videos and still images in; per detector and for the ensemble ROC AUC, TPR at fixed FPR, the operating point, log loss and per-group rates out (JSON, HTML, store)."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import io
import json
import os
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from detectors.base import SCOPE_CAVEAT
from detectors.registry import UnknownDetector, default_detectors, get_detector
from workbench import config
from workbench.bias import (
    FPR_TARGETS, METRIC_RULES, MIN_GROUP_VIDEOS, Scored, detector_metrics, group_rates,
)
from workbench.evidence import EvidenceError, display_name, ingest, open_regular
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.store import Store, utc_now
from workbench.video import DEFAULT_LIMITS, Limits

LABELS = ("real", "fake")
MAX_LABELS_BYTES = 64 * 1024 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
STILL_IMAGES = (
    "A row whose path ends in .jpg, .jpeg or .png is a still image. It is decoded with Pillow (EXIF "
    "orientation applied, converted to RGB) and written losslessly as a one-frame video (FFV1 in Matroska, "
    "1 fps, bit-exact, so the same image always gives the same evidence sha256); that video is ingested and "
    "analysed like any other, with one change to the aggregation rule: a face track needs 1 scored frame "
    "instead of 3. The image's own sha256 is recorded next to the video's."
)


class LabelsError(Exception):
    """A labels file that cannot be used; the message says which line and why."""


def _read_labels_bytes(path: Path) -> bytes:
    try:
        with open_regular(path, MAX_LABELS_BYTES) as fh:
            return fh.read(MAX_LABELS_BYTES + 1)
    except EvidenceError as exc:
        raise LabelsError(f"{path.name}: {exc}") from exc


def read_labels(path: Path, allow_outside: bool = False) -> tuple[list[dict], list[str]]:
    """Rows of a labels CSV (`path,label` plus any group columns) and the group column names.

    Relative video paths are read relative to the CSV's folder. Every video path, once its
    symbolic links are resolved, must lie inside that folder unless `allow_outside` is true
    (the CLI's `--allow-outside`): a labels file from elsewhere cannot make the run read
    /dev/zero, a FIFO or any other file of this machine.

    Returns:
        ([{"path", "label", "groups", "line", "kind": "video" | "image"}], group column names)

    Raises:
        LabelsError: missing columns, a bad label, a path outside the folder, no rows, or the
            CSV itself is not a regular file.
    """
    path = Path(path)
    return _parse_labels(path, _read_labels_bytes(path), allow_outside)


def _parse_labels(path: Path, data: bytes, allow_outside: bool) -> tuple[list[dict], list[str]]:
    folder = Path(os.path.realpath(path.parent))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"{path.name}: not UTF-8 text (byte {exc.start})") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [f.strip() for f in reader.fieldnames or []]
    if "path" not in fields or "label" not in fields:
        raise LabelsError(f"{path.name}: needs the columns 'path' and 'label' (found: {', '.join(fields) or 'none'})")
    groups = [f for f in fields if f not in ("path", "label")]
    rows = []
    for line, row in enumerate(reader, start=2):
        label = (row.get("label") or "").strip().lower()
        if label not in LABELS:
            raise LabelsError(f"{path.name}, line {line}: label must be 'real' or 'fake', got {row.get('label')!r}")
        named = (row.get("path") or "").strip()
        if not named:
            raise LabelsError(f"{path.name}, line {line}: the path is empty")
        video = Path(named) if Path(named).is_absolute() else path.parent / named
        if not allow_outside:
            video = Path(os.path.realpath(video))
            if not video.is_relative_to(folder):
                raise LabelsError(f"{path.name}, line {line}: {named!r} lies outside the labels file's folder "
                                  f"({folder}); refused unless allowed (--allow-outside)")
        rows.append({"path": video, "label": label, "line": line,
                     "kind": "image" if video.suffix.lower() in IMAGE_SUFFIXES else "video",
                     "groups": {g: (row.get(g) or "").strip() for g in groups}})
    if not rows:
        raise LabelsError(f"{path.name}: no videos listed")
    return rows, groups


# -- still images ---------------------------------------------------------------------------------
def image_to_video(source: Path, out: Path, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Write a still image losslessly as a one-frame video (FFV1 in Matroska, 1 fps, bit-exact).

    The file is opened as `ingest` opens evidence (regular files only, size limit), its pixel count
    is checked against the limits before decoding, and the decoded RGB pixels are stored exactly.

    Returns:
        {"image_sha256", "width", "height"}

    Raises:
        EvidenceError: not a regular file, too large, or not a readable JPEG/PNG image.
        OSError: the file cannot be opened.
    """
    with open_regular(source, limits.max_file_bytes) as fh:
        data = fh.read(limits.max_file_bytes + 1)
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG", "PNG"]) as im:
            if im.width * im.height > limits.max_pixels:
                raise EvidenceError(f"image of {im.width}x{im.height} pixels is over the limit of {limits.max_pixels}")
            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise EvidenceError(f"not a readable JPEG or PNG image ({type(exc).__name__})") from exc
    # bitexact: no random segment id or encoder tag, so the same pixels give the same bytes (and
    # the same evidence sha256, so a second run reuses the stored analysis).
    with av.open(os.fspath(out), mode="w", format="matroska", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("ffv1", rate=Fraction(1))
        stream.width, stream.height = rgb.shape[1], rgb.shape[0]
        stream.pix_fmt = "bgr0"  # FFV1's lossless RGB layout
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"image_sha256": hashlib.sha256(data).hexdigest(), "width": int(rgb.shape[1]), "height": int(rgb.shape[0])}


def image_sampling(sampling: Sampling) -> Sampling:
    """The sampling for a one-frame video: as given, but a track needs 1 scored frame, not 3."""
    return dataclasses.replace(sampling, rule=dataclasses.replace(sampling.rule, min_frames=1))


def _ingest_row(row: dict, store: Store, evidence_dir: Path, actor: str, limits: Limits) -> dict:
    """Ingest one labelled file (a still image through its one-frame video); returns the evidence row."""
    if row["kind"] == "video":
        return dict(ingest(store, row["path"], row["path"].name, evidence_dir, actor=actor, limits=limits))
    name = display_name(row["path"].name)
    with tempfile.TemporaryDirectory(prefix="workbench-image-") as tmp:
        video = Path(tmp) / "still.mkv"
        try:
            facts = image_to_video(row["path"], video, limits)
        except EvidenceError as exc:
            store.audit(actor, "evidence.refused", f"upload:{name}", {"reason": str(exc)})
            raise
        evidence = dict(ingest(store, video, f"{name}.mkv", evidence_dir, actor=actor, limits=limits))
    return dict(evidence, **facts)


# -- the run --------------------------------------------------------------------------------------
def evaluate(
    labels_csv: Path, detector_names: list[str], store: Store, evidence_dir: Path, *, sampling: Sampling = Sampling(),
    actor: str = "local", device: str = "cpu", min_videos: int = MIN_GROUP_VIDEOS, progress=None,
    allow_outside: bool = False, limits: Limits = DEFAULT_LIMITS,
) -> dict:
    """Analyse every labelled video or image (reusing stored analyses) and measure each detector and the ensemble.

    Every file goes through `service.analyse_evidence`, as in the CLI and the app; the ensemble is
    the one that analysis stored (its rule, members and threshold). Paths must lie in the labels
    file's folder unless `allow_outside` (see `read_labels`); each must be a regular file.

    Returns:
        The report: dataset facts, `items` (every file with each detector's status and score and the
        ensemble's), per detector and for the ensemble `metrics` (see `bias.detector_metrics`) and per
        group column the output of `group_rates`, and the files that could not be used, with the reason.
    """
    labels_bytes = _read_labels_bytes(Path(labels_csv))
    rows, columns = _parse_labels(Path(labels_csv), labels_bytes, allow_outside)
    scored: dict[str, list[Scored]] = {name: [] for name in detector_names}
    ensemble_scored: list[Scored] = []
    items, refused = [], []
    ensemble_rule = None
    for i, row in enumerate(rows):
        if progress:
            progress(i, len(rows), str(row["path"].name))
        try:
            ev = _ingest_row(row, store, Path(evidence_dir), actor, limits)
            # The same entry point as the CLI and the app: custody is re-checked before the analysis.
            result = analyse_evidence(store, ev["sha256"], detector_names,
                                      image_sampling(sampling) if row["kind"] == "image" else sampling,
                                      actor=actor, device=device)
        except (EvidenceError, OSError) as exc:
            reason = str(exc) if isinstance(exc, EvidenceError) else f"cannot be opened ({exc.strerror or type(exc).__name__})"
            refused.append({"line": row["line"], "path": str(row["path"]), "kind": row["kind"], "reason": reason})
            continue
        item = {"line": row["line"], "name": row["path"].name, "kind": row["kind"], "label": row["label"],
                "groups": row["groups"], "sha256": ev["sha256"], "detectors": {}}
        if row["kind"] == "image":
            item["image_sha256"] = ev["image_sha256"]
        for name, outcome in result.detectors.items():
            scored[name].append(Scored(row["label"], row["groups"], outcome.status, outcome.score))
            item["detectors"][name] = {"status": outcome.status, "score": outcome.score, "reason": outcome.reason}
        ens = result.ensemble
        ensemble_rule = ens["rule"]
        ensemble_scored.append(Scored(row["label"], row["groups"], ens["status"], ens["score"], ens["threshold"]))
        item["ensemble"] = {"status": ens["status"], "score": ens["score"], "threshold": ens["threshold"],
                            "members": ens["members"], "ensemble_id": ens.get("ensemble_id")}
        items.append(item)
    if progress:
        progress(len(rows), len(rows), "")
    report = {
        "kind": "evaluation", "created_at": utc_now(), "dataset": Path(labels_csv).name,
        "labels_sha256": hashlib.sha256(labels_bytes).hexdigest(),
        "videos": len(rows), "images": sum(r["kind"] == "image" for r in rows), "refused": refused,
        "group_columns": columns, "min_videos": min_videos,
        "sampling": sampling.to_dict(), "image_sampling": image_sampling(sampling).to_dict(),
        "still_images": STILL_IMAGES, "metric_rules": METRIC_RULES, "caveat": SCOPE_CAVEAT,
        "items": items, "detectors": {},
    }
    for name in detector_names:
        det = get_detector(name)
        report["detectors"][name] = _section(scored[name], columns, det.threshold, min_videos,
                                             version=det.version, threshold=det.threshold)
    thresholds = sorted({v.threshold for v in ensemble_scored if v.status == "ok" and v.threshold is not None})
    report["ensemble"] = _section(
        ensemble_scored, columns, None, min_videos, version=None, rule=ensemble_rule, members=list(detector_names),
        # One number when every scored video had the same threshold; else the range, and each video
        # was judged against its own stored threshold (the mean of the members that scored it).
        threshold=thresholds[0] if len(thresholds) == 1 else None,
        threshold_range=[thresholds[0], thresholds[-1]] if thresholds else None,
        threshold_rule="each video's stored ensemble threshold: the mean of the operating thresholds of the "
                       "members that scored it",
    )
    return report


def _section(videos: list[Scored], columns: list[str], judged_at: float | None, min_videos: int, **facts) -> dict:
    """One detector's (or the ensemble's) part of the report; `judged_at` is the threshold for videos without their own."""
    return dict(
        facts,
        scored=sum(v.status == "ok" for v in videos), unscored=sum(v.status != "ok" for v in videos),
        real=sum(v.label == "real" for v in videos), fake=sum(v.label == "fake" for v in videos),
        metrics=detector_metrics(videos, judged_at),
        columns={c: group_rates(videos, c, judged_at, min_videos) for c in columns},
    )


def sections(report: dict) -> list[tuple[str, dict]]:
    """(name, section) for every detector of a report, then the ensemble."""
    out = list(report["detectors"].items())
    if report.get("ensemble"):
        out.append(("ensemble", report["ensemble"]))
    return out


# -- plain text -----------------------------------------------------------------------------------
def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _rate_text(rate: dict) -> str:
    if rate["value"] is None:
        return "n/a"
    return f"{rate['value']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}] ({rate['k']}/{rate['n']})"


def threshold_text(section: dict) -> str:
    """The operating threshold of a section as text (a range for an ensemble whose threshold varied)."""
    if section.get("threshold") is not None:
        return f"{section['threshold']:.3f}"
    if section.get("threshold_range"):
        low, high = section["threshold_range"]
        return f"per video, {low:.3f}-{high:.3f}"
    return "n/a"


def summary_lines(section: dict) -> list[str]:
    """A detector's (or the ensemble's) headline figures as plain text lines."""
    m = section["metrics"]
    counts = "; ".join(
        f"{label}: " + (", ".join(f"{status} {n}" for status, n in sorted(m["status_counts"].get(label, {}).items())) or "none")
        for label in LABELS)
    auc = "n/a (needs scored real and fake videos)" if m["auc"] is None else (
        f"{m['auc']:.3f} [{m['auc_low']:.3f}, {m['auc_high']:.3f}] (bootstrap 95%)")
    tprs = ", ".join(f"{p['target']:.0%} FPR: {_num(p['tpr'])}" for p in m["tpr_at_fpr"])
    op = m["operating_point"]
    return [
        f"videos by status: {counts}",
        f"ROC AUC {auc}",
        f"TPR at {tprs}",
        f"at threshold {threshold_text(section)}: FPR {_rate_text(op['fpr'])}, TPR {_rate_text(op['tpr'])}",
        f"log loss {_num(m['log_loss'])} (clip 1e-15), {_num(m['log_loss_dfdc_clip'])} (clip [0.01, 0.99])",
    ]


# -- figures --------------------------------------------------------------------------------------
def _plain(text) -> str:
    """A label from a labels file made inert for plotly, which renders <a>, <b>, <br>... in text."""
    return html.escape(str(text), quote=True)


def rate_figure(rates: dict, title: str) -> go.Figure:
    """FPR and FNR per group with their Wilson 95% intervals (every label escaped for plotly)."""
    groups = list(rates["groups"])
    shown = [_plain(g) for g in groups]
    fig = go.Figure()
    for key, name, colour in (("fpr", "false-positive rate", "#d62728"), ("fnr", "false-negative rate", "#1f77b4")):
        values = [rates["groups"][g][key]["value"] for g in groups]
        lows = [rates["groups"][g][key]["low"] for g in groups]
        highs = [rates["groups"][g][key]["high"] for g in groups]
        fig.add_trace(go.Bar(
            x=shown, y=values, name=name, marker_color=colour,
            error_y={"type": "data", "symmetric": False,
                     "array": [(h - v) if v is not None else 0 for v, h in zip(values, highs)],
                     "arrayminus": [(v - lo) if v is not None else 0 for v, lo in zip(values, lows)]},
        ))
    fig.update_layout(title=_plain(title), barmode="group", yaxis={"title": "rate", "range": [0, 1]}, height=360,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def roc_figure(report: dict) -> go.Figure:
    """The ROC curve of every detector and the ensemble (video level), with the chance diagonal."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "#999"}))
    for name, section in sections(report):
        m = section["metrics"]
        if not m["roc"]:
            continue
        fig.add_trace(go.Scatter(x=[p["fpr"] for p in m["roc"]], y=[p["tpr"] for p in m["roc"]], mode="lines+markers",
                                 name=_plain(f"{name} (AUC {m['auc']:.3f})"), marker={"size": 4}))
    fig.update_layout(title="ROC (video level)", xaxis={"title": "false-positive rate", "range": [0, 1]},
                      yaxis={"title": "true-positive rate", "range": [0, 1]}, height=460,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def strip_figure(report: dict, name: str, section: dict) -> go.Figure:
    """Every scored video's score by label (points with a box), and the operating threshold."""
    fig = go.Figure()
    for label, colour in (("real", "#1f77b4"), ("fake", "#d62728")):
        points = [(it["ensemble"] if name == "ensemble" else it["detectors"].get(name) or {}, it)
                  for it in report["items"] if it["label"] == label]
        points = [(d["score"], it) for d, it in points if d.get("status") == "ok" and d.get("score") is not None]
        fig.add_trace(go.Box(
            y=[s for s, _ in points], x=[label] * len(points), name=label, boxpoints="all", jitter=0.6, pointpos=0,
            marker={"color": colour, "size": 5}, line={"width": 1},
            hovertext=[_plain(f"line {it['line']}: {it['name']}") for _, it in points], hoverinfo="y+text",
        ))
    if section.get("threshold") is not None:
        fig.add_hline(y=section["threshold"], line={"dash": "dash", "color": "#444"})
    fig.update_layout(title=_plain(f"{name}: scores by label"), yaxis={"title": "score", "range": [0, 1]},
                      showlegend=False, height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


# -- the report -----------------------------------------------------------------------------------
def report_html(report: dict) -> str:
    """A self-contained HTML page of an evaluation (plotly inlined once; every label escaped)."""
    esc = lambda v: html.escape(str(v), quote=True)  # noqa: E731
    figures_done = [False]

    def figure(fig: go.Figure) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=not figures_done[0])
        figures_done[0] = True
        return out

    images = report.get("images", 0)
    parts = [f"<h1>Evaluation: {esc(report['dataset'])}</h1>",
             f"<p>{esc(report['created_at'])} · {report['videos']} files ({images} still images) · labels sha256 "
             f"<code>{esc(report['labels_sha256'])}</code></p>",
             f"<p><strong>Caveat.</strong> {esc(report['caveat'])} Groups with fewer than {report['min_videos']} real "
             f"or fake videos are flagged: their rates say little.</p>"]
    if images:
        parts.append(f"<p><strong>Still images.</strong> {esc(report.get('still_images', STILL_IMAGES))}</p>")
    if report["refused"]:
        parts.append("<h2>Files not used</h2><ul>" + "".join(
            f"<li>line {r['line']}: {esc(r['path'])}: {esc(r['reason'])}</li>" for r in report["refused"]) + "</ul>")
    all_sections = sections(report)
    if all_sections:
        head = "".join(f"<th>TPR at {t:.0%} FPR</th>" for t in FPR_TARGETS)
        rows = []
        for name, d in all_sections:
            m = d["metrics"]
            auc = "—" if m["auc"] is None else f"{m['auc']:.3f} [{m['auc_low']:.3f}, {m['auc_high']:.3f}]"
            op = m["operating_point"]
            counts = "<br>".join(
                f"{label}: " + esc(", ".join(f"{s} {n}" for s, n in sorted(m["status_counts"].get(label, {}).items())) or "none")
                for label in LABELS)
            tprs = "".join(f"<td>{_num(p['tpr'])}</td>" for p in m["tpr_at_fpr"])
            rows.append(f"<tr><td>{esc(name)}</td><td>{esc(threshold_text(d))}</td><td>{m['n_real']}</td><td>{m['n_fake']}</td>"
                        f"<td>{auc}</td>{tprs}<td>{esc(_rate_text(op['fpr']))}</td><td>{esc(_rate_text(op['tpr']))}</td>"
                        f"<td>{_num(m['log_loss'])}</td><td>{_num(m['log_loss_dfdc_clip'])}</td><td>{counts}</td></tr>")
        parts.append(
            "<h2>Detectors and the ensemble</h2><table><tr><th>detector</th><th>threshold</th><th>real scored</th>"
            f"<th>fake scored</th><th>ROC AUC [bootstrap 95%]</th>{head}<th>FPR at threshold [Wilson 95%]</th>"
            "<th>TPR at threshold [Wilson 95%]</th><th>log loss (clip 1e-15)</th><th>log loss (clip [0.01, 0.99])</th>"
            "<th>files by status</th></tr>" + "".join(rows) + "</table>")
        parts.append("<h3>How each figure is computed</h3><ul>" + "".join(
            f"<li><strong>{esc(k)}</strong>: {esc(v)}</li>" for k, v in report.get("metric_rules", METRIC_RULES).items())
            + "</ul>")
        if any(d["metrics"]["roc"] for _, d in all_sections):
            parts.append(figure(roc_figure(report)))
        else:
            parts.append("<p>No ROC curve: it needs scored real and fake files.</p>")
        for name, d in all_sections:
            parts.append(figure(strip_figure(report, name, d)))
    for name, d in all_sections:
        version = f" v{esc(d['version'])}" if d.get("version") else ""
        parts.append(f"<h2>{esc(name)}{version}: per group</h2><p>threshold {esc(threshold_text(d))}; "
                     f"{d['scored']} scored, {d['unscored']} not scored (inconclusive, unavailable or error)</p>")
        for column, rates in d["columns"].items():
            parts.append(figure(rate_figure(rates, f"{name}: {column}")))
            rows = []
            for g, r in rates["groups"].items():
                def cell(x):
                    return "—" if x["value"] is None else f"{x['value']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"
                ratio = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
                rows.append(f"<tr><td>{esc(g)}</td><td>{r['n_real']}</td><td>{r['n_fake']}</td><td>{r['n_unscored']}</td>"
                            f"<td>{esc(_auc_text(r))}</td>"
                            f"<td>{cell(r['tpr'])}</td><td>{cell(r['fpr'])}</td><td>{cell(r['fnr'])}</td>"
                            f"<td>{ratio(r['fpr_ratio_to_best'])}</td><td>{ratio(r['fnr_ratio_to_best'])}</td>"
                            f"<td>{esc('; '.join(r['warnings']))}</td></tr>")
            gap = rates["equalised_odds_gap"]
            parts.append(
                f"<h3>{esc(column)}</h3><p>equalised-odds gap: {'—' if gap is None else f'{gap:.3f}'}</p>"
                "<table><tr><th>group</th><th>real</th><th>fake</th><th>not scored</th><th>ROC AUC [95% bootstrap]</th><th>TPR [95% CI]</th>"
                "<th>FPR [95% CI]</th><th>FNR [95% CI]</th><th>FPR ÷ best</th><th>FNR ÷ best</th><th>warnings</th></tr>"
                + "".join(rows) + "</table>")
    style = ("body{font:15px/1.5 system-ui,sans-serif;max-width:1200px;margin:auto;padding:20px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}table{border-collapse:collapse}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation: {esc(report['dataset'])}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def _auc_text(group: dict) -> str:
    # Reports stored before groups carried an AUC have no key: say so rather than fail.
    auc, interval = group.get("auc"), group.get("auc_interval")
    if auc is None:
        return "n/a (needs scored real and fake videos)" if "auc" in group else "not computed"
    return f"{auc:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write evaluation.json and evaluation.html into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "evaluation.json", out_dir / "evaluation.html"
    json_path.write_text(json.dumps(report, indent=1))
    html_path.write_text(report_html(report))
    return json_path, html_path


def _progress_bar():
    bar = None

    def update(done: int, total: int, name: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="evaluate", unit="file", file=sys.stderr, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def run_cli(args) -> int:
    """`python -m workbench evaluate --labels LABELS.csv [--detector NAME]... [--out DIR]` (and its alias `bias`)."""
    names = args.detector or default_detectors()
    try:
        for name in names:
            get_detector(name)
        store = Store(args.db or config.db_path())
        report = evaluate(Path(args.labels), names, store, Path(args.evidence_dir or config.evidence_dir()),
                          sampling=Sampling(sample_fps=args.sample_fps), actor=args.actor, device=config.device(),
                          min_videos=args.min_videos, allow_outside=args.allow_outside, limits=config.limits(),
                          progress=None if getattr(args, "quiet", False) else _progress_bar())
    except (UnknownDetector, LabelsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or config.home() / "evaluations" / report["created_at"].replace(":", "-"))
    json_path, html_path = write_report(report, out)
    run_id = store.save_evaluation(report, str(json_path), str(html_path), args.actor)
    print(f"{report['dataset']}: {report['videos']} files ({report['images']} still images), "
          f"{len(report['refused'])} not used")
    for name, d in sections(report):
        version = f" v{d['version']}" if d.get("version") else ""
        print(f"{name}{version}: {d['scored']} of {report['videos']} scored, threshold {threshold_text(d)}")
        for line in summary_lines(d):
            print(f"  {line}")
        for column, rates in d["columns"].items():
            gap = rates["equalised_odds_gap"]
            print(f"  {column}: equalised-odds gap {_num(gap)}")
            for group, r in rates["groups"].items():
                print(f"    {group!r}: FPR {_rate_text(r['fpr'])}, FNR {_rate_text(r['fnr'])}, AUC {_auc_text(r)}"
                      + (f"  [{'; '.join(r['warnings'])}]" if r["warnings"] else ""))
    print(f"stored as evaluation {run_id}; wrote {json_path} and {html_path}")
    return 0
