"""The bias evaluation run: labelled videos in, per-detector per-group rates out (JSON, HTML, store)."""
from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import sys
from pathlib import Path

import plotly.graph_objects as go

from detectors.base import SCOPE_CAVEAT
from detectors.registry import UnknownDetector, default_detectors, get_detector
from workbench import config
from workbench.bias import MIN_GROUP_VIDEOS, Scored, group_rates
from workbench.evidence import EvidenceError, ingest, open_regular
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.store import Store, utc_now

LABELS = ("real", "fake")
MAX_LABELS_BYTES = 64 * 1024 * 1024


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
        rows.append({"path": video, "label": label,
                     "groups": {g: (row.get(g) or "").strip() for g in groups}, "line": line})
    if not rows:
        raise LabelsError(f"{path.name}: no videos listed")
    return rows, groups


def evaluate(
    labels_csv: Path, detector_names: list[str], store: Store, evidence_dir: Path, *, sampling: Sampling = Sampling(),
    actor: str = "local", device: str = "cpu", min_videos: int = MIN_GROUP_VIDEOS, progress=None,
    allow_outside: bool = False,
) -> dict:
    """Analyse every labelled video (reusing stored analyses) and compute per-group rates.

    Video paths must lie in the labels file's folder unless `allow_outside` (see `read_labels`);
    each must be a regular file (`ingest` refuses devices and FIFOs before reading a byte).

    Returns:
        The report: dataset facts, per detector and group column the output of group_rates,
        and the videos that could not be used (refused input) with the reason.
    """
    labels_bytes = _read_labels_bytes(Path(labels_csv))
    rows, columns = _parse_labels(Path(labels_csv), labels_bytes, allow_outside)
    scored: dict[str, list[Scored]] = {name: [] for name in detector_names}
    refused = []
    for i, row in enumerate(rows):
        if progress:
            progress(i, len(rows), str(row["path"].name))
        try:
            ev = ingest(store, row["path"], row["path"].name, evidence_dir, actor=actor)
            # The same entry point as the CLI and the app: custody is re-checked before the analysis.
            result = analyse_evidence(store, ev["sha256"], detector_names, sampling, actor=actor, device=device)
        except (EvidenceError, OSError) as exc:
            reason = str(exc) if isinstance(exc, EvidenceError) else f"cannot be opened ({exc.strerror or type(exc).__name__})"
            refused.append({"line": row["line"], "path": str(row["path"]), "reason": reason})
            continue
        for name, outcome in result.detectors.items():
            scored[name].append(Scored(row["label"], row["groups"], outcome.status, outcome.score))
    report = {
        "created_at": utc_now(), "dataset": Path(labels_csv).name,
        "labels_sha256": hashlib.sha256(labels_bytes).hexdigest(),
        "videos": len(rows), "refused": refused, "group_columns": columns, "min_videos": min_videos,
        "sampling": sampling.to_dict(), "caveat": SCOPE_CAVEAT, "detectors": {},
    }
    for name in detector_names:
        det = get_detector(name)
        videos = scored[name]
        report["detectors"][name] = {
            "version": det.version, "threshold": det.threshold,
            "scored": sum(v.status == "ok" for v in videos), "unscored": sum(v.status != "ok" for v in videos),
            "real": sum(v.label == "real" for v in videos), "fake": sum(v.label == "fake" for v in videos),
            "columns": {c: group_rates(videos, c, det.threshold, min_videos) for c in columns},
        }
    return report


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


def report_html(report: dict) -> str:
    """A self-contained HTML page of a bias report (plotly inline; every label escaped)."""
    esc = lambda v: html.escape(str(v), quote=True)  # noqa: E731
    parts = [f"<h1>Bias evaluation: {esc(report['dataset'])}</h1>",
             f"<p>{esc(report['created_at'])} · {report['videos']} videos · labels sha256 <code>{esc(report['labels_sha256'])}</code></p>",
             f"<p><strong>Caveat.</strong> {esc(report['caveat'])} Groups with fewer than {report['min_videos']} real "
             f"or fake videos are flagged: their rates say little.</p>"]
    if report["refused"]:
        parts.append("<h2>Videos not used</h2><ul>" + "".join(
            f"<li>line {r['line']}: {esc(r['path'])}: {esc(r['reason'])}</li>" for r in report["refused"]) + "</ul>")
    js_included = False
    for name, d in report["detectors"].items():
        parts.append(f"<h2>{esc(name)} v{esc(d['version'])}</h2><p>threshold {d['threshold']:.3f}; "
                     f"{d['scored']} scored, {d['unscored']} not scored (inconclusive, unavailable or error)</p>")
        for column, rates in d["columns"].items():
            fig = rate_figure(rates, f"{name}: {column}")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=not js_included))
            js_included = True
            rows = []
            for g, r in rates["groups"].items():
                def cell(x):
                    return "—" if x["value"] is None else f"{x['value']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"
                ratio = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
                rows.append(f"<tr><td>{esc(g)}</td><td>{r['n_real']}</td><td>{r['n_fake']}</td><td>{cell(r['tpr'])}</td>"
                            f"<td>{cell(r['fpr'])}</td><td>{cell(r['fnr'])}</td><td>{ratio(r['fpr_ratio_to_best'])}</td>"
                            f"<td>{ratio(r['fnr_ratio_to_best'])}</td><td>{esc('; '.join(r['warnings']))}</td></tr>")
            gap = rates["equalised_odds_gap"]
            parts.append(
                f"<h3>{esc(column)}</h3><p>equalised-odds gap: {'—' if gap is None else f'{gap:.3f}'}</p>"
                "<table><tr><th>group</th><th>real</th><th>fake</th><th>TPR [95% CI]</th><th>FPR [95% CI]</th>"
                "<th>FNR [95% CI]</th><th>FPR ÷ best</th><th>FNR ÷ best</th><th>warnings</th></tr>" + "".join(rows) + "</table>")
    style = "body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:auto;padding:20px}td,th{border:1px solid #ccc;padding:3px 6px}table{border-collapse:collapse}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Bias evaluation</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write report.json and report.html into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "bias_report.json", out_dir / "bias_report.html"
    json_path.write_text(json.dumps(report, indent=1))
    html_path.write_text(report_html(report))
    return json_path, html_path


def run_cli(args) -> int:
    """`python -m workbench bias --labels LABELS.csv [--detector NAME]... [--out DIR]`."""
    names = args.detector or default_detectors()
    try:
        for name in names:
            get_detector(name)
        store = Store(args.db or config.db_path())
        report = evaluate(Path(args.labels), names, store, Path(args.evidence_dir or config.evidence_dir()),
                          sampling=Sampling(sample_fps=args.sample_fps), actor=args.actor, device=config.device(),
                          min_videos=args.min_videos, allow_outside=args.allow_outside)
    except (UnknownDetector, LabelsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or config.home() / "bias" / report["created_at"].replace(":", "-"))
    json_path, html_path = write_report(report, out)
    store.save_bias_report(report, str(html_path), args.actor)
    for name, d in report["detectors"].items():
        print(f"{name}: {d['scored']} of {report['videos']} videos scored, threshold {d['threshold']:.3f}")
        for column, rates in d["columns"].items():
            gap = rates["equalised_odds_gap"]
            print(f"  {column}: equalised-odds gap {'n/a' if gap is None else f'{gap:.3f}'}")
            for group, r in rates["groups"].items():
                fpr = r["fpr"]["value"]
                fnr = r["fnr"]["value"]
                print(f"    {group!r}: FPR {'n/a' if fpr is None else f'{fpr:.3f}'}, FNR {'n/a' if fnr is None else f'{fnr:.3f}'}"
                      + (f"  [{'; '.join(r['warnings'])}]" if r["warnings"] else ""))
    print(f"wrote {json_path} and {html_path}")
    return 0
