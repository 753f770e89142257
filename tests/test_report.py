"""The case report: one self-contained, escaped HTML file with evidence, results, notes and caveats."""
from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from browser_support import in_ci, require_chromium
from detectors.base import SCOPE_CAVEAT
from detectors.registry import register, unregister
from tiny_detector import TinyDetector
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
OUTPUT = Path(__file__).resolve().parent.parent / "test-output" / "report"  # git-ignored via /test-output/


class TinyOddThreshold(TinyDetector):
    """A tiny detector whose operating threshold has every digit a float can carry (as a measured one does)."""

    name = "tiny-odd-threshold"
    threshold = 0.9451722502708436


def without_plotly_js(doc: str) -> str:
    """The document with the one inline plotly.js bundle cut out (its code mentions URLs it never loads here)."""
    return PLOTLY_JS.sub("<script>/* plotly.js */</script>", doc)


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def evidence_section(doc: str, index: int) -> str:
    start = doc.index(f'<section class="evidence" id="evidence-{index}">')
    return doc[start : doc.index("</section>", start)]


@pytest.fixture(scope="module")
def case(tmp_path_factory, tiny_detectors, broken_detectors, two_face_clip, no_face_clip, demo_clip):
    """A case with three generated clips, analysed, with an edited note, case and file verdicts and hostile strings."""
    tmp = tmp_path_factory.mktemp("report")
    store = Store(":memory:")
    case_id = store.create_case(f"Case {SCRIPT}", description=f"Described {IMG} & more", actor="ann")
    clip, _ = two_face_clip
    faces = ingest(store, clip, f"{IMG}interview.mp4", tmp / "evidence", actor="ann", case_id=case_id)
    empty = ingest(store, no_face_clip, "no_face.mp4", tmp / "evidence", actor="ann", case_id=case_id)
    analyse_evidence(store, faces["sha256"], ["tiny-test", "tiny-missing"], Sampling(sample_fps=2))
    analyse_evidence(store, empty["sha256"], ["tiny-test"], Sampling(sample_fps=2))
    swapped = ingest(store, demo_clip, "demo.mp4", tmp / "evidence", actor="ann", case_id=case_id)
    register(TinyOddThreshold)
    analyse_evidence(store, swapped["sha256"], ["tiny-test", TinyOddThreshold.name], Sampling(sample_fps=5))
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
    store.set_verdict(case_id, "likely manipulated", "the swap is visible", "cy", sha256=swapped["sha256"])
    store.set_verdict(case_id, "inconclusive", "first look", "cy", sha256=faces["sha256"])
    store.set_verdict(case_id, "likely authentic", "second look", "cy", sha256=faces["sha256"])
    doc = case_report(store, case_id, actor="exporter")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "three-clips.html").write_text(doc, encoding="utf-8")
    yield {"store": store, "case_id": case_id, "faces": faces, "empty": empty, "swapped": swapped, "doc": doc,
           "note_id": note_id}
    store.close()
    unregister(TinyOddThreshold.name)


def test_report_has_evidence_detectors_notes_verdicts_and_caveats(case):
    doc, store, faces = case["doc"], case["store"], case["faces"]
    assert doc.startswith("<!DOCTYPE html>") and doc.rstrip().endswith("</html>")
    assert __version__ in doc
    first = evidence_section(doc, 1)
    probe = faces["probe"]
    assert faces["sha256"] in first and f"{faces['size']} bytes" in first
    for fact in (f"<td>{probe['frames']}</td>", f"{probe['fps']:g} fps", f"{probe['width']} × {probe['height']} px",
                 f"{probe['duration_s']:g} s", f"<td>{probe['codec']}</td>", esc(probe["container"]), f"{probe['rotation']}°"):
        assert fact in first, fact
    assert "verified" in first and "HASH MISMATCH" not in doc
    (analysis,) = [a for a in store.analyses(faces["sha256"]) if a["detector"] == "tiny-test"]
    assert "tiny-test" in first and f"<td>{analysis['detector_version']}</td>" in first
    assert analysis["weights_sha256"] in first and f"{analysis['score']:.3f}" in first
    assert f"<td>{len(analysis['frames_used'])}</td>" in first
    # The scope caveat once, at the top; every score table, timeline and the model cards refer back to it.
    caveat = esc(SCOPE_CAVEAT)
    assert doc.count(caveat) == 1 and doc.index(caveat) < doc.index('<section class="evidence"')
    score_tables = [m.start() for m in re.finditer(r'<table class=""><thead><tr><th>Detector</th>', doc)]
    assert len(score_tables) == 5  # detectors and per-track scores of two clips, detectors of the no-face clip
    back_ref = re.compile(r'<p class="caveat-ref">Read with the <a href="#caveat">caveat at the top</a>\.[^<]*</p>$')
    assert back_ref.search(doc[: score_tables[0]])
    assert back_ref.search(doc[: doc.index('<div class="card">')])
    assert "not evidence on their own" in doc[: doc.index('id="summary"')]
    # Notes: the latest version with its full history; verdicts newest first.
    assert esc(f"first look {SCRIPT}") in doc and esc(f"second look {IMG}") in doc
    assert "Version history (2)" in doc and "frame 12" in doc and "1.20 s" in doc and "track T1" in doc
    verdicts = doc[doc.index('id="verdicts"'):]
    assert verdicts.index(esc(f"reason two {IMG}")) < verdicts.index(esc(f"reason one {SCRIPT}"))
    assert "likely authentic" in verdicts and "inconclusive" in verdicts
    # "(current)" marks the newest verdict on each file and on the case as a whole, nothing older.
    assert verdicts.count("<strong>(current)</strong>") == 3
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
    assert rest.count("<script") == 2 + 3
    assert "onerror=" not in rest.replace("onerror=alert(1)&gt;", "")


def test_report_is_self_contained(case):
    doc = case["doc"]
    assert doc.count('<script id="plotly-js">') == 1
    assert len(re.findall(r"\* plotly\.js v\d", doc)) == 1  # the library once, for three timelines
    assert doc.count('class="plotly-graph-div"') == 3
    rest = without_plotly_js(doc)
    for bad in ('src="http', "src='http", 'href="http', "href='http", "//cdn", '<link rel="stylesheet"', "<link",
                "@import", "url(", "<iframe", 'src="//'):
        assert bad not in rest, bad
    assert "<style>" in rest
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', rest)
    assert sources and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', rest))
    # Key frames are real JPEGs of the whole frame, at most max_key_frames of them, with Grad-CAM.
    first = evidence_section(doc, 1)
    assert 1 <= first.count('class="keyframe"') <= 6
    frame_src = re.search(r'<img class="frame"[^>]*src="data:image/jpeg;base64,([^"]+)"', first).group(1)
    jpeg = cv2.imdecode(np.frombuffer(base64.b64decode(frame_src), np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (case["faces"]["probe"]["height"], case["faces"]["probe"]["width"], 3)
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
    assert entry["details"]["report_sha256"] == report_mod.verify_report(case["doc"])["claimed"]


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
    assert 'class="keyframe"' not in doc and "data:image/" not in without_plotly_js(doc)
    assert "tiny-test" in first  # stored results are still reported, under the warning
    assert any(e["action"] == "evidence.mismatch" for e in store.audit_log(f"evidence:{ev['sha256']}"))
    store.close()


def test_archived_files_are_left_out_and_named_and_range_notes_keep_their_range(tmp_path, tiny_detectors,
                                                                                  two_face_clip, no_face_clip):
    store = Store(":memory:")
    case_id = store.create_case("archive")
    kept = ingest(store, two_face_clip[0], "kept.mp4", tmp_path / "evidence", case_id=case_id)
    wrong = ingest(store, no_face_clip, "wrong-upload.mp4", tmp_path / "evidence", case_id=case_id)
    store.archive("ana", "uploaded to the wrong case", case_id, wrong["sha256"])
    store.add_note(case_id, "seam flickers", "ana", sha256=kept["sha256"], frame=10, time_s=0.4, frame_end=20,
                   time_end_s=0.8)
    doc = case_report(store, case_id, with_heatmaps=False)
    assert len(summary_rows(doc)) == 1 and 'id="evidence-2"' not in doc
    head = visible_text(doc[: doc.index("<main>")])
    assert "left out of this report" in head and "wrong-upload.mp4" in head and "uploaded to the wrong case" in head
    assert "1 archived, left out" in head
    assert "frames 10–20" in visible_text(doc) and "0.40–0.80 s" in visible_text(doc)
    both = case_report(store, case_id, with_heatmaps=False, include_archived=True)
    assert len(summary_rows(both)) == 2 and "left out of this report" not in both
    store.close()


def test_case_without_evidence_and_unknown_case(fresh_store):
    from workbench.store import StoreError

    case_id = fresh_store.create_case("empty")
    doc = case_report(fresh_store, case_id)
    assert "This case has no evidence" in doc and "No notes." in doc and "No verdict has been recorded" in doc
    assert 'id="plotly-js"' not in doc  # no timeline, so no plotly.js either
    with pytest.raises(StoreError):
        case_report(fresh_store, case_id + 1)


# -- the analyst's report (#14): summary first, caveat once, rounded figures, verdicts per file, size ----------


def visible_text(doc: str) -> str:
    """What a reader sees: no scripts, no styles, no tags; entities decoded."""
    doc = re.sub(r"<(script|style)\b.*?</\1>", " ", doc, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", " ", doc))


def summary_rows(doc: str) -> list[str]:
    table = doc[doc.index('<table class="summary">') :]
    table = table[: table.index("</table>")]
    return re.findall(r"<tr><td>.*?</tr>", table, re.S)


def test_summary_table_comes_first_with_one_row_per_file(case):
    doc, store = case["doc"], case["store"]
    assert doc.index('<table class="summary">') == doc.index("<table")  # the first table of the report
    assert doc.index('<table class="summary">') < doc.index('<section class="evidence"')
    rows = summary_rows(doc)
    assert len(rows) == 3
    faces, empty, swapped = case["faces"], case["empty"], case["swapped"]
    for row, ev in zip(rows, (faces, empty, swapped)):
        assert ev["sha256"] in row and esc(ev["original_name"]) in row and "verified" in row
    (analysis,) = [a for a in store.analyses(faces["sha256"]) if a["detector"] == "tiny-test"]
    assert f"<strong>{analysis['score']:.3f}</strong>" in rows[0] and "tiny-test v1" in rows[0]
    assert re.search(r"(not flagged|uncertain|flagged)[^<]* at threshold|just below threshold", rows[0])
    assert f"<td>{round(analysis['threshold'], 3):g}</td>" in rows[0]
    assert "no score" in rows[1] and "inconclusive" in rows[1]  # a failure has no number in the summary either
    ensemble = store.latest_ensemble(swapped["sha256"], report_mod.load_review(store, swapped["sha256"]).face_run_id)
    assert "ensemble (" in rows[2] and f"<strong>{ensemble['score']:.3f}</strong>" in rows[2]


def test_verdicts_are_per_file_never_one_for_the_whole_case(case):
    doc = case["doc"]
    rows = summary_rows(doc)
    # Each file shows its own newest verdict; a file without one says so; the case's own verdict is apart.
    assert "<strong>likely authentic</strong>" in rows[0] and "inconclusive</strong>" not in rows[0]
    assert "none recorded for this file" in rows[1]
    assert "<strong>likely manipulated</strong>" in rows[2]
    case_row = re.search(r"<tr><th>Verdict on the case as a whole</th><td>(.*?)</td></tr>", doc).group(1)
    assert "<strong>likely authentic</strong>" in case_row and "bob" in case_row
    assert "Current verdict" not in doc
    file_facts = evidence_section(doc, 3)
    assert re.search(r"<th>Analyst verdict</th><td><strong>likely manipulated</strong>", file_facts)


def test_caveat_once_at_the_top_with_back_references(case):
    doc = case["doc"]
    assert doc.count(esc(SCOPE_CAVEAT)) == 1 and doc.count(esc(report_mod.NOT_EVIDENCE)) == 1
    assert doc.count('id="caveat"') == 1
    assert doc.index('id="caveat"') < doc.index('<table class="summary">')
    refs = doc.count('<a href="#caveat">caveat at the top</a>')
    # Each file's detector table, timeline and key frames (where there are any), and the model cards.
    assert refs == 3 + 2 + 3 + 1


LONG_FLOAT = re.compile(r"\d\.\d{5,}")


def test_visible_figures_are_rounded(case):
    text = visible_text(case["doc"])
    assert LONG_FLOAT.findall(text) == []
    store = case["store"]
    swapped = case["swapped"]
    ensemble = store.latest_ensemble(swapped["sha256"], report_mod.load_review(store, swapped["sha256"]).face_run_id)
    assert len(repr(ensemble["threshold"])) > 8 and repr(ensemble["threshold"]) not in text
    assert f"{ensemble['threshold']:.3f}" in text and "0.9451722502708436" not in text
    assert "0.945" in text  # the odd detector's own threshold, rounded
    # Times to the second ("2026-12-02 03:29:40"), not the stored microseconds.
    assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d", text)


CLIP_BUDGET = 250_000  # bytes of report per analysed clip, plotly.js aside (all three clips are 640x360)


def test_report_size_per_clip_is_bounded_and_images_are_jpeg(case):
    doc = case["doc"]
    plotly_js = sum(len(m.encode("utf-8")) for m in PLOTLY_JS.findall(doc))
    rest = len(doc.encode("utf-8")) - plotly_js
    assert rest <= 3 * CLIP_BUDGET, (rest, plotly_js)
    assert "data:image/png" not in without_plotly_js(doc)
    for src in re.findall(r'<img class="frame"[^>]*src="data:image/jpeg;base64,([^"]+)"', doc):
        jpeg = cv2.imdecode(np.frombuffer(base64.b64decode(src), np.uint8), cv2.IMREAD_COLOR)
        assert jpeg.shape[1] <= report_mod.FRAME_MAX_WIDTH


def test_key_frames_are_scaled_to_a_sensible_width():
    wide = np.zeros((720, 1280, 3), np.uint8)
    wide[::2] = 255  # stripes: a frame JPEG cannot shrink to nothing
    uri = report_mod.jpeg_data_uri(wide, report_mod.FRAME_MAX_WIDTH)
    jpeg = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert uri.startswith("data:image/jpeg;base64,") and jpeg.shape == (540, 960, 3)


# -- the report hash --------------------------------------------------------------------------------


def test_report_hash_is_shown_on_the_report_and_verifies_by_the_documented_procedure(case):
    doc = case["doc"]
    checked = report_mod.verify_report(doc)
    digest = checked["claimed"]
    assert checked["ok"] and re.fullmatch(r"[0-9a-f]{64}", digest)
    # The documented procedure, by hand: the hash replaced by 64 zeros wherever it appears, then sha256.
    assert hashlib.sha256(doc.replace(digest, "0" * 64).encode("utf-8")).hexdigest() == digest
    assert f'<meta name="report-sha256" content="{digest}">' in doc
    assert digest in doc[: doc.index('<table class="summary">')]  # the header
    assert f'content: "Report sha256 {digest}"' in doc  # every printed page (the print stylesheet)
    assert "<!--report-sha256-->" not in doc
    # One character changed anywhere (here a score) and it no longer verifies.
    score = re.search(r"<strong>(\d\.\d{3})</strong>", doc).group(1)
    forged = doc.replace(f"<strong>{score}</strong>", f"<strong>{float(score) / 2:.3f}</strong>", 1)
    assert not report_mod.verify_report(forged)["ok"]
    assert not report_mod.verify_report(doc.replace('<meta name="report-sha256"', '<meta name="x"'))["ok"]


def test_print_stylesheet_numbers_pages_and_carries_the_hash(case):
    doc = case["doc"]
    css = doc[doc.index("<style>") : doc.index("</style>")]
    page = css[css.index("@page") : css.index("@media print")]
    assert "size: A4" in page and 'counter(page) " of " counter(pages)' in page
    assert report_mod.verify_report(doc)["claimed"] in page
    printed = css[css.index("@media print") :]
    assert "section.evidence" in printed and "break-before: page" in printed and "nav" in printed


# -- the CLI: report build / report verify -----------------------------------------------------------


@pytest.fixture
def db_case(tmp_path, tiny_detectors, two_face_clip):
    """A case in a database file with one analysed clip."""
    db = tmp_path / "w.db"
    store = Store(db)
    case_id = store.create_case("cli case", actor="ann")
    clip, _ = two_face_clip
    ev = ingest(store, clip, "clip.mp4", tmp_path / "evidence", actor="ann", case_id=case_id)
    analyse_evidence(store, ev["sha256"], ["tiny-test"], Sampling(sample_fps=2))
    store.close()
    return db, case_id


def test_cli_builds_and_verifies_a_report(db_case, tmp_path, capsys):
    from workbench.cli import main

    db, case_id = db_case
    out = tmp_path / "r.html"
    assert main(["report", "build", str(case_id), "--db", str(db), "--out", str(out), "--no-heatmaps",
                 "--actor", "eve"]) == 0
    digest = report_mod.verify_report(out.read_text(encoding="utf-8"))["claimed"]
    assert digest in capsys.readouterr().out
    assert main(["report", "verify", str(out), "--db", str(db)]) == 0
    said = capsys.readouterr().out
    assert "intact" in said and digest in said and "recorded in the audit log" in said and "eve" in said
    # A changed byte: exit 1 and says so.
    out.write_text(out.read_text(encoding="utf-8").replace("cli case", "CLI case"), encoding="utf-8")
    assert main(["report", "verify", str(out), "--db", str(db)]) == 1
    assert "CHANGED" in capsys.readouterr().out
    # An intact report that this database never exported: exit 1 too (the self-hash alone proves no origin).
    other = Store(tmp_path / "other.db")
    other.close()
    store = Store(db)
    out.write_text(case_report(store, case_id, with_heatmaps=False), encoding="utf-8")
    store.close()
    assert main(["report", "verify", str(out), "--db", str(tmp_path / "other.db")]) == 1
    assert "not recorded" in capsys.readouterr().out


def test_cli_refuses_clearly(db_case, tmp_path, capsys):
    from workbench.cli import main

    db, case_id = db_case
    assert main(["report", "build", "999", "--db", str(db), "--out", str(tmp_path / "x.html")]) == 2
    assert "no case" in capsys.readouterr().err
    assert main(["report", "verify", str(tmp_path / "missing.html")]) == 2
    assert "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.html"
    junk.write_text("<html>not a report</html>")
    assert main(["report", "verify", str(junk), "--db", str(db)]) == 1
    assert "shows no report sha256" in capsys.readouterr().out


# -- PDF ---------------------------------------------------------------------------------------------


def require_poppler(tool: str) -> str:
    """A poppler-utils tool to read the PDF back; skip without it on a user's machine, fail in CI."""
    path = shutil.which(tool)
    if path is None:
        hint = (f"{tool} (poppler-utils) reads the PDF's pages back: `sudo apt-get install -y poppler-utils` "
                "(scripts/install-browser.sh installs it).")
        if in_ci():
            pytest.fail(f"cannot check the PDF in CI: {hint}")
        pytest.skip(hint)
    return path


def test_pdf_has_page_numbers_and_the_report_hash_on_every_page(case):
    require_chromium()
    pdftotext, pdfinfo = require_poppler("pdftotext"), require_poppler("pdfinfo")
    store, doc = case["store"], case["doc"]
    pdf = report_mod.case_pdf(store, case["case_id"], doc, actor="printer")
    path = OUTPUT / "three-clips.pdf"
    path.write_bytes(pdf)
    info = subprocess.run([pdfinfo, str(path)], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)$", info, re.M).group(1))
    assert pages >= 1 + 3  # the summary page, then each file from a new page
    digest = report_mod.verify_report(doc)["claimed"]
    texts = [subprocess.run([pdftotext, "-f", str(i), "-l", str(i), "-layout", str(path), "-"], capture_output=True,
                            text=True, check=True).stdout for i in range(1, pages + 1)]
    for i, text in enumerate(texts, 1):
        assert f"page {i} of {pages}" in text and f"Report sha256 {digest}" in text, (i, text[-400:])
    # The summary (every file, its verdict) is on the first page; each file starts a page of its own.
    # In reading order (no -layout), so that words wrapped inside a table cell stay together.
    first = " ".join(subprocess.run([pdftotext, "-f", "1", "-l", "1", str(path), "-"], capture_output=True, text=True,
                                    check=True).stdout.split())
    assert "Summary" in first and "likely manipulated" in first and "none recorded for this file" in first
    for name in ("no_face.mp4", "demo.mp4"):
        assert name in first
    for index in (1, 2, 3):
        assert any(t.lstrip().startswith(f"Evidence {index}:") for t in texts[1:]), index
    entry = report_mod.find_export(store, pdf_sha256=hashlib.sha256(pdf).hexdigest())
    assert entry["actor"] == "printer" and entry["details"]["report_sha256"] == digest
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm:  # a look at the first page, for people (test-output/report/three-clips-page-1.png)
        subprocess.run([pdftoppm, "-f", "1", "-l", "1", "-r", "80", "-png", "-singlefile", str(path),
                        str(OUTPUT / "three-clips-page-1")], check=True)


def test_pdf_export_without_chromium_says_what_to_do(case, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CHROMIUM", str(tmp_path / "no-chromium"))
    store, case_id = case["store"], case["case_id"]
    before = len(store.audit_log(f"case:{case_id}"))
    with pytest.raises(report_mod.ReportError, match="PDF export needs Chromium and there is none at .*install-browser"):
        report_mod.case_pdf(store, case_id, case["doc"])
    with pytest.raises(report_mod.ReportError, match="not an intact workbench report"):
        report_mod.case_pdf(store, case_id, case["doc"].replace("</main>", "<p>added</p></main>"))
    with pytest.raises(report_mod.ReportError, match=f"not exported from case {case_id + 1} of this database"):
        report_mod.case_pdf(store, case_id + 1, case["doc"])
    assert len(store.audit_log(f"case:{case_id}")) == before  # nothing exported, nothing recorded


# -- the Notes page's export ------------------------------------------------------------------------


def test_notes_page_builds_the_report_shows_its_hash_and_says_why_there_is_no_pdf(app_home, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from helpers import labelled, press

    for var in ("WORKBENCH_DB", "WORKBENCH_EVIDENCE", "WORKBENCH_IMPORT_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORKBENCH_CHROMIUM", str(tmp_path / "no-chromium"))
    store = Store(app_home / "workbench.db")
    case_id = store.create_case("Export me", actor="test")
    store.close()
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py"),
                           default_timeout=180)
    at.run()
    at.sidebar.text_input(key="analyst").set_value("ana").run()
    at.switch_page("views/cases.py").run()
    labelled(at.selectbox, "Open case").set_value(case_id).run()
    at.switch_page("views/notes.py").run()
    assert not at.exception, at.exception
    press(at, "Build HTML report")
    (caption,) = [c.value for c in at.caption if c.value.startswith("Report sha256")]
    digest = re.search(r"`([0-9a-f]{64})`", caption).group(1)
    press(at, "Print to PDF")
    assert any("PDF export needs Chromium" in e.value for e in at.error), [e.value for e in at.error]
    store = Store(app_home / "workbench.db")
    try:
        assert report_mod.find_export(store, report_sha256=digest)["actor"] == "ana"
        assert not [e for e in store.audit_log() if e["action"] == "case.report.pdf"]
    finally:
        store.close()


def test_pdf_prints_from_inside_a_running_event_loop():
    """A web handler may run an asyncio loop in its thread; playwright's sync API refuses such a thread."""
    import asyncio

    require_chromium()

    async def handler() -> bytes:
        return report_mod.html_to_pdf("<!DOCTYPE html><html><body><p>one page</p></body></html>")

    assert asyncio.run(handler()).startswith(b"%PDF-")


def test_cli_prints_the_pdf_and_verifies_it_by_its_audited_sha256(db_case, tmp_path, capsys, monkeypatch):
    from workbench.cli import main

    require_chromium()
    db, case_id = db_case
    html_path, pdf_path = tmp_path / "r.html", tmp_path / "r.pdf"
    assert main(["report", "build", "cli case", "--db", str(db), "--out", str(html_path), "--pdf", str(pdf_path),
                 "--no-heatmaps", "--key-frames", "1"]) == 0
    assert pdf_path.read_bytes().startswith(b"%PDF-") and "page numbers on every page" in capsys.readouterr().out
    assert main(["report", "verify", str(pdf_path), "--db", str(db)]) == 0
    assert "recorded in the audit log" in capsys.readouterr().out
    pdf_path.write_bytes(pdf_path.read_bytes() + b"\n% appended\n")
    assert main(["report", "verify", str(pdf_path), "--db", str(db)]) == 1
    assert "not recorded" in capsys.readouterr().out
    # Without Chromium the HTML is still written and the PDF refused with the reason.
    monkeypatch.setenv("WORKBENCH_CHROMIUM", str(tmp_path / "none"))
    assert main(["report", "build", str(case_id), "--db", str(db), "--out", str(html_path), "--pdf",
                 str(tmp_path / "x.pdf"), "--no-heatmaps"]) == 2
    assert "PDF export needs Chromium" in capsys.readouterr().err and not (tmp_path / "x.pdf").exists()
