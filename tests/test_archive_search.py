"""Archiving a case or a file (hidden, audited, nothing deleted) and searching across cases."""
from __future__ import annotations

import sqlite3

import pytest

from workbench.cases import listed_cases, listed_evidence
from workbench.store import Store, StoreError

PROBE = {"width": 64, "height": 48, "fps": 25.0, "frames": 10, "duration_s": 0.4, "codec": "h264"}
SHA_A, SHA_B = "ab" * 32, "cd" * 32


def _file(store: Store, sha256: str, name: str, case_id: int) -> None:
    store.add_evidence(sha256, name, 1, f"/evidence/{sha256}", PROBE, "test", case_id)


@pytest.fixture
def two_cases(fresh_store):
    first = fresh_store.create_case("Harbour fire", "night footage", actor="ana")
    second = fresh_store.create_case("Mayor speech", "press clip", actor="ana")
    _file(fresh_store, SHA_A, "interview_take%1.mp4", first)
    _file(fresh_store, SHA_B, "wrong upload.mp4", first)
    return fresh_store, first, second


def _rows(store: Store) -> dict[str, int]:
    return {t: n for t, n in store.table_counts().items() if t != "audit" and t != "archive_records"}


def test_archiving_a_file_hides_it_records_who_and_why_and_deletes_nothing(two_cases):
    store, first, _ = two_cases
    before = _rows(store)
    store.archive("ana", "uploaded by mistake", first, SHA_B)
    assert [e["sha256"] for e in listed_evidence(store, first)] == [SHA_A]
    assert [e["sha256"] for e in listed_evidence(store, first, include_archived=True)] == [SHA_A, SHA_B]
    assert [e["sha256"] for e in listed_evidence(store, first, keep=SHA_B)] == [SHA_A, SHA_B]
    assert _rows(store) == before  # no row of any other table removed or added
    assert store.evidence(SHA_B)["original_name"] == "wrong upload.mp4"
    entry = store.audit_log()[0]
    assert (entry["actor"], entry["action"], entry["subject"]) == ("ana", "evidence.archive", f"evidence:{SHA_B}")
    (record,) = store.archive_history(first)
    assert (record["actor"], record["reason"], record["archived"]) == ("ana", "uploaded by mistake", 1)
    assert store.verify_history()["ok"]


def test_unarchive_is_a_later_record_and_both_stay(two_cases):
    store, first, second = two_cases
    store.archive("ana", "duplicate case", second)
    assert [c["id"] for c in listed_cases(store)] == [first]
    assert [c["id"] for c in listed_cases(store, keep=second)] == [first, second]
    store.unarchive("bob", "not a duplicate after all", second)
    assert [c["id"] for c in listed_cases(store)] == [first, second]
    history = store.archive_history(second)
    assert [(r["archived"], r["actor"], r["reason"]) for r in history] == [
        (1, "ana", "duplicate case"), (0, "bob", "not a duplicate after all")]
    actions = [(e["actor"], e["action"]) for e in store.audit_log(subject=f"case:{second}")]
    assert actions[:2] == [("bob", "case.unarchive"), ("ana", "case.archive")]
    assert store.verify_history()["ok"]


@pytest.mark.parametrize("actor, reason", [("", "mistake"), ("  ", "mistake"), ("ana", ""), ("ana", "   ")])
def test_archive_without_a_name_or_a_reason_is_refused_and_nothing_written(two_cases, actor, reason):
    store, first, _ = two_cases
    audit_before = len(store.audit_log())
    with pytest.raises(StoreError, match="name|reason"):
        store.archive(actor, reason, first, SHA_B)
    with pytest.raises(StoreError, match="name|reason"):
        store.archive(actor, reason, first)
    assert store.archive_history(first) == [] and len(store.audit_log()) == audit_before
    assert len(listed_evidence(store, first)) == 2


def test_archive_refuses_a_file_of_another_case_and_a_second_archive(two_cases):
    store, first, second = two_cases
    with pytest.raises(StoreError, match="not in case"):
        store.archive("ana", "mistake", second, SHA_A)
    with pytest.raises(StoreError, match="not archived"):
        store.unarchive("ana", "why not", first)
    store.archive("ana", "mistake", first)
    with pytest.raises(StoreError, match="already archived"):
        store.archive("ana", "again", first)
    assert len(store.archive_history(first)) == 1


def test_archive_records_are_append_only(two_cases):
    store, first, _ = two_cases
    record = store.archive("ana", "mistake", first)
    for sql in ("UPDATE archive_records SET reason = 'x' WHERE id = ?", "DELETE FROM archive_records WHERE id = ?"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store.conn.execute(sql, [record])


def test_an_archive_record_changed_outside_the_store_breaks_the_history(tmp_path):
    store = Store(tmp_path / "w.db")
    case_id = store.create_case("c", actor="ana")
    store.archive("ana", "mistake", case_id)
    store.conn.execute("DROP TRIGGER archive_records_no_update")
    store.conn.execute("UPDATE archive_records SET reason = 'rewritten'")
    store.conn.commit()
    result = store.verify_history()
    store.close()
    assert not result["ok"] and "archive record" in result["reason"]


# -- search ---------------------------------------------------------------------------------------
def test_search_finds_case_names_file_names_hash_prefixes_and_notes(two_cases):
    store, first, second = two_cases
    note = store.add_note(second, "Speaker's lips drift at 00:04", "ana", sha256=None, frame=None)
    kinds = lambda q: [(r["kind"], r["case_id"], r["field"]) for r in store.search(q)]  # noqa: E731
    assert kinds("harbour") == [("case", first, "name")]
    assert kinds("PRESS") == [("case", second, "description")]
    assert kinds("wrong upl") == [("file", first, "file name")]
    assert kinds(SHA_B[:6].upper()) == [("file", first, "sha256")]
    assert kinds("cdcd") == [("file", first, "sha256")]
    assert kinds("dcdc") == []  # a hash matches by its prefix only
    (hit,) = store.search("lips drift")
    assert (hit["kind"], hit["note_id"], hit["case_name"]) == ("note", note, "Mayor speech")


def test_search_wildcards_and_quotes_match_literally(two_cases):
    store, first, second = two_cases
    store.add_note(second, "50% of frames; the 'seam' \"here\"; a_b", "ana")
    assert [r["text"] for r in store.search("take%1")] == ["interview_take%1.mp4"]
    assert store.search("take%2") == []
    assert [r["kind"] for r in store.search("%")] == ["file", "note"]
    assert [r["kind"] for r in store.search("_")] == ["file", "note"]  # not "any one character"
    assert store.search("a_b")[0]["kind"] == "note" and store.search("axb") == []
    assert [r["kind"] for r in store.search("'seam' \"here\"")] == ["note"]
    assert store.search("'; DROP TABLE cases; --") == []
    assert store.search("\\") == [] and len(store.cases()) == 2


def test_search_leaves_out_archived_cases_files_and_their_notes_unless_asked(two_cases):
    store, first, second = two_cases
    store.add_note(first, "wrong upload noted", "ana", sha256=SHA_B, frame=3)
    store.archive("ana", "mistake", first, SHA_B)
    assert store.search("wrong") == []
    found = store.search("wrong", include_archived=True)
    assert [(r["kind"], r["archived"]) for r in found] == [("file", True), ("note", True)]
    assert found[1]["frame"] == 3
    store.archive("ana", "closed by mistake", second)
    assert store.search("mayor") == [] and store.search("mayor", include_archived=True)[0]["archived"]


def test_search_refuses_an_empty_query(fresh_store):
    with pytest.raises(StoreError, match="text"):
        fresh_store.search("   ")


def test_cli_search_prints_one_line_per_result_and_refuses_an_empty_query(tmp_path, capsys):
    from workbench import cli

    db = tmp_path / "w.db"
    store = Store(db)
    try:
        case_id = store.create_case("Harbour fire", actor="ana")
        _file(store, SHA_A, "take_%1.mp4", case_id)
        store.add_note(case_id, "seam at 50%\nsecond line 'quoted'", "ana", sha256=SHA_A, frame=4)
        store.archive("ana", "mistake", case_id, SHA_A)
    finally:
        store.close()
    assert cli.main(["search", "--db", str(db), "%"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "0 result(s)"  # the file and its note are archived
    assert cli.main(["search", "--db", str(db), "--archived", "50%"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == [f"note\tcase #{case_id} Harbour fire\tfile {SHA_A}\tnote 1 frame 4\t"
                                "note: seam at 50% second line 'quoted'\t[archived]"]
    assert cli.main(["search", "--db", str(db), "--archived", "take_"]) == 0
    assert capsys.readouterr().out.startswith(f"file\tcase #{case_id} Harbour fire\tfile {SHA_A}\tfile name: take_%1.mp4")
    assert cli.main(["search", "--db", str(db), "  "]) == 2
    assert "search needs some text" in capsys.readouterr().err
