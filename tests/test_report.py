"""The case report: one self-contained, escaped HTML file with evidence, results, notes and caveats."""
from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import stat

import cv2
import numpy as np
import pytest

from detectors.base import SCOPE_CAVEAT
from workbench import __version__
from workbench import report as report_mod
from workbench.evidence import ingest
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.report import case_report
from workbench.store import Store

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
AUTHOR = '"onmouseover="alert(1)'
PLOTLY_JS = re.compile(r'<script id="plotly-js">.*?</script>', re.S)


def without_plotly_js(doc: str) -> str:
    """The document with the one inline plotly.js bundle cut out (its code mentions URLs it never loads here)."""
    return PLOTLY_JS.sub("<script>/* plotly.js */</script>", doc)


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def evidence_section(doc: str, index: int) -> str:
    start = doc.index(f'<section class="evidence" id="evidence-{index}">')
    return doc[start : doc.index("</section>", start)]


@pytest.fixture(scope="module")
def case(tmp_path_factory, tiny_detectors, broken_detectors, two_face_clip, no_face_clip):
    """A case with two evidence files, analysed, with an edited note, two verdicts and hostile strings."""
    tmp = tmp_path_factory.mktemp("report")
    store = Store(":memory:")
    case_id = store.create_case(f"Case {SCRIPT}", description=f"Described {IMG} & more", actor="ann")
    clip, _ = two_face_clip
    faces = ingest(store, clip, f"{IMG}interview.mp4", tmp / "evidence", actor="ann", case_id=case_id)
    empty = ingest(store, no_face_clip, "no_face.mp4", tmp / "evidence", actor="ann", case_id=case_id)
    analyse_evidence(store, faces["sha256"], ["tiny-test", "tiny-missing"], Sampling(sample_fps=2))
    analyse_evidence(store, empty["sha256"], ["tiny-test"], Sampling(sample_fps=2))
    # A detector whose weights were missing when it was run: stored as unavailable, with a reason, no score.
    store.save_analysis(
        {"sha256": faces["sha256"], "face_run_id": None, "detector": "ghost-detector", "detector_version": "3",
         "weights_sha256": None, "params_key": "x", "params": {}, "software": {}, "status": "unavailable",
         "reason": "not installed: ghost.safetensors; install with `python -m workbench weights install ghost`",
         "score": None, "threshold": 0.5, "rule": None, "frames_used": [], "timings": {}},
        {}, [], actor="ann",
    )
    note_id = store.add_note(case_id, f"first look {SCRIPT}", "ann", sha256=faces["sha256"], frame=12, time_s=1.2, track_id=1)
    store.edit_note(note_id, f"second look {IMG}", AUTHOR)
    store.set_verdict(case_id, "inconclusive", f"reason one {SCRIPT}", "ann")
    store.set_verdict(case_id, "likely authentic", f"reason two {IMG}", "bob")
    doc = case_report(store, case_id, actor="exporter")
    (tmp / "report.html").write_text(doc, encoding="utf-8")
    yield {"store": store, "case_id": case_id, "faces": faces, "empty": empty, "doc": doc, "note_id": note_id}
    store.close()


def test_report_has_evidence_detectors_notes_verdicts_and_caveats(case):
    doc, store, faces = case["doc"], case["store"], case["faces"]
    assert doc.startswith("<!DOCTYPE html>") and doc.rstrip().endswith("</html>")
    assert __version__ in doc
    first = evidence_section(doc, 1)
    probe = faces["probe"]
    assert faces["sha256"] in first and f"{faces['size']} bytes" in first
    for fact in (f"<td>{probe['frames']}</td>", f"{probe['fps']} fps", f"{probe['width']} × {probe['height']} px",
                 f"{probe['duration_s']} s", f"<td>{probe['codec']}</td>", esc(probe["container"]), f"{probe['rotation']}°"):
        assert fact in first, fact
    assert "verified" in first and "HASH MISMATCH" not in doc
    (analysis,) = [a for a in store.analyses(faces["sha256"]) if a["detector"] == "tiny-test"]
    assert "tiny-test" in first and f"<td>{analysis['detector_version']}</td>" in first
    assert analysis["weights_sha256"] in first and f"{analysis['score']:.3f}" in first
    assert f"<td>{len(analysis['frames_used'])}</td>" in first
    # The scope caveat: at the top, next to every score table, and in the closing caveats.
    caveat = esc(SCOPE_CAVEAT)
    assert doc.index(caveat) < doc.index('<section class="evidence"')
    score_tables = [m.start() for m in re.finditer(r'<table class=""><thead><tr><th>Detector</th>', doc)]
    assert len(score_tables) == 3  # detectors and per-track scores of the clip, detectors of the no-face clip
    for start in score_tables:
        assert doc[:start].endswith("</p>") and caveat in doc[doc.rindex('<p class="caveat">', 0, start) : start]
    assert caveat in doc[doc.index('id="cards"') : doc.index('<div class="card">')]
    assert "not evidence on their own" in doc[doc.index('id="caveats"'):]
    # Notes: the latest version with its full history; verdicts newest first.
    assert esc(f"first look {SCRIPT}") in doc and esc(f"second look {IMG}") in doc
    assert "Version history (2)" in doc and "frame 12" in doc and "1.20 s" in doc and "track T1" in doc
    verdicts = doc[doc.index('id="verdicts"'):]
    assert verdicts.index(esc(f"reason two {IMG}")) < verdicts.index(esc(f"reason one {SCRIPT}"))
    assert "(current)" in verdicts and "likely authentic" in verdicts and "inconclusive" in verdicts
    # Model card of the registered detector; an unregistered one says its card is missing.
    assert "Random-init test model; its scores mean nothing." in doc
    assert "not registered on the machine that made the report" in doc
    audit = doc[doc.index('id="audit"'):]
    assert "verdict.set" in audit and "note.edit" in audit
    # The audit history was verified before the export; its head hash is shown near the top.
    header = doc[: doc.index("<main>")]
    assert "History verified" in header and "BROKEN" not in doc
    head = re.search(r"entries, head <span class=\"hash\">([0-9a-f]{64})</span>", header).group(1)
    (head_id,) = store.conn.execute("SELECT id FROM audit WHERE hash = ?", [head]).fetchone()
    assert store.conn.execute("SELECT action FROM audit WHERE id = ?", [head_id + 1]).fetchone()[0] == "case.report"


def test_user_strings_appear_only_escaped(case):
    doc = case["doc"]
    for payload in (SCRIPT, IMG, AUTHOR):
        assert payload not in doc
    assert esc(f"Case {SCRIPT}") in doc[: doc.index("</title>")]
    assert f"<h1>{esc(f'Case {SCRIPT}')}</h1>" in doc
    assert esc(f"Described {IMG} & more") in doc
    assert esc(f"{IMG}interview.mp4") in evidence_section(doc, 1)
    assert esc(AUTHOR) in doc
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    # Outside plotly.js, the only scripts are the config line and the charts.
    rest = without_plotly_js(doc)
    assert rest.count("<script") == 2 + 2
    assert "onerror=" not in rest.replace("onerror=alert(1)&gt;", "")


def test_report_is_self_contained(case):
    doc = case["doc"]
    assert doc.count('<script id="plotly-js">') == 1
    assert len(re.findall(r"\* plotly\.js v\d", doc)) == 1  # the library once, for two timelines
    assert doc.count('class="plotly-graph-div"') == 2
    rest = without_plotly_js(doc)
    for bad in ('src="http', "src='http", 'href="http', "href='http", "//cdn", '<link rel="stylesheet"', "<link",
                "@import", "url(", "<iframe", 'src="//'):
        assert bad not in rest, bad
    assert "<style>" in rest
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', rest)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', rest))
    # Key frames are real PNGs of the frame, at most max_key_frames of them, with Grad-CAM.
    first = evidence_section(doc, 1)
    assert 1 <= first.count('class="keyframe"') <= 6
    frame_src = re.search(r'<img class="frame"[^>]*src="data:image/png;base64,([^"]+)"', first).group(1)
    png = cv2.imdecode(np.frombuffer(base64.b64decode(frame_src), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (case["faces"]["probe"]["height"], case["faces"]["probe"]["width"], 3)
    assert "Grad-CAM of tiny-test v1" in first and "Exact model input (64×64 px" in first
    assert first.count('alt="heatmap in place on the frame"') == first.count('class="keyframe"')


def test_non_ok_detectors_show_status_and_reason_never_a_score(case):
    doc = case["doc"]
    first, second = evidence_section(doc, 1), evidence_section(doc, 2)
    row = re.search(r"<tr><td><strong>ghost-detector</strong></td>.*?</tr>", first).group(0)
    assert "unavailable" in row and "not installed: ghost.safetensors" in row
    cells = re.findall(r"<td>(.*?)</td>", row)
    # Columns: detector, version, status, band, video score: a failure has no band and no number.
    assert cells[3] == "—" and cells[4].startswith("no score") and not re.search(r"\d\.\d{3}", cells[4])
    assert "tiny-missing (unavailable)" in first  # left out of the stored ensemble, by name
    row = re.search(r"<tr><td><strong>tiny-test</strong></td>.*?</tr>", second).group(0)
    assert "inconclusive" in row and "no face found at any scale (down to 25 px) in" in row
    cells = re.findall(r"<td>(.*?)</td>", row)
    # Columns: detector, version, status, band, video score: a failure has no band and no number.
    assert cells[3] == "—" and cells[4].startswith("no score") and not re.search(r"\d\.\d{3}", cells[4])
    assert 'class="keyframe"' not in second and "No key frames" in second
    assert "tiny-test (inconclusive)" in second


def test_export_is_audited_with_the_report_hash(case):
    store, case_id = case["store"], case["case_id"]
    entry = next(e for e in store.audit_log(f"case:{case_id}") if e["action"] == "case.report")
    assert entry["actor"] == "exporter"
    assert entry["details"]["report_sha256"] == hashlib.sha256(case["doc"].encode("utf-8")).hexdigest()


def test_heatmaps_off_and_fewer_key_frames(case):
    doc = case_report(case["store"], case["case_id"], with_heatmaps=False, max_key_frames=1)
    first = evidence_section(doc, 1)
    assert first.count('class="keyframe"') == 1
    assert "Grad-CAM" not in first and 'class="heatmaps"' not in first


def test_detector_that_cannot_be_loaded_skips_heatmaps_with_a_note(case, monkeypatch):
    monkeypatch.setattr(report_mod, "_registered", lambda name: None)
    doc = case_report(case["store"], case["case_id"], max_key_frames=1)
    first = evidence_section(doc, 1)
    assert first.count('class="keyframe"') == 1 and 'class="heatmaps"' not in first
    assert "Grad-CAM of tiny-test skipped: tiny-test is not registered on this machine" in first
    assert "No heatmap for this face" in first


def test_tampered_evidence_is_flagged_not_shown(tmp_path, tiny_detectors, two_face_clip):
    store = Store(":memory:")
    case_id = store.create_case("tamper")
    clip, _ = two_face_clip
    ev = ingest(store, clip, "clip.mp4", tmp_path / "evidence", case_id=case_id)
    analyse_evidence(store, ev["sha256"], ["tiny-test"], Sampling(sample_fps=2))
    path = ev["stored_path"]
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    with open(path, "r+b") as fh:
        fh.seek(ev["size"] // 2)
        byte = fh.read(1)
        fh.seek(ev["size"] // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    doc = case_report(store, case_id)
    first = evidence_section(doc, 1)
    assert "HASH MISMATCH" in first and "INTEGRITY FAILURE" in first and "Key frames withheld" in first
    assert "FAILED its integrity check" in doc[: doc.index("<main>")]
    assert 'class="keyframe"' not in doc and "data:image/png" not in without_plotly_js(doc)
    assert "tiny-test" in first  # stored results are still reported, under the warning
    assert any(e["action"] == "evidence.mismatch" for e in store.audit_log(f"evidence:{ev['sha256']}"))
    store.close()


def test_case_without_evidence_and_unknown_case(fresh_store):
    from workbench.store import StoreError

    case_id = fresh_store.create_case("empty")
    doc = case_report(fresh_store, case_id)
    assert "This case has no evidence" in doc and "No notes." in doc and "No verdict has been recorded" in doc
    assert 'id="plotly-js"' not in doc  # no timeline, so no plotly.js either
    with pytest.raises(StoreError):
        case_report(fresh_store, case_id + 1)
