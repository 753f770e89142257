"""Who writes, and how a verdict or a note edit is recorded: no write without an analyst name (kept
in the tab's URL across reloads, confirmed when it came from a URL), a verdict form with nothing
pre-selected, a reason and a confirmation required, the file named and cleared once saved, and a
note edit made on an older version refused instead of silently replacing the newer one."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers import labelled, press
from workbench.store import NoteChanged, Store

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
TIMEOUT_S = 180  # generous: the machine running the suite may be loaded
UNDERSTOOD = "I understand a verdict cannot be edited or deleted once recorded (a later verdict is added beside it)"


def start(page: str = "views/notes.py", params: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    if params:
        at.query_params.update(params)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def type_name(at: AppTest, name: str) -> AppTest:
    at.sidebar.text_input(key="analyst").set_value(name).run()
    assert not at.exception, at.exception
    return at


def messages(at: AppTest, kind: str) -> str:
    return "\n".join(el.value for el in at.get(kind))


def with_store(home: Path, read):
    store = Store(home / "workbench.db")
    try:
        return read(store)
    finally:
        store.close()


def demo_case(store: Store) -> dict:
    return store.cases()[0]


# -- the analyst's name -----------------------------------------------------------------------
def test_a_note_is_refused_until_a_name_is_typed_and_keeps_its_text(app_home):
    at = start()
    assert "Type your name in the sidebar's Analyst box first" in messages(at, "warning")
    labelled(at.text_area, "New note").input("seam at the jaw")
    press(at, "Save note")
    assert "Not recorded. Type your name" in messages(at, "error")
    assert with_store(app_home, lambda s: s.notes(demo_case(s)["id"])) == []
    assert labelled(at.text_area, "New note").value == "seam at the jaw", "a refused note loses nothing"

    type_name(at, "  Ana  ")
    assert "Type your name" not in messages(at, "warning")
    press(at, "Save note")
    (note,) = with_store(app_home, lambda s: s.notes(demo_case(s)["id"]))
    assert (note["author"], note["text"]) == ("Ana", "seam at the jaw")
    assert labelled(at.text_area, "New note").value == "", "cleared once saved"
    audit_actors = with_store(app_home, lambda s: [e["actor"] for e in s.audit_log() if e["action"] == "note.add"])
    assert audit_actors == ["Ana"]


def test_a_new_case_and_evidence_are_refused_without_a_name(app_home):
    at = start("views/cases.py")
    labelled(at.text_input, "Case name").input("Refused case")
    press(at, "Create case")
    assert "Not recorded. Type your name" in messages(at, "error")
    assert "Refused case" not in [c["name"] for c in with_store(app_home, lambda s: s.cases())]
    type_name(at, "ana")
    labelled(at.text_input, "Case name").input("Named case")
    press(at, "Create case")
    case = next(c for c in with_store(app_home, lambda s: s.cases()) if c["name"] == "Named case")
    assert case["created_by"] == "ana"


def test_the_name_survives_a_reload_through_the_url_and_is_confirmed_once(app_home):
    at = type_name(start(), "ana")
    assert at.query_params["analyst"] == "ana"
    at.switch_page("views/cases.py").run()
    assert at.query_params["analyst"] == "ana", "a page change keeps it"

    # A reload: a new session whose URL still carries the name.
    reloaded = start(params={"analyst": "ana"})
    assert reloaded.sidebar.text_input(key="analyst").value == "ana"
    # It may be a link someone else copied: no write until it is confirmed.
    assert "This tab's address says you are ana" in messages(reloaded, "warning")
    labelled(reloaded.text_area, "New note").input("after reload")
    press(reloaded, "Save note")
    assert "Not recorded." in messages(reloaded, "error")
    assert with_store(app_home, lambda s: s.notes(demo_case(s)["id"])) == []
    press(reloaded, "Continue as ana")
    press(reloaded, "Save note")
    (note,) = with_store(app_home, lambda s: s.notes(demo_case(s)["id"]))
    assert note["author"] == "ana"


def test_a_name_from_a_link_is_shown_literally_on_the_confirm_button(app_home):
    crafted = "![pixel](http://198.51.100.7/p.png)"  # a link would render it as an image fetched from elsewhere
    at = start(params={"analyst": crafted})
    (button,) = [b for b in at.button if b.label.startswith("Continue as")]
    assert button.label == r"Continue as \!\[pixel\]\(http\://198\.51\.100\.7/p\.png\)"
    press(at, button.label)
    assert at.sidebar.text_input(key="analyst").value == crafted  # the name itself is kept as typed


def test_not_me_drops_a_name_from_a_link(app_home):
    at = start(params={"analyst": "ana"})
    press(at, "Not me")
    assert at.sidebar.text_input(key="analyst").value == ""
    assert "analyst" not in at.query_params
    assert "Type your name in the sidebar's Analyst box first" in messages(at, "warning")


@pytest.mark.parametrize("raw", ["", "   ", "a\tb", "x" * 81])
def test_a_bad_name_in_the_url_is_ignored(app_home, raw):
    at = start(params={"analyst": raw})
    assert at.sidebar.text_input(key="analyst").value == ""
    assert "Type your name in the sidebar's Analyst box first" in messages(at, "warning")


# -- the verdict form -------------------------------------------------------------------------
def test_verdict_form_requires_a_choice_a_reason_and_a_confirmation(app_home):
    at = type_name(start(), "ana")
    sha = with_store(app_home, lambda s: s.case_evidence(demo_case(s)["id"])[0]["sha256"])
    assert labelled(at.radio, "Verdict").value is None, "nothing pre-selected"
    scope = next(c for c in at.checkbox if c.label.startswith("For this file only:"))
    assert "demo.mp4" in scope.label and sha[:12] in scope.label and scope.value

    press(at, "Record verdict")
    assert "choose a verdict; give a reason; tick the box" in messages(at, "error")

    labelled(at.radio, "Verdict").set_value("likely manipulated")
    labelled(at.text_area, "Reason").input("   ")
    labelled(at.checkbox, UNDERSTOOD).check()
    press(at, "Record verdict")
    assert "Not recorded: give a reason." in messages(at, "error")

    labelled(at.text_area, "Reason").input("blending seam at the jaw")
    labelled(at.checkbox, UNDERSTOOD).uncheck()
    press(at, "Record verdict")
    assert "Not recorded: tick the box confirming verdicts are permanent." in messages(at, "error")
    assert with_store(app_home, lambda s: s.verdicts(demo_case(s)["id"])) == []
    assert labelled(at.text_area, "Reason").value == "blending seam at the jaw", "a refusal loses nothing"

    labelled(at.checkbox, UNDERSTOOD).check()
    press(at, "Record verdict")
    (verdict,) = with_store(app_home, lambda s: s.verdicts(demo_case(s)["id"]))
    assert (verdict["verdict"], verdict["reason"], verdict["author"], verdict["sha256"]) == \
        ("likely manipulated", "blending seam at the jaw", "ana", sha)
    assert "Verdict recorded: likely manipulated, for demo.mp4" in messages(at, "success")
    # Cleared for the next one.
    assert labelled(at.radio, "Verdict").value is None
    assert labelled(at.text_area, "Reason").value == ""
    assert labelled(at.checkbox, UNDERSTOOD).value is False


def test_a_verdict_is_refused_without_a_name(app_home):
    at = start()
    labelled(at.radio, "Verdict").set_value("inconclusive")
    labelled(at.text_area, "Reason").input("too dark")
    labelled(at.checkbox, UNDERSTOOD).check()
    press(at, "Record verdict")
    assert "Not recorded. Type your name" in messages(at, "error")
    assert with_store(app_home, lambda s: s.verdicts(demo_case(s)["id"])) == []


# -- two tabs editing one note ----------------------------------------------------------------
def test_an_edit_on_an_older_version_is_refused_by_the_store(fresh_store):
    case_id = fresh_store.create_case("c", "", actor="t")
    note_id = fresh_store.add_note(case_id, "v1 text", "ana")
    assert fresh_store.edit_note(note_id, "v2 text", "bob", expected_version=1) == 2
    entries = len(fresh_store.audit_log())
    with pytest.raises(NoteChanged, match=r"changed since you opened it .*v2 was saved by bob") as caught:
        fresh_store.edit_note(note_id, "stale text", "ana", expected_version=1)
    assert caught.value.latest["text"] == "v2 text"
    assert [h["text"] for h in fresh_store.note_history(note_id)] == ["v1 text", "v2 text"]
    assert len(fresh_store.audit_log()) == entries, "nothing written"


def test_two_tabs_editing_one_note_the_stale_save_asks_instead_of_replacing(app_home):
    tab_a = type_name(start(), "ana")  # the first run creates the demo case
    tab_b = type_name(start(), "bob")
    note_id = with_store(app_home, lambda s: s.add_note(demo_case(s)["id"], "first text", "ana"))
    tab_a.run(), tab_b.run()
    editor = f"edit-text-{note_id}"

    tab_b.text_area(key=editor).input("bob's newer text")
    press(tab_b, "Save new version")
    tab_a.text_area(key=editor).input("ana's stale edit")
    press(tab_a, "Save new version")

    assert "changed since you opened it" in messages(tab_a, "error")
    history = with_store(app_home, lambda s: s.note_history(note_id))
    assert [(h["version"], h["text"]) for h in history] == [(1, "first text"), (2, "bob's newer text")]
    # Both shown: the newer version in the list, the stale edit kept in the editor.
    assert "bob's newer text" in [t.value for t in tab_a.text]
    assert tab_a.text_area(key=editor).value == "ana's stale edit"
    assert "v2 by bob is newer than the v1 you are editing" in messages(tab_a, "warning")

    press(tab_a, "Save mine as v3 anyway")
    latest = with_store(app_home, lambda s: s.note_history(note_id))[-1]
    assert (latest["version"], latest["text"], latest["author"]) == (3, "ana's stale edit", "ana")


def test_an_untouched_editor_follows_the_newer_version(app_home):
    tab_a = type_name(start(), "ana")  # the first run creates the demo case
    note_id = with_store(app_home, lambda s: s.add_note(demo_case(s)["id"], "first text", "ana"))
    tab_a.run()
    with_store(app_home, lambda s: s.edit_note(note_id, "newer text", "bob"))
    tab_a.run()
    assert tab_a.text_area(key=f"edit-text-{note_id}").value == "newer text"
    assert "is newer than the" not in messages(tab_a, "warning")


def test_reload_the_newer_text_drops_the_stale_edit(app_home):
    tab_a = type_name(start(), "ana")  # the first run creates the demo case
    note_id = with_store(app_home, lambda s: s.add_note(demo_case(s)["id"], "first text", "ana"))
    tab_a.run()
    tab_a.text_area(key=f"edit-text-{note_id}").input("stale").run()
    with_store(app_home, lambda s: s.edit_note(note_id, "newer text", "bob"))
    tab_a.run()
    assert tab_a.text_area(key=f"edit-text-{note_id}").value == "stale"
    press(tab_a, "Reload the newer text (drop mine)")
    assert tab_a.text_area(key=f"edit-text-{note_id}").value == "newer text"
    assert len(with_store(app_home, lambda s: s.note_history(note_id))) == 2
