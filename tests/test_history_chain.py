"""Tamper-evident history: the audit hash chain, the facts its entries record, and where it is checked.

Each attack here is plain SQL on the database file through a raw connection, as someone with
access to the file would do it; `verify_history`, `python -m workbench verify`, `backup` and the
case report must all notice.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from workbench import store as store_mod
from workbench.cli import main
from workbench.store import GENESIS, MIGRATIONS, Store, entry_hash

SHA = "ab" * 32
OTHER_SHA = "cd" * 32


def _populate(path: Path) -> dict:
    """A case with evidence, an analysis (score 0.629) with scores, notes (one edited) and a verdict."""
    store = Store(path)
    case_id = store.create_case("Harbour CCTV", "night footage", actor="ana")
    store.add_evidence(SHA, "harbour.mp4", 1234, "/evidence/ab/abab", {"fps": 25}, "ana", case_id)
    analysis_id = store.save_analysis(
        {"sha256": SHA, "face_run_id": None, "detector": "sbi", "detector_version": "1", "weights_sha256": "f0" * 32,
         "params_key": "k", "params": {}, "software": {}, "status": "ok", "reason": None, "score": 0.629,
         "threshold": 0.5, "rule": "max", "frames_used": [0, 12], "timings": {}},
        {1: {"score": 0.629, "n_frames": 2, "status": "ok", "reason": None}}, [(0, 1, 0.41), (12, 1, 0.629)], actor="ana")
    note_id = store.add_note(case_id, "blend seam at 00:04", "ana", sha256=SHA, frame=12, time_s=0.48, track_id=1)
    store.edit_note(note_id, "blend seam at 00:04, left jaw", "bob")
    verdict_id = store.set_verdict(case_id, "likely manipulated", "seam + score", "bob", sha256=SHA)
    result = store.verify_history()
    store.close()
    assert result["ok"], result
    return {"case_id": case_id, "analysis_id": analysis_id, "note_id": note_id, "verdict_id": verdict_id,
            "head": result["head"], "entries": result["entries"]}


def _entry_id(path: Path, action: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT min(id) FROM audit WHERE action = ?", [action]).fetchone()[0]
    finally:
        conn.close()


def _tamper(path: Path, *statements: str, params=()) -> None:
    """Run SQL on a raw connection (no Store, no foreign keys): the attacker's side."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            for sql in statements:
                conn.execute(sql, params if "?" in sql else ())
    finally:
        conn.close()


def _verify(path: Path, expect_head: str | None = None) -> dict:
    store = Store(path, migrate=False)
    try:
        return store.verify_history(expect_head=expect_head)
    finally:
        store.close()


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "wb.db"
    return path, _populate(path)


def test_untampered_history_verifies_after_many_operations(tmp_path, capsys):
    path = tmp_path / "wb.db"
    facts = _populate(path)
    store = Store(path)
    case_id = facts["case_id"]
    for i in range(300):
        note_id = store.add_note(case_id, f"note {i}", "ana", frame=i)
        if i % 3 == 0:
            store.edit_note(note_id, f"note {i} edited", "bob", deleted=i % 2 == 0)
        if i % 50 == 0:
            store.set_verdict(case_id, "inconclusive", f"checkpoint {i}", "ana")
            other = store.create_case(f"case {i}", actor="bob")
            store.add_evidence(f"{i:064x}", f"clip {i}.mp4", i, f"/e/{i}", {}, "bob", other)
            store.add_evidence(f"{i:064x}", f"again {i}.mp4", i, f"/e/{i}", {}, "carl", case_id)
    store.audit("ana", "case.report", f"case:{case_id}", {"report_sha256": "00" * 32})
    started = time.perf_counter()
    result = store.verify_history()
    wall = time.perf_counter() - started
    rows = list(store.conn.execute("SELECT id, hash FROM audit ORDER BY id"))
    assert result == {"ok": True, "entries": len(rows), "broken_at": None, "reason": None, "head": rows[-1][1]}
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))  # consecutive ids, first entry 1
    first = store.conn.execute("SELECT prev_hash FROM audit WHERE id = 1").fetchone()[0]
    assert first == GENESIS
    # The earlier head is still part of the longer history: the anchor check passes.
    assert store.verify_history(expect_head=facts["head"])["expected_head_at"] == facts["entries"]
    store.close()
    with capsys.disabled():
        print(f"\nverify_history: {len(rows)} entries in {wall * 1000:.0f} ms")


def test_entries_record_the_facts_they_vouch_for(db):
    path, facts = db
    store = Store(path)
    by_action = {}
    for e in reversed(store.audit_log()):
        by_action.setdefault(e["action"], e["details"])
    run = by_action["analysis.run"]
    assert (run["score"], run["status"], run["threshold"], run["detector"], run["version"], run["weights_sha256"]) == (
        0.629, "ok", 0.5, "sbi", "1", "f0" * 32)
    assert len(run["tracks_sha256"]) == len(run["frames_sha256"]) == 64
    assert by_action["case.create"]["name"] == "Harbour CCTV" and len(by_action["case.create"]["description_sha256"]) == 64
    assert {k: by_action["evidence.add"][k] for k in ("original_name", "size", "stored_path")} == {
        "original_name": "harbour.mp4", "size": 1234, "stored_path": "/evidence/ab/abab"}
    assert by_action["case.add_evidence"] == {"case_id": facts["case_id"], "sha256": SHA}
    note = by_action["note.add"]
    assert (note["case_id"], note["sha256"], note["frame"], note["track_id"]) == (facts["case_id"], SHA, 12, 1)
    assert note["text_sha256"] == store_mod.text_sha256("blend seam at 00:04") and "text" not in note
    verdict = by_action["verdict.set"]
    assert (verdict["verdict"], verdict["case_id"], verdict["sha256"]) == ("likely manipulated", facts["case_id"], SHA)
    assert verdict["reason_sha256"] == store_mod.text_sha256("seam + score")
    store.close()


@pytest.mark.parametrize("attack, action, words", [
    ("UPDATE analyses SET score = 0.02", "analysis.run", ["analysis 1", "score 0.02", "0.629"]),
    ("UPDATE analyses SET status = 'inconclusive', score = NULL", "analysis.run", ["analysis 1", "status"]),
    ("UPDATE analyses SET weights_sha256 = 'ee'", "analysis.run", ["weights_sha256"]),
    ("UPDATE frame_scores SET score = 0.01 WHERE frame = 12", "analysis.run", ["frames_sha256"]),
    ("UPDATE track_scores SET score = 0.01", "analysis.run", ["tracks_sha256"]),
    ("UPDATE cases SET name = 'Other case'", "case.create", ["case 1", "name 'Other case'", "Harbour CCTV"]),
    ("UPDATE cases SET description = 'day footage'", "case.create", ["description_sha256"]),
    ("UPDATE evidence SET original_name = 'innocent.mp4'", "evidence.add", ["innocent.mp4", "harbour.mp4"]),
    ("UPDATE evidence SET stored_path = '/tmp/other'", "evidence.add", ["stored_path"]),
    ("UPDATE evidence_intakes SET original_name = 'x.mp4'", "evidence.intake", ["original_name"]),
    ("DELETE FROM analyses", "analysis.run", ["analysis 1", "missing"]),
    ("DELETE FROM case_evidence", "case.add_evidence", ["missing"]),
])
def test_changed_facts_are_detected_at_the_entry_that_recorded_them(db, attack, action, words):
    path, _ = db
    _tamper(path, "DROP TRIGGER IF EXISTS evidence_intakes_no_update", attack)
    result = _verify(path)
    assert result["ok"] is False
    assert result["broken_at"] == _entry_id(path, action), result
    for word in words:
        assert word in result["reason"], result["reason"]


def test_note_and_verdict_rewritten_past_their_triggers_are_detected(db):
    path, facts = db
    _tamper(path, "DROP TRIGGER notes_no_update", "UPDATE notes SET text = 'nothing to see' WHERE version = 2")
    result = _verify(path)
    assert result["broken_at"] == _entry_id(path, "note.edit") and "text_sha256" in result["reason"]
    _tamper(path, "UPDATE notes SET text = 'blend seam at 00:04, left jaw' WHERE version = 2",
            "DROP TRIGGER verdicts_no_update", "UPDATE verdicts SET verdict = 'likely authentic'")
    result = _verify(path)
    assert result["broken_at"] == _entry_id(path, "verdict.set") and "likely authentic" in result["reason"]


def test_deleted_audit_entry_is_detected(db):
    path, facts = db
    victim = _entry_id(path, "note.add")
    _tamper(path, "DROP TRIGGER audit_no_delete", f"DELETE FROM audit WHERE id = {victim}")
    result = _verify(path)
    assert (result["ok"], result["broken_at"]) == (False, victim + 1)
    assert f"entry {victim} before it are missing" in result["reason"]


def test_deleting_the_newest_entry_is_caught_by_its_fact_or_by_the_head(db):
    path, facts = db
    last = facts["entries"]
    _tamper(path, "DROP TRIGGER audit_no_delete", f"DELETE FROM audit WHERE id = {last}")  # the verdict.set entry
    result = _verify(path)
    assert result["ok"] is False and result["broken_at"] is None
    assert result["reason"] == f"verdict {facts['verdict_id']} has no audit entry (added outside the store)"
    result = _verify(path, expect_head=facts["head"])
    assert result["ok"] is False and "not in this history" in result["reason"]


def test_edited_or_forged_audit_rows_are_detected(db):
    path, facts = db
    target = _entry_id(path, "analysis.run")
    details = json.dumps({"analysis_id": 1, "score": 0.02})
    _tamper(path, "DROP TRIGGER audit_no_update", "UPDATE audit SET details = ? WHERE id = " + str(target), params=[details])
    result = _verify(path)
    assert result["broken_at"] == target and "do not match its hash" in result["reason"]

    path2 = path.with_name("forged.db")
    _populate(path2)
    _tamper(path2, "INSERT INTO audit (at, actor, action, subject, details) VALUES ('now', 'x', 'note.add', 'case:1', '{}')")
    result = _verify(path2)
    assert result["broken_at"] == facts["entries"] + 1 and "not chained" in result["reason"]
    # A note slipped in without any entry.
    path3 = path.with_name("slipped.db")
    _populate(path3)
    _tamper(path3, "INSERT INTO note_ids (case_id) VALUES (1)",
            "INSERT INTO notes (note_id, version, case_id, author, created_at, text, deleted) "
            "VALUES (2, 1, 1, 'eve', 'now', 'planted', 0)")
    result = _verify(path3)
    assert result["reason"] == "note version 2/1 has no audit entry (added outside the store)"


def test_a_rebuilt_chain_is_only_caught_by_the_head_kept_elsewhere(db):
    """The inherent limit: with write access the whole chain can be recomputed. The old head shows it."""
    path, facts = db
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("UPDATE analyses SET score = 0.02")
        prev = GENESIS
        for entry_id, at, actor, action, subject, details in conn.execute(
                "SELECT id, at, actor, action, subject, details FROM audit ORDER BY id").fetchall():
            parsed = json.loads(details)
            if action == "analysis.run":
                parsed["score"] = 0.02
            digest = entry_hash(prev, entry_id, at, actor, action, subject, parsed)
            conn.execute("UPDATE audit SET details = ?, prev_hash = ?, hash = ? WHERE id = ?",
                         [json.dumps(parsed), prev, digest, entry_id])
            prev = digest
    conn.close()
    assert _verify(path)["ok"] is True  # consistent again: nothing inside the file can tell
    anchored = _verify(path, expect_head=facts["head"])
    assert anchored["ok"] is False and anchored["expected_head_at"] is None


def test_existing_database_is_chained_by_the_migration(tmp_path, monkeypatch):
    """A database written before the chain: its entries are hashed as they are, an audit.chain_started
    entry vouches for the facts they could not record, and a later change to those facts is caught."""
    path = tmp_path / "old.db"
    old = [m for m in MIGRATIONS if m[0] < "0005"]
    monkeypatch.setattr(store_mod, "MIGRATIONS", old)
    Store(path).close()
    conn = sqlite3.connect(path)  # what the earlier store wrote, row for row
    with conn:
        conn.execute("INSERT INTO cases (name, description, created_at, created_by) VALUES ('Old case', '', 't', 'ana')")
        conn.execute("INSERT INTO evidence VALUES (?, 'old.mp4', 10, '/e/old', 't', 'ana', '{}')", [SHA])
        conn.execute("INSERT INTO case_evidence VALUES (1, ?, 't')", [SHA])
        conn.execute("INSERT INTO analyses (sha256, detector, detector_version, status, score, threshold) "
                     "VALUES (?, 'sbi', '1', 'ok', 0.629, 0.5)", [SHA])
        conn.execute("INSERT INTO note_ids (case_id) VALUES (1)")
        conn.execute("INSERT INTO notes (note_id, version, case_id, author, created_at, text, deleted) "
                     "VALUES (1, 1, 1, 'ana', 't', 'old note', 0)")
        for action, subject, details in [("case.create", "case:1", {"name": "Old case"}),
                                         ("evidence.add", f"evidence:{SHA}", {"original_name": "old.mp4", "size": 10}),
                                         ("case.add_evidence", "case:1", {"sha256": SHA}),
                                         ("analysis.run", f"evidence:{SHA}", {"analysis_id": 1, "status": "ok"}),
                                         ("note.add", "case:1", {"note_id": 1, "frame": None, "track_id": None})]:
            conn.execute("INSERT INTO audit (at, actor, action, subject, details) VALUES ('t', 'ana', ?, ?, ?)",
                         [action, subject, json.dumps(details, sort_keys=True)])
    conn.close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", old + [m for m in MIGRATIONS if m[0] >= "0005"])
    store = Store(path)
    applied = store.applied_migrations()
    assert applied == [name for name, _ in MIGRATIONS]  # the old ones, then 0005 onwards, in order
    assert applied[applied.index("0005_audit_chain"):][:2] == ["0005_audit_chain", "0006_evidence_intakes"]
    log = list(reversed(store.audit_log()))
    assert [e["action"] for e in log] == ["case.create", "evidence.add", "case.add_evidence", "analysis.run", "note.add",
                                          "audit.chain_started", "evidence.intake"]
    started = log[5]["details"]
    assert started["earlier_entries"] == 5 and started["facts"]["analyses"]["rows"] == 1
    assert [(i["original_name"], i["actor"]) for i in store.evidence_intakes(SHA)] == [("old.mp4", "ana")]
    assert store.verify_history()["ok"] is True
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # the UPDATE trigger is back
        with store.conn:
            store.conn.execute("UPDATE audit SET actor = 'eve' WHERE id = 1")
    store.add_note(1, "new note", "bob")  # new writes extend the chain
    assert store.verify_history()["ok"] is True
    store.close()
    _tamper(path, "UPDATE analyses SET score = 0.02")
    result = _verify(path)
    assert result["broken_at"] == 6 and "analyses" in result["reason"] and "differ" in result["reason"]


def test_database_without_a_chain_does_not_verify(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [m for m in MIGRATIONS if m[0] < "0005"])
    Store(path).close()
    result = _verify(path)
    assert result["ok"] is False and "not a hash chain" in result["reason"]


def test_verify_command(db, capsys, tmp_path):
    path, facts = db
    assert main(["verify", "--db", str(path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"history verified: {facts['entries']} entries, head {facts['head']}"
    assert main(["verify", "--db", str(path), "--expect-head", facts["head"]]) == 0
    assert main(["verify", "--db", str(path), "--expect-head", "ff" * 32]) == 1
    assert "not in this history" in capsys.readouterr().out
    before = path.read_bytes()
    _tamper(path, "UPDATE analyses SET score = 0.02")
    assert main(["verify", "--db", str(path)]) == 1
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"history broken at entry {_entry_id(path, 'analysis.run')}: analysis 1 has score 0.02")
    assert main(["verify", "--db", str(tmp_path / "missing.db")]) == 2
    assert "no database" in capsys.readouterr().err
    assert before != path.read_bytes()  # (the tampering really changed the file)


def test_backup_verifies_the_copy_and_prints_the_head(db, capsys, tmp_path):
    path, facts = db
    assert main(["backup", str(tmp_path / "copy.db"), "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"history verified: {facts['entries']} entries, head {facts['head']}" in out
    _tamper(path, "UPDATE cases SET name = 'Other case'")
    assert main(["backup", str(tmp_path / "copy2.db"), "--db", str(path)]) == 1
    captured = capsys.readouterr()
    assert f"history broken at entry {_entry_id(path, 'case.create')}" in captured.out
    assert "backup warning" in captured.err
    assert (tmp_path / "copy2.db").is_file()  # the tampered state is kept as it is: it is evidence too


def test_report_shows_verified_or_broken_history(db, tiny_detectors):
    from workbench.report import case_report

    path, facts = db
    store = Store(path)
    doc = case_report(store, facts["case_id"], with_heatmaps=False)
    top = doc[: doc.index("<main>")]
    assert f"({facts['entries']} entries, head <span class=\"hash\">{facts['head']}</span>)" in top
    assert "History verified" in top and "BROKEN" not in doc
    store.close()
    _tamper(path, "UPDATE evidence SET original_name = 'innocent.mp4'")
    store = Store(path)
    doc = case_report(store, facts["case_id"], with_heatmaps=False)
    top = doc[: doc.index("<main>")]
    assert f"History BROKEN at entry {_entry_id(path, 'evidence.add')}" in top and "History verified" not in doc
    assert "innocent.mp4" in top  # the reason names the changed value (escaped like every other string)
    store.close()
