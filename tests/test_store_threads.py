"""One Store shared by many threads, as the app shares it between sessions: nothing lost, no errors.

The Streamlit app keeps one `Store` in `st.cache_resource` and every session's script thread calls
it. These tests drive one shared object from many threads through the same methods the pages use
(add_note, edit_note, set_verdict, notes, verdicts) and count every row afterwards.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from workbench.store import Store, StoreError

THREADS = 8
NOTES_EACH = 40
SHARED_EDITS_EACH = 10
VERDICTS_EACH = 10
JOIN_TIMEOUT_S = 180  # only catches a hang


def _run_threads(target, n: int) -> tuple[list[str], float]:
    """Start n threads on target(worker, barrier) together; returns (errors, wall seconds)."""
    errors: list[str] = []
    barrier = threading.Barrier(n)

    def wrapped(worker: int) -> None:
        try:
            target(worker, barrier)
        except BaseException as exc:  # every error counts, "database is locked" included
            errors.append(f"thread {worker}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=wrapped, args=(w,)) for w in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert not [t for t in threads if t.is_alive()], "a writer thread hung"
    return errors, time.perf_counter() - started


@pytest.fixture(params=["file", "memory"])
def shared_store(request, tmp_path):
    store = Store(tmp_path / "wb.db" if request.param == "file" else ":memory:")
    yield store
    store.close()


def test_threads_sharing_one_store_lose_nothing(shared_store, capsys):
    store = shared_store
    case_id = store.create_case("shared", actor="setup")
    shared_note = store.add_note(case_id, "everyone edits this", "setup")
    returned_notes: dict[int, list[int]] = {}
    returned_versions: list[int] = []
    returned_verdicts: list[int] = []

    def analyst(worker: int, barrier: threading.Barrier) -> None:
        barrier.wait(timeout=60)
        mine = []
        for i in range(NOTES_EACH):
            mine.append(store.add_note(case_id, f"w{worker} note {i}", f"w{worker}", frame=i))
            if i < SHARED_EDITS_EACH:
                returned_versions.append(store.edit_note(shared_note, f"w{worker} edit {i}", f"w{worker}"))
            if i < VERDICTS_EACH:
                returned_verdicts.append(store.set_verdict(case_id, "inconclusive", f"w{worker} {i}", f"w{worker}"))
            store.notes(case_id)  # the Notes page reads while others write
        for note_id in mine:
            store.edit_note(note_id, f"w{worker} edited", f"w{worker}")
        store.verdicts(case_id)
        returned_notes[worker] = mine

    errors, wall = _run_threads(analyst, THREADS)
    assert errors == []

    new_notes = THREADS * NOTES_EACH
    shared_edits = THREADS * SHARED_EDITS_EACH
    verdicts = THREADS * VERDICTS_EACH
    counts = {
        "notes": store.db["notes"].count,
        "verdicts": store.db["verdicts"].count,
        "note ids": store.conn.execute("SELECT count(DISTINCT note_id) FROM notes").fetchone()[0],
    }
    assert counts == {"notes": 1 + shared_edits + 2 * new_notes, "verdicts": verdicts, "note ids": 1 + new_notes}
    actions = Counter(r["action"] for r in store.db.query("SELECT action FROM audit"))
    assert {a: actions[a] for a in ("case.create", "note.add", "note.edit", "verdict.set")} == {
        "case.create": 1, "note.add": 1 + new_notes, "note.edit": shared_edits + new_notes, "verdict.set": verdicts}

    # Ids handed back are the stored ones, unique, and each note has versions 1..n without a hole.
    ids = [n for mine in returned_notes.values() for n in mine]
    assert len(ids) == len(set(ids)) == new_notes and shared_note not in ids
    assert sorted(returned_versions) == list(range(2, 2 + shared_edits))
    assert [h["version"] for h in store.note_history(shared_note)] == list(range(1, 2 + shared_edits))
    assert sorted(returned_verdicts) == sorted(v["id"] for v in store.verdicts(case_id))
    for worker, mine in returned_notes.items():
        for i, note_id in enumerate(mine):
            history = store.note_history(note_id)
            assert [(h["version"], h["text"]) for h in history] == [(1, f"w{worker} note {i}"), (2, f"w{worker} edited")]
    audited = {r["n"] for r in store.db.query(
        "SELECT json_extract(details, '$.note_id') AS n FROM audit WHERE action = 'note.add'")}
    assert audited == {shared_note, *ids}
    # Every append read the last hash inside its own write transaction: one unbroken chain.
    history = store.verify_history()
    assert history["ok"], history
    assert history["entries"] == store.db["audit"].count
    with capsys.disabled():
        writes = new_notes * 2 + shared_edits + verdicts
        print(f"\n{store.path if store.path == ':memory:' else 'file'} store shared by {THREADS} threads: "
              f"{new_notes} notes + {new_notes + shared_edits} edits + {verdicts} verdicts ({writes} writes) in "
              f"{wall:.2f} s, errors {len(errors)}")


def test_a_failing_transaction_in_one_thread_keeps_the_others_writes(shared_store):
    store = shared_store
    case_id = store.create_case("rollbacks", actor="setup")
    failures = Counter()
    kept: list[int] = []

    def worker(n: int, barrier: threading.Barrier) -> None:
        barrier.wait(timeout=60)
        for i in range(NOTES_EACH):
            if n % 2:
                kept.append(store.add_note(case_id, f"kept {n}.{i}", f"w{n}"))
                continue
            # A store call that writes, then fails (the case does not exist) and rolls back ...
            with pytest.raises(StoreError):
                store.add_evidence(f"{n:02d}{i:062d}", "doomed.mp4", 1, "/nowhere", {}, f"w{n}", case_id=10_000)
            failures["store"] += 1
            # ... and a caller's own transaction on store.conn that fails after writing.
            with pytest.raises(RuntimeError):
                with store.conn:
                    store.conn.execute("INSERT INTO note_ids (case_id) VALUES (?)", [case_id])
                    raise RuntimeError("rolled back on purpose")
            failures["raw"] += 1

    errors, _ = _run_threads(worker, THREADS)
    assert errors == []
    assert failures == {"store": THREADS // 2 * NOTES_EACH, "raw": THREADS // 2 * NOTES_EACH}
    assert len(kept) == len(set(kept)) == THREADS // 2 * NOTES_EACH
    assert sorted(n["note_id"] for n in store.notes(case_id)) == sorted(kept)
    assert store.db["evidence"].count == 0
    assert store.db["note_ids"].count == len(kept)
    assert store.conn.execute("SELECT count(*) FROM audit WHERE action = 'note.add'").fetchone()[0] == len(kept)
    assert store.conn.execute("SELECT count(*) FROM audit WHERE action = 'evidence.add'").fetchone()[0] == 0


def test_a_transaction_held_open_in_one_thread_neither_leaks_nor_loses_another_threads_note(tmp_path):
    store = Store(tmp_path / "wb.db")
    case_id = store.create_case("isolation")
    inserted, other_done = threading.Event(), threading.Event()
    result: dict = {}

    def holder() -> None:
        try:
            with store.conn:
                store.conn.execute("INSERT INTO note_ids (case_id) VALUES (?)", [case_id])
                inserted.set()
                # The other thread cannot commit into (or be committed by) this transaction.
                result["other_done_while_open"] = other_done.wait(1.0)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass

    def other() -> None:
        inserted.wait(30)
        result["note"] = store.add_note(case_id, "committed by the other thread", "bob")
        other_done.set()

    threads = [threading.Thread(target=holder), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert result["other_done_while_open"] is False  # it waited for the write lock
    assert [n["text"] for n in store.notes(case_id)] == ["committed by the other thread"]
    assert store.db["note_ids"].count == 1
    store.close()


def test_each_thread_has_its_own_connection_and_close_closes_them_all(tmp_path):
    store = Store(tmp_path / "wb.db")
    seen = []

    def grab() -> None:
        seen.append(store.conn)
        store.cases()

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert len({id(c) for c in seen}) == 4 and store.conn not in seen
    assert store.conn is store.conn and store.db.conn is store.conn
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    store.close()
    with pytest.raises(Exception):
        seen[0].execute("SELECT 1")


def test_connections_of_finished_threads_are_closed(tmp_path):
    """Streamlit runs every rerun in a new thread: their connections must not pile up."""
    store = Store(tmp_path / "wb.db")
    case_id = store.create_case("reruns")
    finished = []

    def rerun(i: int) -> None:
        store.add_note(case_id, f"rerun {i}", "ana")
        finished.append(store.conn)

    for i in range(20):
        t = threading.Thread(target=rerun, args=(i,))
        t.start()
        t.join(JOIN_TIMEOUT_S)
    last = threading.Thread(target=store.cases)  # the next new thread closes the finished threads' connections
    last.start()
    last.join(JOIN_TIMEOUT_S)
    closed = 0
    for conn in finished:
        try:
            conn.execute("SELECT 1")
        except Exception:
            closed += 1
    assert closed == 20
    assert len(store.notes(case_id)) == 20
    store.close()
