"""The Cases page (issue 14): a file added shows in the table at once and opens in Review; a compact
table; archive and unarchive (hidden everywhere, audited, nothing deleted); search across cases."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers import labelled, press
from workbench.cases import ensure_demo_case
from workbench.evidence import ingest
from workbench.store import Store

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
TIMEOUT_S = 180  # generous: the machine running the suite may be loaded
LONG_NAME = "interview_with_the_harbour_master_full_take_03.mp4"


@pytest.fixture
def workspace(app_home, monkeypatch, h264_clip, mpeg4_clip, no_face_clip, tmp_path):
    """The demo case, an empty case, and a case with two files (one with a long name); an import
    folder holding a third clip."""
    for var in ("WORKBENCH_DB", "WORKBENCH_EVIDENCE"):
        monkeypatch.delenv(var, raising=False)
    import_dir = tmp_path / "import"
    import_dir.mkdir()
    (import_dir / "door.avi").write_bytes(no_face_clip.read_bytes())
    monkeypatch.setenv("WORKBENCH_IMPORT_DIR", str(import_dir))
    store = Store(app_home / "workbench.db")
    try:
        evidence_dir = app_home / "evidence"
        demo_case = ensure_demo_case(store, evidence_dir, app_home / "demo" / "demo.mp4")
        empty = store.create_case("Empty case", "nothing yet", actor="test")
        two = store.create_case("Harbour fire", "two files", actor="test")
        long_file = ingest(store, h264_clip, LONG_NAME, evidence_dir, "test", two)
        short_file = ingest(store, mpeg4_clip, "doorcam.avi", evidence_dir, "test", two)
    finally:
        store.close()
    return {"home": app_home, "demo": demo_case, "empty": empty, "two": two,
            "long": long_file["sha256"], "short": short_file["sha256"]}


def with_store(ws, read):
    store = Store(ws["home"] / "workbench.db")
    try:
        return read(store)
    finally:
        store.close()


def open_case(case_id: int, name: str | None = "ana") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    if name:
        at.sidebar.text_input(key="analyst").set_value(name).run()
    at.switch_page("views/cases.py").run()
    labelled(at.selectbox, "Open case").set_value(case_id).run()
    assert not at.exception, at.exception
    return at


def infos(at: AppTest) -> str:
    return "\n".join(i.value for i in at.info)


def texts(at: AppTest) -> str:
    return "\n".join(t.value for t in at.text)


def test_a_file_added_is_in_the_table_at_once_and_opens_in_review(workspace):
    at = open_case(workspace["empty"])
    assert "No evidence in this case yet." in infos(at)
    press(at, "Add selected file")
    assert "No evidence in this case yet." not in infos(at), "the table was drawn before the file was added"
    (table,) = at.dataframe
    assert list(table.value["file (client name)"]) == ["door.avi"]
    added = with_store(workspace, lambda s: s.case_evidence(workspace["empty"]))[0]["sha256"]
    assert f"Added, sha256 {added}" in [s.value for s in at.success]
    press(at, "Open it in Review")
    assert at.title[0].value == "Review"
    assert labelled(at.selectbox, "Evidence").value == added


def test_the_table_is_compact_band_and_verdict_first_short_hash_clipped_name(workspace):
    at = open_case(workspace["two"])
    table = at.dataframe[0].value
    assert list(table.columns[:4]) == ["analysis", "analyst verdict", "file (client name)", "sha256"]
    assert list(table["sha256"]) == [workspace["long"][:12], workspace["short"][:12]]
    clipped = table["file (client name)"].iloc[0]
    assert len(clipped) <= 32 and clipped.startswith("interview_with") and clipped.endswith("e_03.mp4") and "…" in clipped
    # The file picked below the table: its whole name, and its whole hash in a copy field.
    assert f"file {LONG_NAME}" in texts(at)
    assert [c.value for c in at.code] == [workspace["long"]]
    labelled(at.selectbox, "Review evidence").set_value(workspace["short"]).run()
    assert [c.value for c in at.code] == [workspace["short"]]


def _archive(at: AppTest, expander: str, reason: str, button: str) -> AppTest:
    form = next(e for e in at.expander if e.label == expander)
    form.text_input[0].input(reason)
    next(b for b in form.button if b.label == button).click().run()
    assert not at.exception, at.exception
    return at


def test_archiving_a_file_hides_it_from_the_table_and_review_until_shown(workspace):
    at = open_case(workspace["two"])
    labelled(at.selectbox, "Review evidence").set_value(workspace["short"]).run()
    press(at, "Open in Review")  # the file about to be archived is the one Review shows
    assert labelled(at.selectbox, "Evidence").value == workspace["short"]
    # AppTest drops the sidebar box's state on a page switched to from the script (a browser keeps it:
    # tests/test_browser_cases.py checks), so the name is typed again here.
    at.sidebar.text_input(key="analyst").set_value("ana").run()
    at.switch_page("views/cases.py").run()
    assert labelled(at.selectbox, "Review evidence").value == workspace["short"]
    _archive(at, "Archive this file", "wrong clip, uploaded by mistake", "Archive file")
    assert "File archived." in [s.value for s in at.success]
    assert list(at.dataframe[0].value["sha256"]) == [workspace["long"][:12]]
    at.switch_page("views/review.py").run()
    assert labelled(at.selectbox, "Evidence").options == [f"{LONG_NAME} · {workspace['long'][:12]}…"]
    assert labelled(at.selectbox, "Evidence").value == workspace["long"], "Review moved off the archived file"
    # Shown again with the switch, marked; unarchived with a reason: a later record, both kept.
    at.switch_page("views/cases.py").run()
    labelled(at.toggle, "Show archived").set_value(True).run()
    assert list(at.dataframe[0].value["sha256"]) == [workspace["long"][:12], workspace["short"][:12]]
    assert at.dataframe[0].value["file (client name)"].iloc[1] == "doorcam.avi [archived]"
    labelled(at.selectbox, "Review evidence").set_value(workspace["short"]).run()
    _archive(at, "Unarchive this file", "it was the right clip", "Unarchive file")
    history = with_store(workspace, lambda s: s.archive_history(workspace["two"]))
    assert [(r["archived"], r["actor"], r["reason"]) for r in history] == [
        (1, "ana", "wrong clip, uploaded by mistake"), (0, "ana", "it was the right clip")]
    assert with_store(workspace, lambda s: len(s.case_evidence(workspace["two"]))) == 2
    assert with_store(workspace, lambda s: s.verify_history()["ok"])


def test_archiving_a_case_hides_it_from_the_case_picker(workspace):
    at = open_case(workspace["empty"])
    _archive(at, "Archive this case", "opened twice by mistake", "Archive case")
    assert workspace["empty"] not in labelled(at.selectbox, "Open case").options
    entry = with_store(workspace, lambda s: s.audit_log()[0])
    assert (entry["actor"], entry["action"]) == ("ana", "case.archive")


def test_archive_is_refused_without_a_name_or_a_reason(workspace):
    at = open_case(workspace["two"], name=None)
    _archive(at, "Archive this file", "mistake", "Archive file")
    assert any("Not recorded. Type your name" in e.value for e in at.error), [e.value for e in at.error]
    at.sidebar.text_input(key="analyst").set_value("ana").run()
    _archive(at, "Archive this file", "", "Archive file")
    assert any("needs a reason" in e.value for e in at.error), [e.value for e in at.error]
    assert with_store(workspace, lambda s: s.archive_history(workspace["two"])) == []


def test_search_finds_a_note_and_a_hash_and_opens_them(workspace):
    note_text = "lips drift 50% of the time_frame 'here'"
    with_store(workspace, lambda s: s.add_note(workspace["two"], note_text, "bob", sha256=workspace["long"], frame=7))
    at = open_case(workspace["demo"])
    labelled(at.text_input, "Search cases, files, notes and hashes").input("50% of the time_").run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert f"note (note) · case #{workspace['two']} Harbour fire · file {workspace['long'][:12]}… · frame 7" in shown
    assert note_text in shown
    press(at, "Open")
    assert at.title[0].value == "Review"
    assert labelled(at.selectbox, "Evidence").value == workspace["long"]
    assert at.session_state["sel_frame"] == 7

    at.switch_page("views/cases.py").run()
    labelled(at.text_input, "Search cases, files, notes and hashes").input(workspace["short"][:8]).run()
    assert f"file (sha256) · case #{workspace['two']} Harbour fire" in texts(at)
    assert labelled(at.text_input, "Search cases, files, notes and hashes").value == workspace["short"][:8]


def test_the_cases_page_exports_the_open_case_as_a_bundle(workspace):
    at = open_case(workspace["two"])
    press(at, "Prepare bundle")
    assert not at.exception, at.exception
    assert [b for b in at.get("download_button") if "Download bundle" in str(b.proto)], \
        "no bundle to download after Prepare bundle on the Cases page"
    entries = with_store(workspace, lambda s: s.audit_log(f"case:{workspace['two']}"))
    assert [e["actor"] for e in entries if e["action"] == "case.export"] == ["ana"]


def test_a_fresh_session_opens_the_first_case_and_file_not_archived(workspace):
    def archive(store):
        store.archive("ana", "made by mistake", workspace["demo"])
        store.archive("ana", "made by mistake", workspace["empty"])
        store.archive("ana", "wrong upload", workspace["two"], workspace["long"])
    with_store(workspace, archive)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()  # Review, the default page, in a session with nothing selected
    assert not at.exception, at.exception
    shown = " ".join(t.value for t in at.text)
    # The first two cases are archived: Review opens the next one, on its first file not archived.
    assert f"case #{workspace['two']} Harbour fire" in shown, shown
    assert f"sha256 {workspace['short']}" in shown and workspace["long"] not in shown, shown
