"""Evidence-grade reliability of the store under faults: concurrent writers, SIGKILL mid-transaction,
an append-only audit log, and `python -m workbench backup` (also while another process writes).

Worker functions live at module level and use only the store, so forked children never touch
torch or other state inherited from the test process.
"""
from __future__ import annotations

import ast
import inspect
import multiprocessing as mp
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from workbench import store as store_mod
from workbench.store import Store

WRITERS = 8
NOTES_EACH = 200
KILLS = 5

# "fork": children start in milliseconds (spawn took ~10 s for 8 under load); each child opens its
# own Store after the fork, and none of them touches torch or any other state inherited from pytest.
CTX = mp.get_context("fork")
pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL and POSIX processes")


def _new_db(path: Path) -> int:
    store = Store(path)
    case_id = store.create_case("faults", actor="setup")
    store.close()
    return case_id


def _counts(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        return {
            "notes": conn.execute("SELECT count(*) FROM notes").fetchone()[0],
            "note_add": conn.execute("SELECT count(*) FROM audit WHERE action = 'note.add'").fetchone()[0],
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
        }
    finally:
        conn.close()


# -- concurrent writers ----------------------------------------------------------------------------
def _concurrent_writer(path: str, case_id: int, worker: int, barrier, errors) -> None:
    try:
        store = Store(path)
        barrier.wait(timeout=180)
        for i in range(NOTES_EACH):
            store.add_note(case_id, f"writer {worker} note {i}", f"w{worker}", frame=i)
        store.close()
    except BaseException as exc:  # report everything, "database is locked" included
        errors.put(f"writer {worker}: {type(exc).__name__}: {exc}")
        raise


def test_concurrent_writers_lose_nothing_and_never_see_locked(tmp_path):
    path = tmp_path / "wb.db"
    case_id = _new_db(path)
    barrier = CTX.Barrier(WRITERS + 1)
    errors = CTX.Queue()
    procs = [CTX.Process(target=_concurrent_writer, args=(str(path), case_id, w, barrier, errors)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    barrier.wait(timeout=180)  # every child has opened its store: start together
    started = time.perf_counter()
    for p in procs:
        p.join(timeout=120)
    wall = time.perf_counter() - started
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []
    assert [p.exitcode for p in procs] == [0] * WRITERS
    counts = _counts(path)
    print(f"\nconcurrent writers: {WRITERS} processes x {NOTES_EACH} notes in {wall:.2f} s wall "
          f"({WRITERS * NOTES_EACH / wall:.0f} notes/s); notes {counts['notes']}, note.add audit {counts['note_add']}, "
          f"errors {len(reported)}, integrity {counts['integrity']}")
    assert counts == {"notes": WRITERS * NOTES_EACH, "note_add": WRITERS * NOTES_EACH, "integrity": "ok"}
    store = Store(path)
    per_writer = {r["author"]: r["n"] for r in store.db.query("SELECT author, count(*) AS n FROM notes GROUP BY author")}
    assert per_writer == {f"w{w}": NOTES_EACH for w in range(WRITERS)}
    # Note ids are unique and every note.add audit entry names one of them.
    audited = {r["note_id"] for r in store.db.query(
        "SELECT json_extract(details, '$.note_id') AS note_id FROM audit WHERE action = 'note.add'")}
    assert audited == {r["note_id"] for r in store.db.query("SELECT note_id FROM notes")}
    store.close()


# -- SIGKILL mid-transaction -----------------------------------------------------------------------
def _doomed_writer(path: str, case_id: int, commits: int, conn_out) -> None:
    store = Store(path)
    for i in range(commits):
        note_id = store.add_note(case_id, f"committed {i}", "doomed")
        conn_out.send(("committed", note_id))  # only after add_note's transaction has committed
    conn = store.conn
    conn.execute("PRAGMA cache_size=-256")  # a small page cache: the uncommitted rows must spill into the WAL
    conn.execute("BEGIN IMMEDIATE")
    filler = "x" * 1000
    batch = 0

    def insert_batch(n: int) -> None:
        for _ in range(n):
            note_id = conn.execute("INSERT INTO note_ids (case_id) VALUES (?)", [case_id]).lastrowid
            conn.execute(
                "INSERT INTO notes (note_id, version, case_id, author, created_at, text, deleted) "
                "VALUES (?, 1, ?, 'doomed', 'now', ?, 0)", [note_id, case_id, f"UNCOMMITTED {filler}"])
            conn.execute("INSERT INTO audit (at, actor, action, subject, details) VALUES "
                         "('now', 'doomed', 'note.add', 'uncommitted', '{}')")

    # ~5 MB of uncommitted rows: more than the page cache, so SQLite spills frames into the WAL.
    insert_batch(5000)
    conn_out.send(("open", None))
    while True:  # keep writing inside the open transaction until the parent kills us
        insert_batch(200)
        batch += 1
        if batch == 1:
            conn_out.send(("more", None))


def test_sigkill_mid_transaction_keeps_exactly_the_committed_notes(tmp_path):
    path = tmp_path / "wb.db"
    case_id = _new_db(path)
    committed: set[int] = set()
    wal_sizes = []
    for round_ in range(KILLS):
        recv, send = CTX.Pipe(duplex=False)
        proc = CTX.Process(target=_doomed_writer, args=(str(path), case_id, 10 + 7 * round_, send))
        proc.start()
        send.close()
        while True:
            assert recv.poll(60), "the writer never opened its transaction"
            kind, note_id = recv.recv()
            if kind == "more":  # it opened its transaction and wrote more inside it: kill it now
                break
            if kind == "committed":
                committed.add(note_id)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        recv.close()
        assert proc.exitcode == -signal.SIGKILL
        wal = Path(f"{path}-wal")
        wal_sizes.append(wal.stat().st_size if wal.exists() else 0)

        # A fresh connection recovers from the WAL left by the killed process.
        counts = _counts(path)
        assert counts["integrity"] == "ok"
        store = Store(path)
        rows = list(store.db.query("SELECT note_id, text FROM notes"))
        assert {r["note_id"] for r in rows} == committed
        assert not [r for r in rows if r["text"].startswith("UNCOMMITTED")]
        assert counts["notes"] == counts["note_add"] == len(committed)
        assert store.db.execute("SELECT count(*) FROM audit WHERE subject = 'uncommitted'").fetchone()[0] == 0
        # ... and accepts new writes.
        committed.add(store.add_note(case_id, f"after kill {round_}", "survivor"))
        store.close()
    assert max(wal_sizes) > 1_000_000  # uncommitted frames really reached the WAL before the kill
    final = _counts(path)
    print(f"\nSIGKILL: {KILLS} kills mid-transaction; {len(committed)} committed notes all kept, "
          f"0 uncommitted visible; WAL at kill {min(wal_sizes) // 1024}-{max(wal_sizes) // 1024} KiB; "
          f"integrity {final['integrity']}")
    assert final == {"notes": len(committed), "note_add": len(committed), "integrity": "ok"}


# -- append-only audit log -------------------------------------------------------------------------
def test_store_api_offers_no_way_to_change_or_remove_audit_entries():
    public = [name for name, _ in inspect.getmembers(Store, callable) if not name.startswith("_")]
    mutating = [n for n in public if re.search(r"delete|remove|update|edit|purge|clear|drop|replace|set_", n)]
    assert mutating == ["edit_note", "set_verdict"]  # both append a new row (checked below)
    source = inspect.getsource(store_mod)
    tree = ast.parse(source)
    # One exception: the migration that turned the audit log into a hash chain hashed the entries
    # written before it, once, with the UPDATE trigger dropped and put back around it.
    (chain,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_audit_chain"]

    def literals(node) -> list[str]:
        return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]

    in_chain = set(literals(chain))
    changing = re.compile(r"\bUPDATE\s+\[?\w+\]?\s+SET\b|\bDELETE\s+FROM\b|\bREPLACE\s+INTO\b|\bOR\s+REPLACE\b|"
                          r"\bON\s+CONFLICT\b|\bDROP\s+(TABLE|TRIGGER)\b", re.IGNORECASE)
    # The other exception: a job's state and progress (operational state, not a fact; each change of
    # state is an audit entry of its own, and no fact table or audit entry is touched).
    job_state = re.compile(r"^UPDATE jobs SET\b")
    assert [s for s in literals(tree) if changing.search(s) and s not in in_chain and not job_state.match(s)] == []
    assert sorted(s for s in in_chain if changing.search(s)) == [
        "DROP TRIGGER IF EXISTS audit_no_update", "UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?"]
    assert "_append_only(db, \"audit\")" in ast.get_source_segment(source, chain)  # the trigger is put back
    # sqlite-utils table methods that change rows (hashlib's .update() is not one of them).
    assert re.findall(r"\]\s*\.(?:update|upsert|upsert_all|delete|delete_where|drop)\(", source) == []
    for call in ("replace=True", "alter=True"):
        assert call not in source, call
    assert re.findall(r"INSERT INTO audit", source) == ["INSERT INTO audit"]  # the one writer: _audit


def test_edit_and_delete_of_a_note_append_and_leave_old_audit_rows_untouched(tmp_path):
    store = Store(tmp_path / "wb.db")
    case_id = store.create_case("c", actor="ana")
    note_id = store.add_note(case_id, "first", "ana")
    before = [tuple(r) for r in store.conn.execute("SELECT * FROM audit ORDER BY id")]
    notes_before = [tuple(r) for r in store.conn.execute("SELECT * FROM notes ORDER BY id")]
    assert store.edit_note(note_id, "second", "bob") == 2
    assert store.edit_note(note_id, "second", "bob", deleted=True) == 3
    store.set_verdict(case_id, "inconclusive", "r", "bob")
    after = [tuple(r) for r in store.conn.execute("SELECT * FROM audit ORDER BY id")]
    notes_after = [tuple(r) for r in store.conn.execute("SELECT * FROM notes ORDER BY id")]
    assert after[: len(before)] == before and len(after) == len(before) + 3
    assert notes_after[: len(notes_before)] == notes_before and len(notes_after) == 3
    assert [r[3] for r in after[len(before):]] == ["note.edit", "note.delete", "verdict.set"]
    store.close()


@pytest.mark.parametrize("table", ["audit", "notes", "verdicts"])
def test_raw_connection_cannot_rewrite_history(tmp_path, table):
    path = tmp_path / "wb.db"
    store = Store(path)
    case_id = store.create_case("c", actor="ana")
    note_id = store.add_note(case_id, "n", "ana")
    store.set_verdict(case_id, "inconclusive", "r", "ana")
    snapshot = [tuple(r) for r in store.conn.execute(f"SELECT * FROM {table} ORDER BY id")]
    store.close()
    raw = sqlite3.connect(path)  # a second, raw connection: not the Store
    cols = [d[0] for d in raw.execute(f"SELECT * FROM {table} LIMIT 0").description]
    first = dict(zip(cols, snapshot[0]))
    forged = dict(first, **{c: "forged" for c in cols if c in ("action", "text", "verdict", "actor", "author")})
    placeholders = ", ".join("?" for _ in cols)
    attacks = [
        (f"UPDATE {table} SET id = id", []),
        (f"UPDATE {table} SET {cols[-1]} = NULL WHERE id = 1", []),
        (f"DELETE FROM {table}", []),
        (f"DELETE FROM {table} WHERE id = 1", []),
        (f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({placeholders})", list(forged.values())),
        (f"REPLACE INTO {table} ({', '.join(cols)}) VALUES ({placeholders})", list(forged.values())),
        (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({placeholders}) ON CONFLICT(id) DO UPDATE SET id = id",
         list(forged.values())),
    ]
    if table == "notes":  # a new row id colliding on (note_id, version) would REPLACE the old version
        attacks.append((f"INSERT OR REPLACE INTO notes ({', '.join(cols)}) VALUES ({placeholders})",
                        list(dict(forged, id=999, note_id=note_id, version=1).values())))
    for sql, params in attacks:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            with raw:
                raw.execute(sql, params)
    assert [tuple(r) for r in raw.execute(f"SELECT * FROM {table} ORDER BY id")] == snapshot
    raw.close()


# -- backup ----------------------------------------------------------------------------------------
def _populate(path: Path, notes: int = 50) -> int:
    store = Store(path)
    case_id = store.create_case("backed up", actor="ana")
    store.add_evidence("ab" * 32, "clip.mp4", 123, "/nowhere/clip.mp4", {"fps": 25}, "ana", case_id)
    for i in range(notes):
        note_id = store.add_note(case_id, f"note {i}", "ana", frame=i)
    store.edit_note(note_id, "edited", "bob")
    store.set_verdict(case_id, "inconclusive", "too early", "bob")
    store.close()
    return case_id


def _table_rows(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: conn.execute(f"SELECT * FROM [{t}] ORDER BY rowid").fetchall() for t in tables}
    finally:
        conn.close()


def test_backup_command_copies_and_checks(tmp_path, capsys):
    from workbench.cli import main

    src, dest = tmp_path / "wb.db", tmp_path / "backups" / "copy.db"
    case_id = _populate(src)
    src_bytes = src.read_bytes()
    assert main(["backup", str(dest), "--db", str(src)]) == 0
    out = capsys.readouterr().out
    assert str(dest) in out and "integrity ok" in out and "tables" in out and "rows" in out
    assert _table_rows(dest) == _table_rows(src)
    assert _counts(dest)["integrity"] == "ok"
    copy = Store(dest)
    assert copy.migrate() == [] and copy.notes(case_id)[-1]["text"] == "edited"
    copy.close()
    assert not list(dest.parent.glob("*.partial*"))
    assert src.read_bytes() == src_bytes  # the source is untouched

    # An existing destination is refused unless --force; the source is never the destination.
    marker = b"not a database"
    dest.write_bytes(marker)
    assert main(["backup", str(dest), "--db", str(src)]) == 2
    assert "exists" in capsys.readouterr().err and dest.read_bytes() == marker
    assert main(["backup", str(dest), "--db", str(src), "--force"]) == 0
    assert _table_rows(dest) == _table_rows(src)
    capsys.readouterr()
    for argv in (["backup", str(src), "--db", str(src)], ["backup", str(src), "--db", str(src), "--force"]):
        assert main(argv) == 2
        assert "source" in capsys.readouterr().err
    assert src.read_bytes() == src_bytes
    assert main(["backup", str(tmp_path / "x.db"), "--db", str(tmp_path / "missing.db")]) == 2
    assert "no database" in capsys.readouterr().err and not (tmp_path / "missing.db").exists()


def test_backup_default_database_comes_from_config(tmp_path, monkeypatch, capsys):
    from workbench.cli import main

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    _populate(tmp_path / "home" / "workbench.db", notes=3)
    assert main(["backup", str(tmp_path / "copy.db")]) == 0
    assert _table_rows(tmp_path / "copy.db") == _table_rows(tmp_path / "home" / "workbench.db")


def _busy_writer(path: str, case_id: int, started, stop) -> None:
    store = Store(path)
    i = 0
    while not stop.is_set():
        store.add_note(case_id, f"busy {i} " + "y" * 200, "busy")
        i += 1
        if i == 50:
            started.set()
    store.close()


def test_backup_while_another_process_writes(tmp_path, capsys):
    from workbench.cli import main

    src = tmp_path / "wb.db"
    case_id = _populate(src, notes=10)
    started, stop = CTX.Event(), CTX.Event()
    writer = CTX.Process(target=_busy_writer, args=(str(src), case_id, started, stop))
    writer.start()
    try:
        assert started.wait(60)
        codes = [main(["backup", str(tmp_path / f"copy{i}.db"), "--db", str(src)]) for i in range(3)]
        out = capsys.readouterr()
    finally:
        stop.set()
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert codes == [0, 0, 0], out.err
    final = _counts(src)["notes"]
    seen = []
    for i in range(3):
        counts = _counts(tmp_path / f"copy{i}.db")
        assert counts["integrity"] == "ok" and counts["notes"] == counts["note_add"] + 1  # + the edit
        seen.append(counts["notes"])
    assert 10 + 1 + 50 <= seen[0] <= seen[1] <= seen[2] <= final
    print(f"\nbackup under load: copies with {seen} notes while the source grew to {final}; all integrity ok")
