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


@pytest.mark.parametrize("reason, author", [("", "ana"), ("   ", "ana"), ("seam", ""), ("seam", "  ")])
def test_a_verdict_without_a_reason_or_an_author_is_refused_and_nothing_written(fresh_store, reason, author):
    case_id = fresh_store.create_case("c")
    before = len(fresh_store.audit_log())
    with pytest.raises(StoreError, match="reason|author"):
        fresh_store.set_verdict(case_id, "likely manipulated", reason, author)
    assert fresh_store.verdicts(case_id) == [] and len(fresh_store.audit_log()) == before


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


def test_every_intake_of_the_same_bytes_is_kept(fresh_store):
    first = fresh_store.create_case("first", actor="ana")
    second = fresh_store.create_case("second", actor="bob")
    sha = "ef" * 32
    fresh_store.add_evidence(sha, "original.mp4", 10, "/e/ef", {}, "ana", first)
    row = fresh_store.add_evidence(sha, "renamed by bob.mp4", 10, "/e/ef", {}, "bob", second)
    fresh_store.add_evidence(sha, "original.mp4", 10, "/e/ef", {}, "ana", first)  # the same submitter again
    assert row["original_name"] == "original.mp4"  # the evidence row keeps the first name ...
    intakes = fresh_store.evidence_intakes(sha)  # ... and every submission is recorded
    assert [(i["original_name"], i["actor"], i["case_id"]) for i in intakes] == [
        ("original.mp4", "ana", first), ("renamed by bob.mp4", "bob", second), ("original.mp4", "ana", first)]
    assert all(i["at"].endswith("Z") for i in intakes)
    audited = [e["details"] for e in reversed(fresh_store.audit_log(f"evidence:{sha}")) if e["action"] == "evidence.intake"]
    assert [(d["original_name"], d["actor"], d["repeat"]) for d in audited] == [
        ("original.mp4", "ana", False), ("renamed by bob.mp4", "bob", True), ("original.mp4", "ana", True)]
    assert fresh_store.evidence_intakes("00" * 32) == []
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        with fresh_store.conn:
            fresh_store.conn.execute("UPDATE evidence_intakes SET original_name = 'x'")
    assert fresh_store.verify_history()["ok"]


def test_results_key_changes_when_results_are_stored(fresh_store):
    sha, other = "12" * 32, "34" * 32
    for s in (sha, other):
        fresh_store.add_evidence(s, "v.mp4", 1, "/e/v", {}, "ana")
    keys = [fresh_store.results_key(sha)]
    run_id = fresh_store.save_face_run(sha, "p", {}, [0], [0], [], {})
    keys.append(fresh_store.results_key(sha))
    fresh_store.save_analysis(
        {"sha256": sha, "face_run_id": run_id, "detector": "d", "detector_version": "1", "weights_sha256": None,
         "params_key": "k", "params": {}, "software": {}, "status": "ok", "reason": None, "score": 0.5,
         "threshold": 0.5, "rule": None, "frames_used": [], "timings": {}}, {}, [], actor="ana")
    keys.append(fresh_store.results_key(sha))
    assert len(set(keys)) == 3
    assert fresh_store.results_key(sha) == keys[-1]  # stable while nothing is stored
    assert fresh_store.results_key(other) not in keys
    assert Store(":memory:").results_key(sha) != keys[0]  # another store, another key


def test_database_files_and_new_folders_are_private_whatever_the_umask(tmp_path):
    import os
    import stat

    old_umask = os.umask(0)
    tmp_mode = stat.S_IMODE(tmp_path.stat().st_mode)
    try:
        path = tmp_path / "new" / "deeper" / "wb.db"
        s = Store(path)
        s.create_case("c")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        assert modes == {"wb.db": 0o600, "wb.db-wal": 0o600, "wb.db-shm": 0o600}
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert backup(s, tmp_path / "backups" / "copy.db") == "ok"
        assert stat.S_IMODE((tmp_path / "backups" / "copy.db").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "backups").stat().st_mode) == 0o700
        s.close()
        # A database left world-readable by an earlier version is tightened when opened.
        os.chmod(path, 0o644)
        Store(path).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(tmp_path.stat().st_mode) == tmp_mode  # an existing folder is the owner's choice
    finally:
        os.umask(old_umask)


def test_case_overview_reads_a_case_in_a_fixed_number_of_queries(tmp_path):
    """No N+1: the Cases table's facts for 1 or 6 files cost the same number of statements."""
    store = Store(tmp_path / "w.db")
    case_id = store.create_case("c", actor="t")
    statements = []
    counted = 0

    def add_files(n: int) -> None:
        nonlocal counted
        for i in range(counted, counted + n):
            sha = f"{i:064x}"
            store.add_evidence(sha, f"f{i}.mp4", 1, f"/x/{sha}", {"frames": 1}, "t", case_id)
            store.save_analysis({"sha256": sha, "face_run_id": None, "detector": "d", "detector_version": "1",
                                 "weights_sha256": None, "params_key": "k", "params": {}, "software": {},
                                 "status": "ok", "score": 0.25 + i / 100, "reason": None, "threshold": 0.5,
                                 "rule": "r", "frames_used": [], "timings": {}}, {}, [], "t")
        counted += n

    def overview_cost() -> tuple[int, list[dict]]:
        statements.clear()
        store.conn.set_trace_callback(statements.append)
        try:
            rows = store.case_overview(case_id)
        finally:
            store.conn.set_trace_callback(None)
        return len(statements), rows

    add_files(1)
    one, rows = overview_cost()
    add_files(5)
    six, rows = overview_cost()
    assert one == six and len(rows) == 6
    assert [r["latest_analyses"]["d"]["score"] for r in rows] == pytest.approx([0.25 + i / 100 for i in range(6)])
    store.set_verdict(case_id, "inconclusive", "whole case", "t")
    store.set_verdict(case_id, "likely manipulated", "seam", "t", sha256=rows[2]["sha256"])
    rows = store.case_overview(case_id)
    assert rows[2]["latest_verdict"]["verdict"] == "likely manipulated"
    assert rows[0]["latest_verdict"]["verdict"] == "inconclusive"
