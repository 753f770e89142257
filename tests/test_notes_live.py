"""The Notes page while it stays open: the list follows notes saved elsewhere (a polling fragment
reading a cheap key), and the Edit popover closes once a new version is saved."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from helpers import press
from workbench.store import Store

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
TIMEOUT_S = 180  # generous: the machine running the suite may be loaded


def with_store(home: Path, read):
    store = Store(home / "workbench.db")
    try:
        return read(store)
    finally:
        store.close()


def test_notes_key_changes_with_every_note_version_of_the_case_only(fresh_store):
    first, other = fresh_store.create_case("a"), fresh_store.create_case("b")
    keys = [fresh_store.notes_key(first)]
    note_id = fresh_store.add_note(first, "one", "ana")
    keys.append(fresh_store.notes_key(first))
    fresh_store.add_note(other, "elsewhere", "ana")
    assert fresh_store.notes_key(first) == keys[-1], "a note of another case changes nothing here"
    fresh_store.edit_note(note_id, "two", "ana")
    keys.append(fresh_store.notes_key(first))
    fresh_store.edit_note(note_id, "two", "ana", deleted=True)
    keys.append(fresh_store.notes_key(first))
    assert len(set(keys)) == 4


def test_the_edit_popover_closes_after_saving(app_home):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    at.sidebar.text_input(key="analyst").set_value("ana").run()
    at.switch_page("views/notes.py").run()
    note_id = with_store(app_home, lambda s: s.add_note(s.cases()[0]["id"], "first text", "ana"))
    popover = f"edit-pop-{note_id}-v1"  # the Edit popover of version 1
    at.session_state[popover] = True  # the analyst opens Edit
    at.run()
    assert not at.exception, at.exception
    assert at.session_state[popover] is True
    at.text_area(key=f"edit-text-{note_id}").input("second text")
    press(at, "Save new version")
    assert [h["text"] for h in with_store(app_home, lambda s: s.note_history(note_id))] == ["first text", "second text"]
    # Version 2's popover is a new widget, closed; version 1's is gone from the page.
    assert not at.session_state[f"edit-pop-{note_id}-v2"], "the popover closes once the version is saved"
    assert "second text" in [t.value for t in at.text]
