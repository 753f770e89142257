"""The SQLite store: migrations, append-only history, audit, parameters, backup."""
from __future__ import annotations

import sqlite3

import pytest

from workbench import store as store_mod
from workbench.store import MIGRATIONS, Store, StoreError, backup


def test_migrations_on_fresh_and_existing_database(tmp_path):
    path = tmp_path / "wb.db"
    first = Store(path)
    assert first.applied_migrations() == [name for name, _ in MIGRATIONS]
    case_id = first.create_case("kept")
    first.close()
    again = Store(path)
    assert again.migrate() == []  # re-applying is a no-op
    assert again.case(case_id)["name"] == "kept"
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_new_migration_applies_once_to_existing_database(tmp_path, monkeypatch):
    path = tmp_path / "wb.db"
    Store(path).close()
    calls = []

    def add_column(db):
        calls.append(1)
        db["cases"].add_column("colour", str)

    monkeypatch.setattr(store_mod, "MIGRATIONS", MIGRATIONS + [("9999_test_colour", add_column)])
    s = Store(path)
    assert "colour" in s.db["cases"].columns_dict
    s.close()
    Store(path).close()
    assert calls == [1]


def test_notes_are_versioned_not_overwritten(fresh_store):
    case_id = fresh_store.create_case("c")
    note_id = fresh_store.add_note(case_id, "first", "ana", frame=12, time_s=0.48, track_id=1)
    assert fresh_store.edit_note(note_id, "second", "bob") == 2
    latest = fresh_store.notes(case_id)
    assert [(n["note_id"], n["text"], n["author"], n["frame"], n["track_id"]) for n in latest] == [(note_id, "second", "bob", 12, 1)]
    history = fresh_store.note_history(note_id)
    assert [h["text"] for h in history] == ["first", "second"]
    assert all(h["created_at"].endswith("Z") for h in history)
    fresh_store.edit_note(note_id, "second", "bob", deleted=True)
    assert fresh_store.notes(case_id) == []
    assert len(fresh_store.note_history(note_id)) == 3


def test_verdict_history(fresh_store):
    case_id = fresh_store.create_case("c")
    fresh_store.set_verdict(case_id, "inconclusive", "too early", "ana")
    fresh_store.set_verdict(case_id, "likely manipulated", "blend seam at 00:04", "bob")
    history = fresh_store.verdicts(case_id)
    assert [v["verdict"] for v in history] == ["likely manipulated", "inconclusive"]
    with pytest.raises(StoreError):
        fresh_store.set_verdict(case_id, "fake!!", "", "ana")


@pytest.mark.parametrize("table", ["notes", "verdicts", "audit"])
def test_history_tables_refuse_update_and_delete(fresh_store, table):
    case_id = fresh_store.create_case("c")
    fresh_store.add_note(case_id, "n", "ana")
    fresh_store.set_verdict(case_id, "inconclusive", "r", "ana")
    for sql in (f"UPDATE {table} SET id = id", f"DELETE FROM {table}"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            with fresh_store.conn:
                fresh_store.conn.execute(sql)
    assert fresh_store.db[table].count >= 1


def test_audit_records_changes(fresh_store):
    case_id = fresh_store.create_case("c", actor="ana")
    note_id = fresh_store.add_note(case_id, "n", "ana")
    fresh_store.edit_note(note_id, "n2", "bob")
    fresh_store.set_verdict(case_id, "likely authentic", "r", "bob")
    actions = [(e["actor"], e["action"]) for e in reversed(fresh_store.audit_log())]
    assert actions == [("ana", "case.create"), ("ana", "note.add"), ("bob", "note.edit"), ("bob", "verdict.set")]


def test_values_are_parameters_not_sql(fresh_store):
    hostile = "x'); DROP TABLE notes; --"
    case_id = fresh_store.create_case(hostile)
    fresh_store.add_note(case_id, hostile, hostile)
    assert fresh_store.case(case_id)["name"] == hostile
    assert fresh_store.notes(case_id)[0]["text"] == hostile


def test_unknown_case_is_refused(fresh_store):
    with pytest.raises(StoreError):
        fresh_store.add_note(999, "n", "ana")
    with pytest.raises(StoreError):
        fresh_store.case(999)
    with pytest.raises(StoreError):
        fresh_store.create_case("   ")


def test_backup_copy_passes_integrity_check(tmp_path):
    s = Store(tmp_path / "wb.db")
    case_id = s.create_case("c")
    s.add_note(case_id, "kept", "ana")
    assert backup(s, tmp_path / "copy.db") == "ok"
    copy = Store(tmp_path / "copy.db")
    assert copy.notes(case_id)[0]["text"] == "kept"
