"""Notes pinned to a time range (migration 0012_note_ranges): stored, versioned, vouched for by the audit chain."""
from __future__ import annotations

import sqlite3

import pytest

from workbench import store as store_mod
from workbench.store import MIGRATIONS, Store, StoreError

SHA = "ab" * 32


@pytest.fixture
def case_store(tmp_path):
    path = tmp_path / "wb.db"
    store = Store(path)
    case_id = store.create_case("Harbour", actor="ana")
    store.add_evidence(SHA, "harbour.mp4", 10, "/e/ab", {"fps": 25, "frames": 500}, "ana", case_id)
    yield path, store, case_id
    store.close()


def _raw(path, *statements):
    conn = sqlite3.connect(path)
    try:
        with conn:
            for sql in statements:
                conn.execute(sql)
    finally:
        conn.close()


def test_a_note_keeps_its_range_through_every_version(case_store):
    _, store, case_id = case_store
    note_id = store.add_note(case_id, "mouth flickers", "ana", sha256=SHA, frame=100, time_s=4.0, track_id=1,
                             frame_end=174, time_end_s=6.96)
    (note,) = store.notes(case_id)
    assert (note["frame"], note["frame_end"], note["time_s"], note["time_end_s"]) == (100, 174, 4.0, 6.96)
    store.edit_note(note_id, "mouth flickers, left side", "bob", expected_version=1)
    (edited,) = store.notes(case_id)
    assert edited["version"] == 2 and (edited["frame"], edited["frame_end"], edited["time_end_s"]) == (100, 174, 6.96)
    single = store.add_note(case_id, "one frame", "ana", sha256=SHA, frame=7, time_s=0.28)
    assert next(n for n in store.notes(case_id) if n["note_id"] == single)["frame_end"] is None
    assert store.verify_history()["ok"] is True


@pytest.mark.parametrize("kwargs, words", [
    ({"frame": 50, "frame_end": 49}, "ends at or after its first frame"),
    ({"frame_end": 10}, "needs its first frame"),
    ({"frame": 1, "time_s": 2.0, "frame_end": 3, "time_end_s": 1.0}, "start time"),
    ({"frame": 1, "time_end_s": 1.0}, "needs its end frame"),
])
def test_a_bad_range_is_refused_and_nothing_is_written(case_store, kwargs, words):
    _, store, case_id = case_store
    entries = len(store.audit_log())
    with pytest.raises(StoreError, match=words):
        store.add_note(case_id, "text", "ana", sha256=SHA, **kwargs)
    assert store.notes(case_id) == [] and len(store.audit_log()) == entries


def test_the_audit_entry_records_the_range_and_catches_it_changed(case_store):
    path, store, case_id = case_store
    store.add_note(case_id, "swap", "ana", sha256=SHA, frame=100, time_s=4.0, frame_end=174, time_end_s=6.96)
    entry = store.audit_log(subject=f"case:{case_id}", limit=1)[0]
    assert entry["action"] == "note.add" and entry["details"]["frame_end"] == 174
    store.close()
    _raw(path, "DROP TRIGGER notes_no_update", "UPDATE notes SET frame_end = 120")
    check = Store(path, migrate=False)
    try:
        result = check.verify_history()
    finally:
        check.close()
    assert result["ok"] is False and "frame_end 120" in result["reason"], result


def test_a_range_removed_outside_the_store_is_caught(case_store):
    path, store, case_id = case_store
    store.add_note(case_id, "swap", "ana", sha256=SHA, frame=100, frame_end=174)
    store.close()
    _raw(path, "DROP TRIGGER notes_no_update", "UPDATE notes SET frame_end = NULL")
    check = Store(path, migrate=False)
    try:
        result = check.verify_history()
    finally:
        check.close()
    assert result["ok"] is False and "frame_end" in result["reason"], result


def _add_note_as_before_0012(store: Store, case_id: int, text: str, frame: int, time_s: float) -> int:
    """What add_note wrote before migration 0012: no range columns, an entry without a range end."""
    with store._writing() as conn:
        note_id = conn.execute("INSERT INTO note_ids (case_id) VALUES (?) RETURNING id", [case_id]).fetchone()[0]
        conn.execute("INSERT INTO notes (note_id, version, case_id, sha256, frame, time_s, track_id, author, created_at, "
                     "text, deleted) VALUES (?, 1, ?, NULL, ?, ?, NULL, 'ana', 't', ?, 0)",
                     [note_id, case_id, frame, time_s, text])
        row = store_mod._one(conn, "SELECT * FROM notes WHERE note_id = ?", [note_id])
        facts = {k: v for k, v in store_mod._note_facts(row).items() if k not in ("frame_end", "time_end_s")}
        store_mod._append_audit(conn, "ana", "note.add", f"case:{case_id}", facts)
    return note_id


def test_notes_written_before_the_migration_still_verify_and_read_as_single_frames(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [m for m in MIGRATIONS if m[0] < "0012"])
    old = Store(path)
    case_id = old.create_case("Old", actor="ana")
    note_id = _add_note_as_before_0012(old, case_id, "before ranges", 3, 0.1)
    old.close()
    unmigrated = Store(path, migrate=False)  # verify reads an old file as it is
    try:
        assert unmigrated.verify_history()["ok"] is True
    finally:
        unmigrated.close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", MIGRATIONS)
    store = Store(path)
    try:
        assert "0012_note_ranges" in store.applied_migrations()
        (note,) = store.notes(case_id)
        assert note["frame"] == 3 and note["frame_end"] is None and note["time_end_s"] is None
        # The entry written before 0012 does not record a range end: it vouched for none.
        assert store.verify_history()["ok"] is True
        store.edit_note(note_id, "after ranges", "bob")
        assert store.verify_history()["ok"] is True
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # still append-only
            with store.conn:
                store.conn.execute("UPDATE notes SET frame_end = 9")
    finally:
        store.close()
