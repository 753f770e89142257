"""Page-to-page flows through AppTest with several cases and files: notes and verdicts land on the
case and file on screen, Review opens the file picked on Cases, the frame survives a page change,
a link (query parameters) opens a case, file and frame; plain errors, the root warning, the
history line and the import-folder intake."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from detectors.base import FaceFinder
from detectors.registry import register, unregister
from helpers import labelled, press
from tiny_detector import TinyDetector
from workbench import demo, pipeline
from workbench.cases import ensure_demo_case
from workbench.evidence import ingest
from workbench.store import Store
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
TIMEOUT_S = 180  # generous: the machine running the suite may be loaded


@pytest.fixture
def workspace(tmp_path, monkeypatch, demo_clip, h264_clip, mpeg4_clip, no_face_clip):
    """Three cases: 1 the demo (50 frames), 2 with two 120-frame files, 3 with one file."""
    home = tmp_path / "home"
    (home / "demo").mkdir(parents=True)
    for src in (demo_clip, demo.truth_path(demo_clip)):
        (home / "demo" / src.name).write_bytes(src.read_bytes())
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    for var in ("WORKBENCH_DB", "WORKBENCH_EVIDENCE", "WORKBENCH_IMPORT_DIR"):
        monkeypatch.delenv(var, raising=False)
    store = Store(home / "workbench.db")
    try:
        evidence_dir = home / "evidence"
        demo_case = ensure_demo_case(store, evidence_dir, home / "demo" / "demo.mp4")
        second = store.create_case("Second case", "two files", actor="test")
        first_file = ingest(store, h264_clip, "interview.mp4", evidence_dir, "test", second)
        second_file = ingest(store, mpeg4_clip, "doorcam.avi", evidence_dir, "test", second)
        third = store.create_case("Third case", "", actor="test")
        ingest(store, no_face_clip, "other.mp4", evidence_dir, "test", third)
    finally:
        store.close()
    return {"home": home, "demo": demo_case, "second": second, "third": third,
            "files": [first_file["sha256"], second_file["sha256"]]}


def start(page: str | None = None, params: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    if params:
        at.query_params.update(params)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    return "\n".join(t.value for t in at.text)


def frame_caption(at: AppTest) -> int | None:
    for el in at.get("image"):
        for caption in el.captions:
            m = re.match(r"frame (\d+) ·", caption)
            if m:
                return int(m.group(1))
    return None


def open_case(at: AppTest, case_id: int) -> AppTest:
    """Pick a case on the Cases page, as an analyst does (named "ana": no write without a name)."""
    at.sidebar.text_input(key="analyst").set_value("ana").run()
    at.switch_page("views/cases.py").run()
    labelled(at.selectbox, "Open case").set_value(case_id).run()
    assert not at.exception, at.exception
    return at


def store_of(ws) -> Store:
    return Store(ws["home"] / "workbench.db")


# -- the selection survives page changes ------------------------------------------------------
def test_note_and_verdict_land_on_the_case_picked_on_cases(workspace):
    at = open_case(start(), workspace["second"])
    at.switch_page("views/notes.py").run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert f"case #{workspace['second']}  Second case" in shown
    # Beside both forms: the case and the file the entries will be filed on, as plain text.
    filed_on = [t.value for t in at.text if t.value.startswith("Filed on case")]
    assert len(filed_on) == 2 and all(f"#{workspace['second']} Second case" in t for t in filed_on), filed_on
    assert all("interview.mp4" in t and workspace["files"][0] in t for t in filed_on), filed_on

    labelled(at.text_area, "New note").input("mouth region flickers")
    press(at, "Save note")
    labelled(at.radio, "Verdict").set_value("likely manipulated")
    labelled(at.text_area, "Reason").input("blending seam")
    next(c for c in at.checkbox if c.label.startswith("I understand")).check()
    press(at, "Record verdict")

    store = store_of(workspace)
    try:
        (note,) = store.notes(workspace["second"])
        assert note["text"] == "mouth region flickers" and note["sha256"] == workspace["files"][0]
        (verdict,) = store.verdicts(workspace["second"])
        assert verdict["verdict"] == "likely manipulated" and verdict["sha256"] == workspace["files"][0]
        assert store.notes(workspace["demo"]) == [] and store.verdicts(workspace["demo"]) == []
    finally:
        store.close()


def test_open_in_review_shows_the_file_picked_on_cases(workspace):
    second_file = workspace["files"][1]
    at = open_case(start(), workspace["second"])
    labelled(at.selectbox, "Review evidence").set_value(second_file).run()
    press(at, "Open in Review")
    assert at.title[0].value == "Review"
    assert labelled(at.selectbox, "Evidence").value == second_file
    line = next(t.value for t in at.text if t.value.startswith("case #"))
    assert f"case #{workspace['second']} Second case" in line and "doorcam.avi" in line and second_file in line
    assert frame_caption(at) == 0


def test_frame_scrubbed_in_review_is_the_frame_notes_pin(workspace):
    at = open_case(start(), workspace["second"])
    at.switch_page("views/review.py").run()
    labelled(at.slider, "Frame").set_value(50).run()
    assert not at.exception, at.exception
    assert frame_caption(at) == 50
    assert at.query_params.get("frame") == "50", at.query_params

    at.switch_page("views/notes.py").run()
    pin = labelled(at.checkbox, "Pin to the current frame (50)")
    assert pin.value is True
    labelled(at.text_area, "New note").input("lighting jumps here")
    press(at, "Save note")
    store = store_of(workspace)
    try:
        (note,) = store.notes(workspace["second"])
        assert note["frame"] == 50 and note["sha256"] == workspace["files"][0]
        assert note["time_s"] == pytest.approx(2.0)
    finally:
        store.close()

    # Back on Review, the frame is still 50 (the slider was not drawn on Notes).
    at.switch_page("views/review.py").run()
    assert labelled(at.slider, "Frame").value == 50 and frame_caption(at) == 50


def test_jump_to_a_note_opens_its_file_and_frame(workspace):
    store = store_of(workspace)
    try:
        store.add_note(workspace["second"], "see here", "ana", sha256=workspace["files"][1], frame=70, time_s=2.8)
    finally:
        store.close()
    at = open_case(start(), workspace["second"])
    at.switch_page("views/notes.py").run()
    press(at, "Jump to frame")
    assert at.title[0].value == "Review"
    assert labelled(at.selectbox, "Evidence").value == workspace["files"][1]
    assert frame_caption(at) == 70


# -- links ------------------------------------------------------------------------------------
def test_a_link_opens_its_case_file_and_frame(workspace):
    second_file = workspace["files"][1]
    at = start(params={"case": str(workspace["second"]), "evidence": second_file, "frame": "50"})
    assert at.title[0].value == "Review"
    assert labelled(at.selectbox, "Evidence").value == second_file
    assert labelled(at.slider, "Frame").value == 50 and frame_caption(at) == 50
    assert all("link" not in w.value for w in at.warning)
    at.switch_page("views/notes.py").run()
    assert f"case #{workspace['second']}  Second case" in texts(at)
    assert labelled(at.checkbox, "Pin to the current frame (50)").value is True


def test_the_url_follows_the_selection(workspace):
    at = open_case(start(), workspace["third"])
    assert at.query_params.get("case") == str(workspace["third"])
    at = open_case(at, workspace["second"])
    assert at.query_params.get("case") == str(workspace["second"])
    assert at.query_params.get("evidence") == workspace["files"][0]
    assert at.query_params.get("frame") == "0"


def test_an_evidence_link_without_a_case_opens_the_case_holding_it(workspace):
    at = start(params={"evidence": workspace["files"][1]})
    assert labelled(at.selectbox, "Evidence").value == workspace["files"][1]
    assert f"case #{workspace['second']} Second case" in texts(at)


@pytest.mark.parametrize("params, ignored", [
    ({"case": "999", "evidence": "not-a-hash", "frame": "-3"}, 3),
    ({"case": "1' OR 1=1 --", "frame": "1e9"}, 2),
    ({"case": "1", "evidence": "0" * 64}, 1),
])
def test_a_bad_link_is_ignored_with_a_message(workspace, params, ignored):
    at = start(params=params)
    messages = [w.value for w in at.warning if "link" in w.value]
    assert len(messages) == ignored, messages
    assert not any(value in m for m in messages for value in params.values()), "the link's text is never echoed"
    assert at.title[0].value == "Review" and frame_caption(at) == 0
    assert f"case #{workspace['demo']} " in texts(at)


def test_a_file_of_another_case_is_not_opened_under_this_case(workspace):
    at = start(params={"case": str(workspace["demo"]), "evidence": workspace["files"][0]})
    assert any("evidence" in w.value for w in at.warning)
    assert labelled(at.selectbox, "Evidence").value != workspace["files"][0]
    assert f"case #{workspace['demo']} " in texts(at)


def test_a_frame_past_the_end_is_clamped(workspace):
    at = start(params={"case": str(workspace["second"]), "frame": "100000"})
    assert frame_caption(at) == 119
    at.switch_page("views/notes.py").run()
    labelled(at.checkbox, "Pin to the current frame (119)")


# -- plain errors ------------------------------------------------------------------------------
LINK_MARKUP = re.compile(r"google|chatgpt|<a\b|href=", re.IGNORECASE)


def _assert_plain_error(at: AppTest, caplog) -> str:
    assert not at.exception, "the error reached Streamlit's own error element"
    (error,) = at.error
    m = re.search(r"Reference ([0-9a-f]{8})\b", error.value)
    assert m, error.value
    assert not LINK_MARKUP.search(error.value)
    for kind in ("markdown", "error", "text", "caption"):
        assert not any(LINK_MARKUP.search(str(el.value)) for el in at.get(kind)), kind
    logged = [r for r in caplog.records if r.name == "workbench.ui" and m.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info, "the traceback goes to the server log under the reference"
    return m.group(1)


def test_an_unexpected_error_shows_a_plain_message_with_a_reference(workspace, monkeypatch, caplog):
    from workbench.ui import common

    def broken():
        raise RuntimeError("disk on fire <a href='https://example.invalid'>x</a>")

    monkeypatch.setattr(common, "caveat", broken)  # the About page script calls it
    caplog.set_level(logging.ERROR, logger="workbench.ui")
    at = start()
    at.switch_page("views/about.py").run()
    _assert_plain_error(at, caplog)
    assert "disk on fire" not in " ".join(e.value for e in at.error), "details stay in the log"
    assert "disk on fire" in caplog.text


def test_an_error_inside_the_scrubber_is_shown_plainly(workspace, monkeypatch, caplog):
    from workbench.ui import resources

    def broken(*args, **kwargs):
        raise ValueError("frame decoder exploded")

    monkeypatch.setattr(resources, "frame_with_boxes", broken)
    caplog.set_level(logging.ERROR, logger="workbench.ui")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    _assert_plain_error(at, caplog)
    assert at.title[0].value == "Review"


# -- sidebar: root, history --------------------------------------------------------------------
def test_running_as_root_is_warned_in_the_sidebar(workspace, monkeypatch):
    import os

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    at = start()
    assert any("root" in w.value.lower() for w in at.sidebar.warning)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    at = start()
    assert not any("root" in w.value.lower() for w in at.sidebar.warning)


@pytest.mark.parametrize("status, line", [
    ({"ok": True, "entries": 12, "broken_at": None, "reason": None, "head": "ab"}, "History verified (12 entries)"),
    ({"ok": False, "entries": 12, "broken_at": 7, "reason": "hash mismatch", "head": "ab"},
     "History BROKEN at entry 7: hash mismatch"),
])
def test_the_sidebar_shows_the_history_check(workspace, monkeypatch, status, line):
    calls = []

    def verify_history(self):
        calls.append(1)
        return dict(status)

    monkeypatch.setattr(Store, "verify_history", verify_history, raising=False)
    at = start()
    assert line in [t.value for t in at.sidebar.text]
    at.run()  # a rerun with no new history reuses the check
    assert line in [t.value for t in at.sidebar.text]
    assert len(calls) == 1, calls


def test_the_sidebar_shows_the_real_history_check(workspace):
    at = start()
    store = store_of(workspace)
    try:
        entries = store.verify_history()["entries"]
    finally:
        store.close()
    assert f"History verified ({entries} entries)" in [t.value for t in at.sidebar.text]


def test_the_sidebar_shows_a_rewritten_case_name_as_broken_history(workspace):
    import sqlite3

    conn = sqlite3.connect(workspace["home"] / "workbench.db")
    try:
        with conn:  # the attacker's side: plain SQL, no store
            conn.execute("UPDATE cases SET name = ? WHERE id = ?", ["Renamed quietly", workspace["third"]])
    finally:
        conn.close()
    at = start()
    lines = [t.value for t in at.sidebar.text if t.value.startswith("History")]
    assert len(lines) == 1 and lines[0].startswith("History BROKEN at entry "), lines


# -- intake from the import folder -------------------------------------------------------------
def test_import_folder_files_go_through_the_single_open_intake(workspace, monkeypatch, h264_clip, tmp_path):
    import workbench.evidence as evidence

    import_dir = tmp_path / "import"
    import_dir.mkdir()
    (import_dir / "copy.mp4").write_bytes(h264_clip.read_bytes())
    monkeypatch.setenv("WORKBENCH_IMPORT_DIR", str(import_dir))
    calls = []

    def ingest_from_import_dir(store, path, import_root, evidence_dir, actor, case_id, limits):
        calls.append((Path(path), Path(import_root), case_id))
        return ingest(store, path, Path(path).name, evidence_dir, actor, case_id, limits)

    monkeypatch.setattr(evidence, "ingest_from_import_dir", ingest_from_import_dir)  # the Cases page imports it per run
    at = open_case(start(), workspace["third"])
    press(at, "Add selected file")
    assert calls == [(import_dir.resolve() / "copy.mp4", import_dir.resolve(), workspace["third"])]
    assert any("Added, sha256" in s.value for s in at.success)
    store = store_of(workspace)
    try:
        assert workspace["files"][0] in [e["sha256"] for e in store.case_evidence(workspace["third"])]
    finally:
        store.close()


def test_a_file_from_the_import_folder_is_added_to_the_open_case(workspace, monkeypatch, mpeg4_clip, tmp_path):
    import_dir = tmp_path / "import"
    (import_dir / "sub").mkdir(parents=True)
    (import_dir / "sub" / "door.avi").write_bytes(mpeg4_clip.read_bytes())
    monkeypatch.setenv("WORKBENCH_IMPORT_DIR", str(import_dir))
    at = open_case(start(), workspace["third"])
    press(at, "Add selected file")
    assert any("Added, sha256" in s.value for s in at.success), [e.value for e in at.error]
    store = store_of(workspace)
    try:
        assert workspace["files"][1] in [e["sha256"] for e in store.case_evidence(workspace["third"])]
    finally:
        store.close()
    # The file just added is the one Review opens.
    at.switch_page("views/review.py").run()
    assert labelled(at.selectbox, "Evidence").value == workspace["files"][1]


def test_results_key_comes_from_the_store_when_it_offers_one(monkeypatch):
    from workbench.ui import resources

    class StoreWithKey:
        def results_key(self, sha256):
            return f"key-of-{sha256}"

    monkeypatch.setattr(resources, "store", lambda: StoreWithKey())
    assert resources.results_key("abc") == "key-of-abc"


def test_review_of_a_file_without_faces_shows_where_faces_were_not_found(workspace, tiny_detectors):
    store = store_of(workspace)
    try:
        sha = store.case_evidence(workspace["third"])[0]["sha256"]
        result = analyse_evidence(store, sha, ["tiny-test"], Sampling(sample_fps=5))
    finally:
        store.close()
    assert result.detectors["tiny-test"].reason.startswith("no face found at any scale")
    at = open_case(start(), workspace["third"])
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    assert "No detector scored a face on this file" in "\n".join(c.value for c in at.caption)
    charts = at.get("plotly_chart")
    assert charts, "the face band is drawn even though nothing was scored"
    assert f"no face found ({len(result.frames_analysed)} of {len(result.frames_analysed)} frames)" in charts[0].proto.spec


class OwnFinderAuthors(TinyDetector):
    """A tiny detector with an authors' rule and its own face finder, as FakeFinder's reproduced detectors have."""

    name = "tiny-own-finder"
    upstream_rule = "mean over every face found (test rule)"
    face_finder = FaceFinder(kind="mtcnn", keep="all", source="test")

    def upstream_aggregate(self, member_scores):
        return float(member_scores.mean())


def test_review_names_the_rule_behind_the_score_and_faces_off_the_timeline(workspace, tiny_detectors, two_face_clip,
                                                                             monkeypatch):
    cls = OwnFinderAuthors
    register(cls)
    try:
        # Our tracker follows only the first face its finder's box overlaps: the other is found, scored, off-track.
        real_match = pipeline.match_to_tracks
        monkeypatch.setattr(pipeline, "match_to_tracks",
                            lambda found, tracked: {i: t for i, t in real_match(found, tracked).items() if i == 0})
        store = store_of(workspace)
        try:
            ev = ingest(store, two_face_clip[0], "two.mp4", workspace["home"] / "evidence", "test", workspace["third"])
            result = analyse_evidence(store, ev["sha256"], [cls.name], Sampling(sample_fps=2))
        finally:
            store.close()
        outcome = result.detectors[cls.name]
        assert outcome.status == "ok" and outcome.upstream["faces_without_track"] > 0
        at = open_case(start(), workspace["third"])
        labelled(at.selectbox, "Review evidence").set_value(ev["sha256"]).run()
        press(at, "Open in Review")
        captions = "\n".join(c.value for c in at.caption)
        assert "Scored by authors' rule: mean over every face found (test rule)" in captions
        assert "Explanation: our track rule gives" in captions
        assert (f"{outcome.upstream['faces_without_track']} face(s) its own face finder found overlap none of the "
                "tracks") in captions
    finally:
        unregister(cls.name)


# -- scores that say what they mean (issue 14) ---------------------------------------------------
def test_review_before_analysis_says_not_analysed_yet(workspace):
    at = start()  # the demo case, never analysed
    captions = "\n".join(c.value for c in at.caption)
    assert "Not analysed yet — run detectors to find faces." in captions
    assert "No face on this frame." not in captions


def test_review_shows_each_score_as_a_band_at_its_threshold(workspace, tiny_detectors):
    from workbench.aggregate import band, band_text  # lazy: only this test reads the rule itself

    store = store_of(workspace)
    try:
        sha = store.case_evidence(workspace["demo"])[0]["sha256"]
        result = analyse_evidence(store, sha, ["tiny-test", "tiny-even"], Sampling(sample_fps=2))
    finally:
        store.close()
    at = start()
    metrics = {m.label: m.value for m in at.metric}
    for name, outcome in result.detectors.items():
        said = band(outcome.score, outcome.threshold)
        label = next(label for label in metrics if name in label)
        assert metrics[label] == said.capitalize(), "the band is the headline, not the number"
        assert band_text(outcome.score, outcome.threshold) in texts(at)  # no evaluation stored: no FPR
        assert f"score {outcome.score:.3f}" in "\n".join(c.value for c in at.caption)
    ens = result.ensemble
    assert f"Ensemble: {band(ens['score'], ens['threshold'])}" in texts(at)
    assert not any(ch in label for label in metrics for ch in "✅❔⛔⚠"), "no emoji: they render as boxes without an emoji font"
    # The Cases table shows the band beside each score too.
    at.switch_page("views/cases.py").run()
    analysis = str(at.dataframe[0].value["analysis"].iloc[0])
    assert f"{band(result.detectors['tiny-test'].score, result.detectors['tiny-test'].threshold)} (" in analysis


def test_run_picker_marks_uninstalled_detectors_and_will_not_run_only_them(workspace, tiny_detectors, broken_detectors):
    at = start()
    picker = labelled(at.multiselect, "Detectors")
    assert "tiny-missing (not installed)" in picker.options
    assert "tiny-test" in picker.options
    picker.set_value(["tiny-missing"]).run()
    run = labelled(at.button, "Run")
    assert run.disabled
    assert any("not installed" in c.value for c in at.caption), "Run says why it is disabled"
    labelled(at.multiselect, "Detectors").set_value(["tiny-missing", "tiny-test"]).run()
    assert not labelled(at.button, "Run").disabled


def test_detectors_page_starts_with_a_status_table_default_first(workspace, tiny_detectors, broken_detectors):
    at = start("views/detectors.py")
    table = at.dataframe[0].value
    from detectors.registry import default_detectors  # lazy: the registry's answer is the expectation

    defaults = default_detectors()
    assert defaults
    assert list(table["detector"])[: len(defaults)] == sorted(defaults)
    row = table[table["detector"] == "tiny-missing"].iloc[0]
    assert row["installed"] == "no"
    assert row["download size"] == "not published"  # its test manifest row gives no size
    assert set(table["installed"]) <= {"yes", "no"}


def test_intake_is_refused_without_an_analyst_name(workspace, monkeypatch, mpeg4_clip, tmp_path):
    import_dir = tmp_path / "import"
    import_dir.mkdir()
    (import_dir / "door.avi").write_bytes(mpeg4_clip.read_bytes())
    monkeypatch.setenv("WORKBENCH_IMPORT_DIR", str(import_dir))
    at = start("views/cases.py")
    labelled(at.selectbox, "Open case").set_value(workspace["third"]).run()
    press(at, "Add selected file")
    assert any("Not recorded. Type your name" in e.value for e in at.error), [e.value for e in at.error]
    store = store_of(workspace)
    try:
        assert workspace["files"][1] not in [e["sha256"] for e in store.case_evidence(workspace["third"])]
    finally:
        store.close()
