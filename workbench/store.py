"""The case store: SQLite through sqlite-utils, migrations, and every read/write of facts.

Facts (cases, evidence, analyses, tracks, scores, notes, verdicts, the audit log) live here;
nothing else writes SQL. Values are always bound as parameters. Notes, verdicts and the audit
log are append-only: triggers refuse UPDATE and DELETE, so an edit is a new version.

One `Store` may be shared by many threads (the app shares one between every session): each
thread gets its own SQLite connection, and every write is one `BEGIN IMMEDIATE` transaction.
The audit log is a hash chain whose entries record the facts they vouch for; `verify_history`
checks both the chain and the facts. See `verify_history` for what that can and cannot prove.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import uuid
import weakref
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import sqlite_utils

MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = []

VERDICTS = ("likely manipulated", "likely authentic", "inconclusive")


def migration(name: str):
    """Register a schema migration; applied once, in order, recorded in `_migrations`."""

    def decorate(fn):
        if any(existing == name for existing, _ in MIGRATIONS):
            raise ValueError(f"duplicate migration {name}")
        MIGRATIONS.append((name, fn))
        return fn

    return decorate


def utc_now() -> str:
    """Current UTC time, ISO 8601 with microseconds and a Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _append_only(db: sqlite_utils.Database, table: str) -> None:
    for op in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )


@migration("0001_initial")
def _initial(db: sqlite_utils.Database) -> None:
    db["cases"].create(
        {"id": int, "name": str, "description": str, "created_at": str, "created_by": str}, pk="id"
    )
    db["evidence"].create(
        {
            "sha256": str, "original_name": str, "size": int, "stored_path": str, "added_at": str,
            "added_by": str, "probe": str,
        },
        pk="sha256",
    )
    db["case_evidence"].create(
        {"case_id": int, "sha256": str, "added_at": str}, pk=("case_id", "sha256"),
        foreign_keys=[("case_id", "cases", "id"), ("sha256", "evidence", "sha256")],
    )
    # One face-detection + tracking pass over a video with given parameters; detectors share it.
    db["face_runs"].create(
        {
            "id": int, "sha256": str, "params_key": str, "params": str, "frames_analysed": str,
            "detection_frames": str, "timings": str, "created_at": str,
        },
        pk="id", foreign_keys=[("sha256", "evidence", "sha256")],
    )
    db["face_runs"].create_index(["sha256", "params_key"], unique=True)
    db["tracks"].create(
        {"face_run_id": int, "track_id": int, "first_frame": int, "last_frame": int, "n_frames": int},
        pk=("face_run_id", "track_id"), foreign_keys=[("face_run_id", "face_runs", "id")],
    )
    db["boxes"].create(
        {
            "face_run_id": int, "frame": int, "track_id": int, "x1": float, "y1": float, "x2": float,
            "y2": float, "prob": float, "detected": int, "landmarks": str,
        },
        pk=("face_run_id", "frame", "track_id"), foreign_keys=[("face_run_id", "face_runs", "id")],
    )
    db["analyses"].create(
        {
            "id": int, "sha256": str, "face_run_id": int, "detector": str, "detector_version": str,
            "weights_sha256": str, "params_key": str, "params": str, "software": str, "status": str,
            "reason": str, "score": float, "threshold": float, "rule": str, "frames_used": str,
            "timings": str, "created_at": str, "actor": str,
        },
        pk="id", foreign_keys=[("sha256", "evidence", "sha256"), ("face_run_id", "face_runs", "id")],
    )
    db["analyses"].create_index(["sha256", "detector", "params_key"])
    db["track_scores"].create(
        {"analysis_id": int, "track_id": int, "score": float, "n_frames": int, "status": str, "reason": str},
        pk=("analysis_id", "track_id"), foreign_keys=[("analysis_id", "analyses", "id")],
    )
    db["frame_scores"].create(
        {"analysis_id": int, "frame": int, "track_id": int, "score": float},
        pk=("analysis_id", "frame", "track_id"), foreign_keys=[("analysis_id", "analyses", "id")],
    )
    db["notes"].create(
        {
            "id": int, "note_id": int, "version": int, "case_id": int, "sha256": str, "frame": int,
            "time_s": float, "track_id": int, "author": str, "created_at": str, "text": str, "deleted": int,
        },
        pk="id", foreign_keys=[("case_id", "cases", "id")],
    )
    db["notes"].create_index(["case_id", "note_id"])
    db["notes"].create_index(["note_id", "version"], unique=True)
    # Allocates note ids: a note's versions share the id, each version is its own row.
    db["note_ids"].create({"id": int, "case_id": int}, pk="id")
    db["verdicts"].create(
        {"id": int, "case_id": int, "sha256": str, "verdict": str, "reason": str, "author": str, "created_at": str},
        pk="id", foreign_keys=[("case_id", "cases", "id")],
    )
    db["audit"].create(
        {"id": int, "at": str, "actor": str, "action": str, "subject": str, "details": str}, pk="id"
    )
    for table in ("notes", "verdicts", "audit"):
        _append_only(db, table)


@migration("0002_upstream_aggregate")
def _upstream(db: sqlite_utils.Database) -> None:
    # Detectors reproduced from published solutions also report their authors' own video rule.
    db["analyses"].add_column("upstream", str)


@migration("0003_append_only_no_replace")
def _no_replace(db: sqlite_utils.Database) -> None:
    # `INSERT OR REPLACE` deletes the conflicting row without firing DELETE triggers (unless
    # recursive_triggers is on), so it could rewrite history past the UPDATE/DELETE triggers.
    # Refuse any insert that would collide with an existing row of a history table.
    collisions = {
        "notes": "id = NEW.id OR (note_id = NEW.note_id AND version = NEW.version)",
        "verdicts": "id = NEW.id",
        "audit": "id = NEW.id",
    }
    for table, where in collisions.items():
        db.execute(
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table} "
            f"WHEN EXISTS (SELECT 1 FROM {table} WHERE {where}) "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )


@migration("0004_bias_reports")
def _bias_reports(db: sqlite_utils.Database) -> None:
    # One row per detector per bias evaluation run, so the Detectors page can show the latest.
    db["bias_reports"].create(
        {"id": int, "created_at": str, "actor": str, "detector": str, "detector_version": str, "dataset": str,
         "labels_sha256": str, "videos": int, "scored": int, "threshold": float, "result": str, "html_path": str},
        pk="id",
    )
    db["bias_reports"].create_index(["detector", "created_at"])


# -- the audit hash chain ---------------------------------------------------------------------------
GENESIS = "0" * 64  # the prev_hash of the first entry
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _plain(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def canonical_json(value) -> str:
    """The one JSON spelling of a value that entry hashes are computed over (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)


def text_sha256(text: str | None) -> str | None:
    """sha256 of a text (UTF-8), None for None: entries vouch for texts without repeating them."""
    return None if text is None else hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def entry_hash(prev_hash: str, entry_id: int, at: str, actor: str, action: str, subject: str, details) -> str:
    """An audit entry's hash: sha256 over the previous entry's hash and a canonical JSON of the entry.

    Args:
        details: the entry's details as parsed JSON (not the stored text).
    """
    body = canonical_json({"id": entry_id, "at": at, "actor": actor, "action": action, "subject": subject,
                           "details": details})
    return hashlib.sha256(f"{prev_hash}\n{body}".encode("utf-8", "surrogatepass")).hexdigest()


def _parse_details(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text  # hashed as the raw string, so a non-JSON entry still verifies as written


def _append_audit(conn: sqlite3.Connection, actor: str, action: str, subject: str, details: dict | None) -> int:
    """Append one chained entry; the caller holds a write transaction (BEGIN IMMEDIATE), so the last
    hash read here is still the last when this entry is inserted."""
    if not conn.in_transaction:
        raise StoreError("audit entries are appended inside a write transaction")
    last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    entry_id, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    if prev is None:
        raise StoreError(f"audit entry {entry_id - 1} has no hash: the chain is broken; run `python -m workbench verify`")
    facts = json.loads(canonical_json(details or {}))  # exactly what a reader will parse back
    at = utc_now()
    digest = entry_hash(prev, entry_id, at, actor, action, subject, facts)
    conn.execute(
        "INSERT INTO audit (id, at, actor, action, subject, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [entry_id, at, actor, action, subject, canonical_json(facts), prev, digest],
    )
    return entry_id


# What each kind of entry vouches for: the facts of one row, computed from the row as stored (read
# back inside the writing transaction), so that verification recomputes exactly the same values.
def _case_facts(row: dict, _scores=None) -> dict:
    return {"case_id": row["id"], "name": row["name"], "description_sha256": text_sha256(row["description"])}


def _evidence_facts(row: dict, _scores=None) -> dict:
    return {"sha256": row["sha256"], "original_name": row["original_name"], "size": row["size"],
            "stored_path": row["stored_path"]}


def _link_facts(row: dict, _scores=None) -> dict:
    return {"case_id": row["case_id"], "sha256": row["sha256"]}


def _intake_facts(row: dict, _scores=None) -> dict:
    return {"intake_id": row["id"], "sha256": row["sha256"], "case_id": row["case_id"],
            "original_name": row["original_name"], "actor": row["actor"]}


def _analysis_facts(row: dict, scores: dict) -> dict:
    tracks, frames = scores.get(row["id"], (EMPTY_SHA256, EMPTY_SHA256))
    return {"analysis_id": row["id"], "sha256": row["sha256"], "face_run_id": row["face_run_id"],
            "detector": row["detector"], "version": row["detector_version"], "weights_sha256": row["weights_sha256"],
            "params_key": row["params_key"], "status": row["status"], "score": row["score"],
            "threshold": row["threshold"], "tracks_sha256": tracks, "frames_sha256": frames}


def _note_facts(row: dict, _scores=None) -> dict:
    return {"note_id": row["note_id"], "version": row["version"], "case_id": row["case_id"], "sha256": row["sha256"],
            "frame": row["frame"], "time_s": row["time_s"], "track_id": row["track_id"],
            "text_sha256": text_sha256(row["text"]), "deleted": row["deleted"],
            # A time range's end (migration 0012); .get: a database opened unmigrated lacks the columns.
            "frame_end": row.get("frame_end"), "time_end_s": row.get("time_end_s")}


def _verdict_facts(row: dict, _scores=None) -> dict:
    return {"verdict_id": row["id"], "case_id": row["case_id"], "sha256": row["sha256"], "verdict": row["verdict"],
            "reason_sha256": text_sha256(row["reason"])}


def _ensemble_facts(row: dict, _scores=None) -> dict:
    return {"ensemble_id": row["id"], "sha256": row["sha256"], "face_run_id": row["face_run_id"], "rule": row["rule"],
            "members": row["members"], "status": row["status"], "score": row["score"], "threshold": row["threshold"]}


def _archive_facts(row: dict) -> dict:
    return {"archive_id": row["id"], "kind": row["kind"], "case_id": row["case_id"], "sha256": row["sha256"],
            "archived": row["archived"], "reason_sha256": text_sha256(row["reason"])}


ARCHIVE_ACTIONS = ("case.archive", "case.unarchive", "evidence.archive", "evidence.unarchive")


class _FactTable:
    """A table whose rows audit entries vouch for, and how a row is matched with its entry."""

    def __init__(self, table: str, label: str, order_by: str, actions: tuple[str, ...], row_key, entry_key, facts,
                 baseline_columns: tuple[str, ...], added_facts: tuple[str, ...] = ()):
        self.table, self.label, self.order_by, self.actions = table, label, order_by, actions
        self.row_key, self.entry_key, self.facts = row_key, entry_key, facts
        # Facts entries record only since a later migration: an older entry without one vouched for None.
        self.added_facts = added_facts
        # Frozen: the chain_started entry of an existing database recorded a digest over these columns.
        self.baseline_columns = baseline_columns

    def baseline_line(self, row: dict) -> bytes:
        return canonical_json([row[c] for c in self.baseline_columns]).encode() + b"\n"


FACT_TABLES = (
    _FactTable("cases", "case", "id", ("case.create",), lambda r: r["id"], lambda d: d["case_id"], _case_facts,
               ("id", "name", "description", "created_at", "created_by")),
    _FactTable("evidence", "evidence", "sha256", ("evidence.add",), lambda r: r["sha256"], lambda d: d["sha256"],
               _evidence_facts, ("sha256", "original_name", "size", "stored_path", "added_at", "added_by")),
    _FactTable("case_evidence", "case-evidence link", "case_id, sha256", ("case.add_evidence",),
               lambda r: (r["case_id"], r["sha256"]), lambda d: (d["case_id"], d["sha256"]), _link_facts,
               ("case_id", "sha256")),
    _FactTable("evidence_intakes", "evidence intake", "id", ("evidence.intake",), lambda r: r["id"],
               lambda d: d["intake_id"], _intake_facts, ("id", "sha256", "case_id", "original_name", "actor", "at")),
    _FactTable("analyses", "analysis", "id", ("analysis.run",), lambda r: r["id"], lambda d: d["analysis_id"],
               _analysis_facts, ("id", "sha256", "face_run_id", "detector", "detector_version", "weights_sha256",
                                 "params_key", "status", "score", "threshold")),
    _FactTable("notes", "note version", "id", ("note.add", "note.edit", "note.delete"),
               lambda r: (r["note_id"], r["version"]), lambda d: (d["note_id"], d["version"]), _note_facts,
               ("id", "note_id", "version", "case_id", "sha256", "frame", "time_s", "track_id", "author", "text",
                "deleted"), added_facts=("frame_end", "time_end_s")),
    _FactTable("verdicts", "verdict", "id", ("verdict.set",), lambda r: r["id"], lambda d: d["verdict_id"],
               _verdict_facts, ("id", "case_id", "sha256", "verdict", "reason", "author")),
    _FactTable("ensembles", "ensemble", "id", ("ensemble.compute",), lambda r: r["id"], lambda d: d["ensemble_id"],
               _ensemble_facts, ("id", "sha256", "face_run_id", "rule", "members", "status", "score", "threshold")),
    _FactTable("archive_records", "archive record", "id", ARCHIVE_ACTIONS, lambda r: r["id"],
               lambda d: d["archive_id"], lambda row, _scores=None: _archive_facts(row),
               ("id", "kind", "case_id", "sha256", "archived", "reason", "actor", "at")),
)
_VOUCHES = {action: spec for spec in FACT_TABLES for action in spec.actions}

TRACK_SCORES_SQL = ("SELECT analysis_id, track_id, score, n_frames, status, reason FROM track_scores {where} "
                    "ORDER BY analysis_id, track_id")
FRAME_SCORES_SQL = "SELECT analysis_id, frame, track_id, score FROM frame_scores {where} ORDER BY analysis_id, frame, track_id"


def _digests_by_analysis(rows) -> dict[int, str]:
    """{analysis_id: sha256 over its rows}, from rows sorted by analysis id (streamed, one hasher at a time)."""
    out, current, hasher = {}, None, None
    for row in rows:
        if row[0] != current:
            if hasher is not None:
                out[current] = hasher.hexdigest()
            current, hasher = row[0], hashlib.sha256()
        hasher.update(canonical_json(list(row[1:])).encode() + b"\n")
    if hasher is not None:
        out[current] = hasher.hexdigest()
    return out


def _score_digests(conn: sqlite3.Connection, analysis_id: int | None = None) -> dict[int, tuple[str, str]]:
    """{analysis_id: (track scores sha256, frame scores sha256)} of one analysis or of all."""
    where, params = ("WHERE analysis_id = ?", [analysis_id]) if analysis_id is not None else ("", [])
    tracks = _digests_by_analysis(conn.execute(TRACK_SCORES_SQL.format(where=where), params))
    frames = _digests_by_analysis(conn.execute(FRAME_SCORES_SQL.format(where=where), params))
    return {a: (tracks.get(a, EMPTY_SHA256), frames.get(a, EMPTY_SHA256)) for a in set(tracks) | set(frames)}


def _has_table(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [table]).fetchone() is not None


def _rows(conn: sqlite3.Connection, sql: str, params=()) -> Iterator[dict]:
    cursor = conn.execute(sql, params)
    cols = [d[0] for d in cursor.description]
    return (dict(zip(cols, values)) for values in cursor)


def _one(conn: sqlite3.Connection, sql: str, params=()) -> dict | None:
    return next(_rows(conn, sql, params), None)


def _insert_id(conn: sqlite3.Connection, sql: str, params) -> int:
    """Run an `INSERT ... RETURNING id` and return the id (allocated inside the caller's transaction)."""
    return conn.execute(sql, params).fetchall()[0][0]


def _returning(conn: sqlite3.Connection, sql: str, params) -> dict | None:
    """Run an `UPDATE ... RETURNING` to completion and return its first row (None: no row matched)."""
    cursor = conn.execute(sql, params)
    rows = cursor.fetchall()
    return dict(zip([d[0] for d in cursor.description], rows[0])) if rows else None


def _baseline(conn: sqlite3.Connection, spec: _FactTable) -> dict:
    hasher, rows = hashlib.sha256(), 0
    for row in _rows(conn, f"SELECT * FROM {spec.table} ORDER BY {spec.order_by}"):
        hasher.update(spec.baseline_line(row))
        rows += 1
    return {"rows": rows, "sha256": hasher.hexdigest()}


@migration("0005_audit_chain")
def _audit_chain(db: sqlite_utils.Database) -> None:
    # Make the audit log a hash chain. Entries written before it are chained as they are, in id
    # order; the facts they could not record (scores, texts, names) are vouched for by one
    # `audit.chain_started` entry holding a digest of every fact table as it is now.
    conn = db.conn
    conn.execute("ALTER TABLE audit ADD COLUMN prev_hash TEXT")
    conn.execute("ALTER TABLE audit ADD COLUMN hash TEXT")
    # The UPDATE trigger would refuse the one-time hashing of earlier entries: drop it, hash, put it back.
    conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
    prev, earlier = GENESIS, 0
    for entry_id, at, actor, action, subject, details in conn.execute(
        "SELECT id, at, actor, action, subject, details FROM audit ORDER BY id"
    ).fetchall():
        digest = entry_hash(prev, entry_id, at, actor, action, subject, _parse_details(details))
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", [prev, digest, entry_id])
        prev, earlier = digest, earlier + 1
    _append_only(db, "audit")
    facts = {spec.table: _baseline(conn, spec) for spec in FACT_TABLES if _has_table(conn, spec.table)}
    if earlier or any(f["rows"] for f in facts.values()):  # a new database has nothing to vouch for yet
        _append_audit(conn, "workbench", "audit.chain_started", "audit", {"earlier_entries": earlier, "facts": facts})


@migration("0006_evidence_intakes")
def _evidence_intakes(db: sqlite_utils.Database) -> None:
    # Every submission of a file (the same bytes may come from several people under several names).
    db["evidence_intakes"].create(
        {"id": int, "sha256": str, "case_id": int, "original_name": str, "actor": str, "at": str}, pk="id",
        foreign_keys=[("sha256", "evidence", "sha256"), ("case_id", "cases", "id")],
    )
    db["evidence_intakes"].create_index(["sha256"])
    _append_only(db, "evidence_intakes")
    db.execute(
        "CREATE TRIGGER IF NOT EXISTS evidence_intakes_no_replace BEFORE INSERT ON evidence_intakes "
        "WHEN EXISTS (SELECT 1 FROM evidence_intakes WHERE id = NEW.id) "
        "BEGIN SELECT RAISE(ABORT, 'evidence_intakes is append-only'); END"
    )
    conn = db.conn
    # Files added before this table existed: their first submission is the one that was kept.
    for sha256, name, actor, at in conn.execute(
        "SELECT sha256, original_name, added_by, added_at FROM evidence ORDER BY rowid"
    ).fetchall():
        intake_id = _insert_id(conn, "INSERT INTO evidence_intakes (sha256, case_id, original_name, actor, at) "
                                     "VALUES (?, NULL, ?, ?, ?) RETURNING id", [sha256, name, actor, at])
        row = _one(conn, "SELECT * FROM evidence_intakes WHERE id = ?", [intake_id])
        _append_audit(conn, "workbench", "evidence.intake", f"evidence:{sha256}", dict(_intake_facts(row), backfilled=True))


@migration("0007_ensembles")
def _ensembles(db: sqlite_utils.Database) -> None:
    # The ensemble of one analysis run, stored with its rule, members and threshold so that the app,
    # the report and the JSON read the same result instead of each recomputing its own.
    db["ensembles"].create(
        {"id": int, "sha256": str, "face_run_id": int, "rule": str, "members": str, "left_out": str, "status": str,
         "score": float, "threshold": float, "created_at": str, "actor": str},
        pk="id", foreign_keys=[("sha256", "evidence", "sha256"), ("face_run_id", "face_runs", "id")],
    )
    db["ensembles"].create_index(["sha256", "face_run_id"])


@migration("0008_evaluations")
def _evaluations(db: sqlite_utils.Database) -> None:
    # One row per evaluation run (the whole report, as written beside its HTML) and one per detector
    # (and the ensemble) with its headline figures, so the Detectors page can show each one's latest.
    db["evaluations"].create(
        {"id": int, "created_at": str, "actor": str, "dataset": str, "labels_sha256": str, "videos": int,
         "report_sha256": str, "report": str, "json_path": str, "html_path": str},
        pk="id",
    )
    db["evaluation_results"].create(
        {"id": int, "evaluation_id": int, "detector": str, "kind": str, "detector_version": str, "threshold": float,
         "n_real": int, "n_fake": int, "auc": float, "auc_low": float, "auc_high": float, "result": str},
        pk="id", foreign_keys=[("evaluation_id", "evaluations", "id")],
    )
    db["evaluation_results"].create_index(["detector", "evaluation_id"])
    for table in ("evaluations", "evaluation_results"):
        _append_only(db, table)  # a measured figure is never edited: a new run is a new row


@migration("0009_jobs")
def _jobs(db: sqlite_utils.Database) -> None:
    # One row per analysis job (workbench/jobs.py): its request, state and progress, the worker
    # process running it (pid, its start time, host) and a heartbeat, so a dead worker is seen.
    # State changes are audited (job.submit, job.start, job.cancel, job.end, job.requeue); progress
    # and heartbeats are not (they change every second and vouch for nothing).
    db["jobs"].create(
        {"id": int, "sha256": str, "case_id": int, "detectors": str, "sampling": str, "ensemble_rule": str,
         "actor": str, "state": str, "stage": str, "done": int, "total": int, "stage_started_at": str,
         "created_at": str, "started_at": str, "finished_at": str, "heartbeat_at": str, "worker_pid": int,
         "worker_start": str, "worker_host": str, "cancel_requested": int, "cancelled_by": str, "error": str,
         "result_id": int, "result": str},
        pk="id", foreign_keys=[("sha256", "evidence", "sha256")], defaults={"cancel_requested": 0},
    )
    db["jobs"].create_index(["sha256", "id"])
    db["jobs"].create_index(["state"])


@migration("0010_api_tokens")
def _api_tokens(db: sqlite_utils.Database) -> None:
    # HTTP API tokens (workbench/api.py): only each token's sha256 is kept, never the token. A
    # revocation is a row of its own, so both tables stay append-only and a token's history is
    # never rewritten; creation and revocation are audit entries (token.create, token.revoke).
    db["api_tokens"].create({"id": int, "name": str, "token_sha256": str, "created_at": str, "created_by": str},
                            pk="id")
    db["api_tokens"].create_index(["token_sha256"], unique=True)
    db["api_tokens"].create_index(["name"])
    db["api_token_revocations"].create({"token_id": int, "revoked_at": str, "revoked_by": str}, pk="token_id",
                                       foreign_keys=[("token_id", "api_tokens", "id")])
    for table in ("api_tokens", "api_token_revocations"):
        _append_only(db, table)


@migration("0011_batches")
def _batches(db: sqlite_utils.Database) -> None:
    # A batch (workbench/batch.py, `python -m workbench batch`): who ran it on which case, with
    # which plan, over how many files; one row per file as it ends (its outcome and the row of the
    # results table); one row when the batch ends. All append-only: a batch's progress is rows
    # added, never a row changed (a batch with no end row is running, or its driver died).
    db["batches"].create(
        {"id": int, "case_id": int, "actor": str, "created_at": str, "source": str, "plan": str, "files": int,
         "code": str, "driver_pid": int, "driver_start": str, "driver_host": str},
        pk="id", foreign_keys=[("case_id", "cases", "id")],
    )
    db["batch_items"].create(
        {"id": int, "batch_id": int, "position": int, "file": str, "original_name": str, "sha256": str,
         "status": str, "reason": str, "score": float, "analysis_s": float, "faces": int, "row": str, "at": str},
        pk="id", foreign_keys=[("batch_id", "batches", "id")],
    )
    db["batch_items"].create_index(["batch_id", "position"])
    db["batch_ends"].create(
        {"id": int, "batch_id": int, "status": str, "at": str, "counts": str},
        pk="id", foreign_keys=[("batch_id", "batches", "id")],
    )
    db["batch_ends"].create_index(["batch_id"], unique=True)
    for table in ("batches", "batch_items", "batch_ends"):
        _append_only(db, table)


@migration("0012_note_ranges")
def _note_ranges(db: sqlite_utils.Database) -> None:
    # A note may be pinned to a time range (frame .. frame_end, inclusive), not only to one frame.
    # Columns added to an append-only table: earlier versions read NULL (a single frame, or none);
    # a range is written only with a new version, never by changing a row.
    db.execute("ALTER TABLE notes ADD COLUMN frame_end INTEGER")
    db.execute("ALTER TABLE notes ADD COLUMN time_end_s REAL")


@migration("0013_archive")
def _archive(db: sqlite_utils.Database) -> None:
    # Archiving hides a mistaken case, or a file of a case, from the lists; nothing is deleted. Each
    # archive and unarchive is a row of its own (who, when, why), so the table stays append-only and
    # a target's state is its newest row. kind "case": the whole case (sha256 NULL); kind
    # "evidence": one file of one case (the same bytes may stay listed in another case).
    db["archive_records"].create(
        {"id": int, "kind": str, "case_id": int, "sha256": str, "archived": int, "reason": str, "actor": str,
         "at": str},
        pk="id", foreign_keys=[("case_id", "cases", "id")],
    )
    db["archive_records"].create_index(["case_id", "sha256"])
    _append_only(db, "archive_records")
    db.execute(
        "CREATE TRIGGER IF NOT EXISTS archive_records_no_replace BEFORE INSERT ON archive_records "
        "WHEN EXISTS (SELECT 1 FROM archive_records WHERE id = NEW.id) "
        "BEGIN SELECT RAISE(ABORT, 'archive_records is append-only'); END"
    )


# -- files ------------------------------------------------------------------------------------------
def _private_dir(folder: Path) -> None:
    """Create missing folders as 0700 (whatever the umask); existing folders are left as they are."""
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        missing.append(parent)
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)


def _private_file(path: Path) -> None:
    """Create the file as 0600 if missing; tighten an existing one we own to 0600 (with -wal, -shm)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            st = p.stat()
            if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(p, 0o600)
        except FileNotFoundError:
            continue
        except PermissionError:
            continue  # not ours to change: the owner decides


class StoreError(Exception):
    """A request the store refuses (unknown case, bad verdict, ...)."""


class NoteChanged(StoreError):
    """An edit made on an older version of a note than the latest: nothing was written.

    `latest` is the note's newest version (a row of `notes`), for the caller to show beside the edit.
    """

    def __init__(self, note_id: int, expected_version: int, latest: dict):
        self.note_id, self.expected_version, self.latest = note_id, expected_version, latest
        super().__init__(f"note {note_id} changed since you opened it (you edited v{expected_version}; "
                         f"v{latest['version']} was saved by {latest['author']} at {latest['created_at']}): "
                         "reload to see the newer text")


class Store:
    """The workbench's SQLite database, safe to share between threads.

    Each thread that touches `conn` or `db` gets its own connection (WAL, busy timeout, foreign
    keys on); `close()` closes all of them. ":memory:" is a private named in-memory database that
    every thread of this Store sees.

    >>> store = Store(":memory:")
    >>> case_id = store.create_case("demo", actor="analyst")
    >>> store.case(case_id)["name"]
    'demo'
    >>> store.verify_history()["ok"]
    True
    """

    def __init__(self, path: str | Path = ":memory:", busy_timeout_ms: int = 30_000, migrate: bool = True):
        """Open (and create) a store.

        Args:
            path: the database file, or ":memory:".
            busy_timeout_ms: how long a write waits for another writer before "database is locked".
            migrate: apply pending migrations (False: open as it is, e.g. to verify it).
        """
        self.path = str(path)
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[tuple[weakref.ref, sqlite3.Connection]] = []
        self._closed = False
        self._anchor: sqlite3.Connection | None = None
        self._uri: str | None = None
        if self.path == ":memory:":
            # The memdb VFS, not a shared cache: a shared cache answers a busy table with
            # SQLITE_LOCKED, which the busy timeout does not wait on. The anchor keeps it alive.
            self._uri = f"file:/workbench-{uuid.uuid4().hex}?vfs=memdb"
            self._anchor = self._connect()
        else:
            _private_dir(Path(self.path).parent)
            _private_file(Path(self.path))
        if migrate:
            if self._uri is None:
                self.db.execute("PRAGMA journal_mode=WAL")
            self.migrate()
        if self._uri is None:
            _private_file(Path(self.path))  # -wal and -shm now exist

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._uri or self.path, uri=self._uri is not None,
                               timeout=self._busy_timeout_ms / 1000, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise StoreError("the store is closed")
                self._close_finished_threads()
                conn = self._connect()
                self._conns.append((weakref.ref(threading.current_thread()), conn))
            self._local.conn = conn
            self._local.db = sqlite_utils.Database(conn)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's sqlite-utils view of its connection."""
        self.conn
        return self._local.db

    def _close_finished_threads(self) -> None:
        # Streamlit runs each script rerun in a new thread: without this, connections would pile up.
        kept = []
        for thread_ref, conn in self._conns:
            thread = thread_ref()
            if thread is None or not thread.is_alive():
                conn.close()
            else:
                kept.append((thread_ref, conn))
        self._conns = kept

    def close(self) -> None:
        """Close every connection this store opened, in every thread."""
        with self._lock:
            self._closed = True
            for _, conn in self._conns:
                conn.close()
            self._conns = []
            if self._anchor is not None:
                self._anchor.close()
                self._anchor = None
            self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on this thread's connection, taking the write lock up front.

        BEGIN IMMEDIATE: every write here reads before it writes (the last audit hash, a note's
        latest version), and a deferred transaction could read a state another writer changes.
        """
        conn = self.conn
        if conn.in_transaction:
            raise StoreError("a store write cannot run inside a transaction already open on this thread")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    # -- schema ---------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending migrations in order; safe to call on every open.

        Returns:
            Names of the migrations applied now.
        """
        applied_now = []
        conn = self.conn
        # Reads first: an up-to-date database is opened without taking the write lock, which a busy
        # writer in another process could otherwise keep from us for a long time.
        if not _has_table(conn, "_migrations"):
            with conn:
                conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
        done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
        for name, fn in [m for m in MIGRATIONS if m[0] not in done]:
            # BEGIN IMMEDIATE: two processes opening a fresh database must not both migrate.
            with self._writing() as conn:
                if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone():
                    continue
                fn(self.db)
                conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", [name, utc_now()])
                applied_now.append(name)
        return applied_now

    def table_counts(self) -> dict[str, int]:
        """Rows per table (for backup checks)."""
        return {t: self.db[t].count for t in self.db.table_names()}

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check` ("ok" when the file is sound)."""
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT name FROM _migrations ORDER BY rowid")]

    # -- audit ----------------------------------------------------------------------------------
    def audit(self, actor: str, action: str, subject: str, details: dict | None = None) -> int:
        """Append one entry to the audit log (its own transaction); returns its id."""
        with self._writing() as conn:
            return _append_audit(conn, actor, action, subject, details)

    def audit_log(self, subject: str | None = None, limit: int = 1000) -> list[dict]:
        """Audit entries, newest first (of one subject, or all)."""
        if subject is None:
            rows = self.db.query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", [limit])
        else:
            rows = self.db.query("SELECT * FROM audit WHERE subject = ? ORDER BY id DESC LIMIT ?", [subject, limit])
        return [dict(r, details=_parse_details(r["details"])) for r in rows]

    def verify_history(self, expect_head: str | None = None) -> dict:
        """Check the audit hash chain, and every fact row against the entry that recorded it.

        Detects an audit entry changed, removed or inserted (hash, prev_hash or id gap), and facts
        changed in the other tables: an analysis's score, status, weights or scores, a case's name,
        an evidence's original name, size or path, a note's text, a verdict; a fact row without its
        audit entry, and an entry whose row is gone. Reads one snapshot, streaming the tables.

        The limit: whoever can write the database file can also rebuild the whole chain with new
        hashes, or cut its newest entries. Only a head hash kept somewhere else (printed by `verify`,
        `backup` and the case report) shows that: pass it as `expect_head`.

        Args:
            expect_head: a head hash recorded earlier; the history must still contain it.

        Returns:
            {"ok", "entries", "broken_at" (audit id or None), "reason" (None when ok), "head"}, plus
            "expected_head_at" (the entry whose hash it is, or None) when expect_head is given.
        """
        conn = self.conn
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")  # one snapshot for the chain and every fact table
        try:
            return _verify(conn, expect_head)
        finally:
            if own:
                conn.rollback()

    # -- cases ----------------------------------------------------------------------------------
    def create_case(self, name: str, description: str = "", actor: str = "local") -> int:
        name = name.strip()
        if not name:
            raise StoreError("a case needs a name")
        with self._writing() as conn:
            case_id = _insert_id(
                conn, "INSERT INTO cases (name, description, created_at, created_by) VALUES (?, ?, ?, ?) RETURNING id",
                [name, description, utc_now(), actor],
            )
            row = _one(conn, "SELECT * FROM cases WHERE id = ?", [case_id])
            _append_audit(conn, actor, "case.create", f"case:{case_id}", _case_facts(row))
        return case_id

    def case(self, case_id: int) -> dict:
        rows = list(self.db.query("SELECT * FROM cases WHERE id = ?", [case_id]))
        if not rows:
            raise StoreError(f"no case with id {case_id}")
        return rows[0]

    def cases(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM cases ORDER BY id"))

    # -- evidence -------------------------------------------------------------------------------
    def add_evidence(
        self, sha256: str, original_name: str, size: int, stored_path: str, probe: dict, actor: str,
        case_id: int | None = None,
    ) -> dict:
        """Record a stored evidence file (one row per sha256), link it to a case, and record this
        intake (who submitted it under which name, when) even when the bytes were already known."""
        with self._writing() as conn:
            exists = conn.execute("SELECT 1 FROM evidence WHERE sha256 = ?", [sha256]).fetchone()
            if not exists:
                conn.execute(
                    "INSERT INTO evidence (sha256, original_name, size, stored_path, added_at, added_by, probe) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [sha256, original_name, size, stored_path, utc_now(), actor, json.dumps(probe)],
                )
                row = _one(conn, "SELECT * FROM evidence WHERE sha256 = ?", [sha256])
                _append_audit(conn, actor, "evidence.add", f"evidence:{sha256}", _evidence_facts(row))
            if case_id is not None:
                self._require_case(conn, case_id)
                cur = conn.execute(
                    "INSERT OR IGNORE INTO case_evidence (case_id, sha256, added_at) VALUES (?, ?, ?)",
                    [case_id, sha256, utc_now()],
                )
                if cur.rowcount:
                    _append_audit(conn, actor, "case.add_evidence", f"case:{case_id}",
                                  {"case_id": case_id, "sha256": sha256})
            intake_id = _insert_id(
                conn, "INSERT INTO evidence_intakes (sha256, case_id, original_name, actor, at) "
                      "VALUES (?, ?, ?, ?, ?) RETURNING id", [sha256, case_id, original_name, actor, utc_now()],
            )
            intake = _one(conn, "SELECT * FROM evidence_intakes WHERE id = ?", [intake_id])
            _append_audit(conn, actor, "evidence.intake", f"evidence:{sha256}",
                          dict(_intake_facts(intake), repeat=bool(exists)))
        return self.evidence(sha256)

    def evidence_intakes(self, sha256: str) -> list[dict]:
        """Every submission of these bytes, oldest first: sha256, case_id, original_name, actor, at."""
        return list(self.db.query("SELECT * FROM evidence_intakes WHERE sha256 = ? ORDER BY id", [sha256]))

    def evidence(self, sha256: str) -> dict:
        rows = list(self.db.query("SELECT * FROM evidence WHERE sha256 = ?", [sha256]))
        if not rows:
            raise StoreError(f"no evidence with sha256 {sha256}")
        return dict(rows[0], probe=json.loads(rows[0]["probe"]))

    def case_evidence(self, case_id: int) -> list[dict]:
        rows = self.db.query(
            "SELECT e.* FROM evidence e JOIN case_evidence ce ON ce.sha256 = e.sha256 "
            "WHERE ce.case_id = ? ORDER BY ce.added_at",
            [case_id],
        )
        return [dict(r, probe=json.loads(r["probe"])) for r in rows]

    # -- face runs and analyses -----------------------------------------------------------------
    def results_key(self, sha256: str) -> str:
        """A key that changes whenever an analysis or a face run of this evidence is stored (for caches)."""
        row = self.conn.execute(
            "SELECT (SELECT count(*) FROM analyses WHERE sha256 = ?), (SELECT max(id) FROM analyses WHERE sha256 = ?), "
            "(SELECT count(*) FROM face_runs WHERE sha256 = ?), (SELECT max(id) FROM face_runs WHERE sha256 = ?)",
            [sha256] * 4,
        ).fetchone()
        return f"{self._uri or self.path}:{sha256}:" + ":".join(str(v) for v in row)

    def face_runs(self, sha256: str) -> list[dict]:
        """Every face run of an evidence file, newest first (one query)."""
        rows = self.db.query("SELECT * FROM face_runs WHERE sha256 = ? ORDER BY id DESC", [sha256])
        return [_decode_json(r, "params", "frames_analysed", "detection_frames", "timings") for r in rows]

    def case_overview(self, case_id: int) -> list[dict]:
        """The evidence of a case, each with its latest analysis per detector and its latest verdict
        (for that file, or for the whole case), in three queries whatever the number of files."""
        items = self.case_evidence(case_id)
        latest: dict[str, dict[str, dict]] = {e["sha256"]: {} for e in items}
        for row in self.db.query(
            "SELECT a.sha256, a.detector, a.status, a.score, a.threshold, a.id FROM analyses a "
            "JOIN case_evidence ce ON ce.sha256 = a.sha256 WHERE ce.case_id = ? ORDER BY a.id", [case_id]
        ):
            latest[row["sha256"]][row["detector"]] = dict(row)
        verdicts = self.verdicts(case_id)  # newest first
        for e in items:
            e["latest_analyses"] = latest[e["sha256"]]
            e["latest_verdict"] = next((v for v in verdicts if v["sha256"] in (e["sha256"], None)), None)
        return items

    def find_face_run(self, sha256: str, params_key: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM face_runs WHERE sha256 = ? AND params_key = ?", [sha256, params_key]))
        return _decode_json(rows[0], "params", "frames_analysed", "detection_frames", "timings") if rows else None

    def face_run_tracks(self, face_run_id: int) -> dict[int, list[dict]]:
        """Boxes of every track of a face run: {track_id: [box rows sorted by frame]}."""
        tracks: dict[int, list[dict]] = {}
        for row in self.db.query(
            "SELECT * FROM boxes WHERE face_run_id = ? ORDER BY track_id, frame", [face_run_id]
        ):
            row = dict(row)
            row["landmarks"] = json.loads(row["landmarks"]) if row["landmarks"] else None
            tracks.setdefault(row["track_id"], []).append(row)
        return tracks

    def find_analysis(self, sha256: str, detector: str, version: str, weights_sha256: str | None, params_key: str) -> dict | None:
        """A stored, reusable (ok or inconclusive) analysis with exactly these inputs."""
        rows = list(
            self.db.query(
                "SELECT * FROM analyses WHERE sha256 = ? AND detector = ? AND detector_version = ? "
                "AND weights_sha256 IS ? AND params_key = ? AND status IN ('ok', 'inconclusive') "
                "ORDER BY id DESC LIMIT 1",
                [sha256, detector, version, weights_sha256, params_key],
            )
        )
        return self._analysis_row(rows[0]) if rows else None

    def analyses(self, sha256: str) -> list[dict]:
        return [self._analysis_row(r) for r in self.db.query("SELECT * FROM analyses WHERE sha256 = ? ORDER BY id", [sha256])]

    def _analysis_row(self, row: dict) -> dict:
        return _decode_json(row, "params", "software", "frames_used", "timings", "upstream")

    def analysis_scores(self, analysis_id: int) -> tuple[dict[int, dict], list[dict]]:
        """(track scores by track id, frame score rows) of one analysis."""
        tracks = {r["track_id"]: dict(r) for r in self.db.query("SELECT * FROM track_scores WHERE analysis_id = ?", [analysis_id])}
        frames = [dict(r) for r in self.db.query("SELECT * FROM frame_scores WHERE analysis_id = ? ORDER BY frame, track_id", [analysis_id])]
        return tracks, frames

    def save_face_run(self, sha256: str, params_key: str, params: dict, frames_analysed: list[int],
                      detection_frames: list[int], tracks: Iterable, timings: dict) -> int:
        """Store a face run and its tracks' boxes in one transaction; returns its id."""
        with self._writing() as conn:
            run_id = _insert_id(
                conn,
                "INSERT INTO face_runs (sha256, params_key, params, frames_analysed, detection_frames, timings, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [sha256, params_key, json.dumps(params, sort_keys=True), json.dumps(frames_analysed),
                 json.dumps(detection_frames), json.dumps(timings), utc_now()],
            )
            for track in tracks:
                frames = track.frames
                if not frames:
                    continue
                conn.execute(
                    "INSERT INTO tracks (face_run_id, track_id, first_frame, last_frame, n_frames) VALUES (?, ?, ?, ?, ?)",
                    [run_id, track.id, frames[0], frames[-1], len(frames)],
                )
                conn.executemany(
                    "INSERT INTO boxes (face_run_id, frame, track_id, x1, y1, x2, y2, prob, detected, landmarks) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (run_id, p.frame, track.id, *p.box, p.prob, int(p.detected),
                         json.dumps(p.landmarks) if p.landmarks else None)
                        for p in (track.points[f] for f in frames)
                    ],
                )
        return run_id

    def save_analysis(self, record: dict, track_scores: dict[int, dict], frame_scores: list[tuple[int, int, float]], actor: str) -> int:
        """Store one detector's analysis with its scores, and audit it (score, status, weights, digests of
        the track and frame scores), in one transaction."""
        row = dict(record)
        for key in ("params", "software", "frames_used", "timings", "upstream"):
            row[key] = json.dumps(row.get(key))
        row.setdefault("created_at", utc_now())
        row["actor"] = actor
        cols = ", ".join(row)
        with self._writing() as conn:
            analysis_id = _insert_id(
                conn, f"INSERT INTO analyses ({cols}) VALUES ({', '.join('?' for _ in row)}) RETURNING id", list(row.values())
            )
            conn.executemany(
                "INSERT INTO track_scores (analysis_id, track_id, score, n_frames, status, reason) VALUES (?, ?, ?, ?, ?, ?)",
                [(analysis_id, tid, t.get("score"), t.get("n_frames", 0), t.get("status"), t.get("reason"))
                 for tid, t in track_scores.items()],
            )
            conn.executemany(
                "INSERT INTO frame_scores (analysis_id, frame, track_id, score) VALUES (?, ?, ?, ?)",
                [(analysis_id, f, t, s) for f, t, s in frame_scores],
            )
            stored = _one(conn, "SELECT * FROM analyses WHERE id = ?", [analysis_id])
            _append_audit(conn, actor, "analysis.run", f"evidence:{record['sha256']}",
                          _analysis_facts(stored, _score_digests(conn, analysis_id)))
        return analysis_id

    # -- bias evaluations -----------------------------------------------------------------------
    def save_bias_report(self, report: dict, html_path: str | None, actor: str) -> list[int]:
        """Store one row per detector of a bias evaluation run (and audit it)."""
        ids = []
        with self._writing() as conn:
            for name, d in report["detectors"].items():
                ids.append(_insert_id(
                    conn,
                    "INSERT INTO bias_reports (created_at, actor, detector, detector_version, dataset, labels_sha256, "
                    "videos, scored, threshold, result, html_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    [report["created_at"], actor, name, d["version"], report["dataset"], report["labels_sha256"],
                     report["videos"], d["scored"], d["threshold"], json.dumps(d), html_path],
                ))
            _append_audit(conn, actor, "bias.evaluate", f"dataset:{report['labels_sha256']}",
                          {"dataset": report["dataset"], "detectors": sorted(report["detectors"]), "videos": report["videos"],
                           "report_ids": ids})
        return ids

    # -- evaluation runs --------------------------------------------------------------------------
    def save_evaluation(self, report: dict, json_path: str | None, html_path: str | None, actor: str) -> int:
        """Store one evaluation run: the report, and per detector and the ensemble its headline
        figures; audited with the report's sha256. Returns the run's id."""
        text = canonical_json(report)
        report_sha256 = hashlib.sha256(text.encode()).hexdigest()
        sections = [(name, "detector", d) for name, d in report["detectors"].items()]
        if report.get("ensemble"):
            sections.append(("ensemble", "ensemble", report["ensemble"]))
        with self._writing() as conn:
            run_id = _insert_id(
                conn,
                "INSERT INTO evaluations (created_at, actor, dataset, labels_sha256, videos, report_sha256, report, "
                "json_path, html_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [report["created_at"], actor, report["dataset"], report["labels_sha256"], report["videos"],
                 report_sha256, text, json_path, html_path],
            )
            for name, kind, d in sections:
                m = d["metrics"]
                conn.execute(
                    "INSERT INTO evaluation_results (evaluation_id, detector, kind, detector_version, threshold, n_real, "
                    "n_fake, auc, auc_low, auc_high, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, name, kind, d.get("version"), d.get("threshold"), m["n_real"], m["n_fake"], m["auc"],
                     m["auc_low"], m["auc_high"], canonical_json(d)],
                )
            _append_audit(conn, actor, "evaluation.run", f"dataset:{report['labels_sha256']}",
                          {"evaluation_id": run_id, "dataset": report["dataset"], "videos": report["videos"],
                           "detectors": sorted(report["detectors"]), "report_sha256": report_sha256})
        return run_id

    def latest_evaluation(self, detector: str) -> dict | None:
        """The newest evaluation of a detector ("ensemble" for the ensemble): the run's facts
        (created_at, dataset, labels_sha256, videos, html_path) and its section of the report as `result`."""
        row = _one(self.conn,
                   "SELECT r.*, e.created_at, e.actor, e.dataset, e.labels_sha256, e.videos, e.report_sha256, "
                   "e.json_path, e.html_path FROM evaluation_results r JOIN evaluations e ON e.id = r.evaluation_id "
                   "WHERE r.detector = ? ORDER BY r.evaluation_id DESC, r.id DESC LIMIT 1", [detector])
        return _decode_json(row, "result") if row else None

    def evaluation(self, evaluation_id: int) -> dict | None:
        """One stored evaluation run with its whole report (decoded)."""
        row = _one(self.conn, "SELECT * FROM evaluations WHERE id = ?", [evaluation_id])
        return _decode_json(row, "report") if row else None

    # -- ensembles --------------------------------------------------------------------------------
    def save_ensemble(self, sha256: str, face_run_id: int | None, ensemble: dict, member_ids: dict[str, int],
                      actor: str) -> int:
        """Store the ensemble of one analysis run: rule, status, score, threshold and the member
        analyses it combined ({detector: analysis id}); audited with those facts."""
        with self._writing() as conn:
            ensemble_id = _insert_id(
                conn,
                "INSERT INTO ensembles (sha256, face_run_id, rule, members, left_out, status, score, threshold, "
                "created_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [sha256, face_run_id, ensemble["rule"], canonical_json(member_ids), json.dumps(ensemble["left_out"]),
                 ensemble["status"], ensemble["score"], ensemble["threshold"], utc_now(), actor],
            )
            stored = _one(conn, "SELECT * FROM ensembles WHERE id = ?", [ensemble_id])
            _append_audit(conn, actor, "ensemble.compute", f"evidence:{sha256}", _ensemble_facts(stored))
        return ensemble_id

    def latest_ensemble(self, sha256: str, face_run_id: int | None) -> dict | None:
        """The newest stored ensemble of an evidence file's face run, members as {detector: analysis id}."""
        row = _one(self.conn, "SELECT * FROM ensembles WHERE sha256 = ? AND face_run_id IS ? ORDER BY id DESC LIMIT 1",
                   [sha256, face_run_id])
        return _decode_json(row, "members", "left_out") if row else None

    def latest_bias_report(self, detector: str) -> dict | None:
        rows = list(self.db.query(
            "SELECT * FROM bias_reports WHERE detector = ? ORDER BY id DESC LIMIT 1", [detector]))
        return _decode_json(rows[0], "result") if rows else None

    # -- jobs -------------------------------------------------------------------------------------
    def add_job(self, sha256: str, detectors: list[str], sampling: dict, ensemble_rule: str, actor: str,
                case_id: int | None = None) -> int:
        """Record a queued analysis job (audited as job.submit); returns its id."""
        with self._writing() as conn:
            if not conn.execute("SELECT 1 FROM evidence WHERE sha256 = ?", [sha256]).fetchone():
                raise StoreError(f"no evidence with sha256 {sha256}")
            now = utc_now()
            job_id = _insert_id(
                conn,
                "INSERT INTO jobs (sha256, case_id, detectors, sampling, ensemble_rule, actor, state, stage, done, "
                "total, stage_started_at, created_at, cancel_requested) "
                "VALUES (?, ?, ?, ?, ?, ?, 'queued', 'queued', 0, 0, ?, ?, 0) RETURNING id",
                [sha256, case_id, json.dumps(detectors), canonical_json(sampling), ensemble_rule, actor, now, now],
            )
            _append_audit(conn, actor, "job.submit", f"evidence:{sha256}",
                          {"job_id": job_id, "sha256": sha256, "case_id": case_id, "detectors": detectors,
                           "sampling": sampling, "ensemble_rule": ensemble_rule})
        return job_id

    def job(self, job_id: int) -> dict:
        """One job, its JSON fields decoded."""
        row = _one(self.conn, "SELECT * FROM jobs WHERE id = ?", [job_id])
        if row is None:
            raise StoreError(f"no job with id {job_id}")
        return _decode_json(row, "detectors", "sampling", "result")

    def jobs(self, sha256: str | None = None, states: Iterable[str] | None = None, limit: int = 100) -> list[dict]:
        """Jobs, newest first: of one evidence file and/or in the given states."""
        where, params = [], []
        if sha256 is not None:
            where.append("sha256 = ?")
            params.append(sha256)
        if states is not None:
            states = list(states)
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(states)
        sql = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
        return [_decode_json(r, "detectors", "sampling", "result") for r in _rows(self.conn, sql, params + [limit])]

    def latest_jobs(self, shas: Iterable[str]) -> dict[str, dict]:
        """The newest job of each of these evidence files (files without a job are left out), in one query."""
        shas = list(shas)
        if not shas:
            return {}
        rows = _rows(self.conn,
                     f"SELECT * FROM jobs WHERE id IN (SELECT max(id) FROM jobs WHERE sha256 IN "
                     f"({', '.join('?' for _ in shas)}) GROUP BY sha256)", shas)
        return {r["sha256"]: _decode_json(r, "detectors", "sampling", "result") for r in rows}

    def start_job(self, job_id: int, pid: int, worker_start: str | None, host: str) -> bool:
        """Mark a queued job running in this worker process (audited as job.start).

        Returns:
            False when the job is no longer queued (cancelled meanwhile, or taken): the worker skips it.
        """
        with self._writing() as conn:
            now = utc_now()
            row = _returning(conn,
                       "UPDATE jobs SET state = 'running', stage = 'starting', started_at = ?, stage_started_at = ?, "
                       "heartbeat_at = ?, worker_pid = ?, worker_start = ?, worker_host = ?, error = NULL "
                       "WHERE id = ? AND state = 'queued' RETURNING sha256, actor",
                       [now, now, now, pid, worker_start, host, job_id])
            if row is None:
                return False
            _append_audit(conn, row["actor"], "job.start", f"evidence:{row['sha256']}",
                          {"job_id": job_id, "worker_pid": pid, "worker_host": host})
        return True

    def job_progress(self, job_id: int, stage: str, done: int, total: int) -> bool:
        """Record a running job's progress (and heartbeat); not audited.

        Returns:
            Whether a cancel was requested (the worker stops at the next frame).
        """
        with self._writing() as conn:
            now = utc_now()
            row = _returning(
                conn,
                "UPDATE jobs SET stage_started_at = CASE WHEN stage = ? THEN stage_started_at ELSE ? END, "
                "stage = ?, done = ?, total = ?, heartbeat_at = ? WHERE id = ? AND state = 'running' "
                "RETURNING cancel_requested",
                [stage, now, stage, done, total, now, job_id])
        return bool(row and row["cancel_requested"])

    def job_heartbeat(self, job_id: int) -> None:
        """The worker running this job is alive (not audited)."""
        with self._writing() as conn:
            conn.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND state = 'running'", [utc_now(), job_id])

    def finish_job(self, job_id: int, state: str, error: str | None = None, result_id: int | None = None,
                   result: dict | None = None, actor: str | None = None, expect: str = "running") -> bool:
        """End a job: done, failed or cancelled (audited as job.end, by `actor` or the job's owner).

        Args:
            expect: the state the job must be in (a job already ended is left as it is).

        Returns:
            False when the job was not in state `expect`.
        """
        if state not in ("done", "failed", "cancelled"):
            raise StoreError(f"a job ends done, failed or cancelled, not {state!r}")
        with self._writing() as conn:
            row = _returning(conn,
                       "UPDATE jobs SET state = ?, stage = ?, finished_at = ?, error = ?, result_id = ?, result = ? "
                       "WHERE id = ? AND state = ? RETURNING sha256, actor",
                       [state, state, utc_now(), error, result_id, None if result is None else canonical_json(result),
                        job_id, expect])
            if row is None:
                return False
            _append_audit(conn, actor or row["actor"], "job.end", f"evidence:{row['sha256']}",
                          {"job_id": job_id, "state": state, "error": error, "result_id": result_id,
                           "result": result})
        return True

    def request_job_cancel(self, job_id: int, actor: str) -> str:
        """Cancel a job (audited as job.cancel): a queued one ends now, a running one at its next frame.

        Returns:
            The job's state afterwards ("cancelled", "running" until the worker stops, or the final
            state of a job that had already ended).
        """
        with self._writing() as conn:
            row = _one(conn, "SELECT sha256, state FROM jobs WHERE id = ?", [job_id])
            if row is None:
                raise StoreError(f"no job with id {job_id}")
            if row["state"] not in ("queued", "running"):
                return row["state"]
            if row["state"] == "queued":
                conn.execute("UPDATE jobs SET state = 'cancelled', stage = 'cancelled', finished_at = ?, "
                             "cancel_requested = 1, cancelled_by = ? WHERE id = ?", [utc_now(), actor, job_id])
                state = "cancelled"
            else:
                conn.execute("UPDATE jobs SET cancel_requested = 1, cancelled_by = ? WHERE id = ?", [actor, job_id])
                state = "running"
            _append_audit(conn, actor, "job.cancel", f"evidence:{row['sha256']}",
                          {"job_id": job_id, "state_before": row["state"]})
        return state

    def requeue_job(self, job_id: int, reason: str) -> bool:
        """Put a running job back in the queue (its worker was stopped, not crashed); audited as job.requeue."""
        with self._writing() as conn:
            now = utc_now()
            row = _returning(conn,
                       "UPDATE jobs SET state = 'queued', stage = 'queued', done = 0, total = 0, stage_started_at = ?, "
                       "started_at = NULL, heartbeat_at = NULL, worker_pid = NULL, worker_start = NULL, "
                       "worker_host = NULL WHERE id = ? AND state = 'running' AND cancel_requested = 0 "
                       "RETURNING sha256, actor", [now, job_id])
            if row is None:
                return False
            _append_audit(conn, "workbench", "job.requeue", f"evidence:{row['sha256']}",
                          {"job_id": job_id, "reason": reason})
        return True

    # -- API tokens -------------------------------------------------------------------------------
    def add_api_token(self, name: str, token_sha256: str, actor: str) -> int:
        """Record a new API token by its sha256 (audited as token.create, without the hash); returns its id.

        Raises:
            StoreError: NAME already has an active token (revoke it first).
        """
        with self._writing() as conn:
            if self._active_token_ids(conn, name):
                raise StoreError(f"{name!r} already has an active API token; revoke it first")
            token_id = _insert_id(
                conn, "INSERT INTO api_tokens (name, token_sha256, created_at, created_by) VALUES (?, ?, ?, ?) "
                      "RETURNING id", [name, token_sha256, utc_now(), actor])
            _append_audit(conn, actor, "token.create", f"token:{name}", {"token_id": token_id, "name": name})
        return token_id

    def revoke_api_token(self, name: str, actor: str) -> list[int]:
        """Revoke NAME's active token (audited as token.revoke); returns the ids revoked.

        Raises:
            StoreError: NAME has no active token.
        """
        with self._writing() as conn:
            ids = self._active_token_ids(conn, name)
            if not ids:
                raise StoreError(f"{name!r} has no active API token")
            now = utc_now()
            for token_id in ids:
                conn.execute("INSERT INTO api_token_revocations (token_id, revoked_at, revoked_by) VALUES (?, ?, ?)",
                             [token_id, now, actor])
                _append_audit(conn, actor, "token.revoke", f"token:{name}", {"token_id": token_id, "name": name})
        return ids

    def api_tokens(self) -> list[dict]:
        """Every API token ever created (name, created, by, revoked_at/by or None), oldest first; no hashes."""
        return list(_rows(self.conn,
                          "SELECT t.id, t.name, t.created_at, t.created_by, r.revoked_at, r.revoked_by FROM api_tokens t "
                          "LEFT JOIN api_token_revocations r ON r.token_id = t.id ORDER BY t.id"))

    def active_api_tokens(self) -> list[dict]:
        """(name, token_sha256) of every token not revoked, for the API to compare a presented token against."""
        return list(_rows(self.conn,
                          "SELECT t.name, t.token_sha256 FROM api_tokens t LEFT JOIN api_token_revocations r "
                          "ON r.token_id = t.id WHERE r.token_id IS NULL ORDER BY t.id"))

    @staticmethod
    def _active_token_ids(conn: sqlite3.Connection, name: str) -> list[int]:
        return [r[0] for r in conn.execute(
            "SELECT t.id FROM api_tokens t LEFT JOIN api_token_revocations r ON r.token_id = t.id "
            "WHERE t.name = ? AND r.token_id IS NULL", [name])]

    def ensemble(self, ensemble_id: int) -> dict:
        """One stored ensemble by id, members as {detector: analysis id} (a job's result points at one)."""
        row = _one(self.conn, "SELECT * FROM ensembles WHERE id = ?", [ensemble_id])
        if row is None:
            raise StoreError(f"no ensemble with id {ensemble_id}")
        return _decode_json(row, "members", "left_out")

    # -- batches ----------------------------------------------------------------------------------
    def start_batch(self, case_id: int, actor: str, source: str, plan: dict, files: int, code: dict,
                    driver_pid: int, driver_start: str | None, driver_host: str) -> int:
        """Record a batch that starts now (audited as batch.start); returns its id."""
        with self._writing() as conn:
            self._require_case(conn, case_id)
            batch_id = _insert_id(
                conn,
                "INSERT INTO batches (case_id, actor, created_at, source, plan, files, code, driver_pid, driver_start, "
                "driver_host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [case_id, actor, utc_now(), source, canonical_json(plan), files, canonical_json(code), driver_pid,
                 driver_start, driver_host],
            )
            _append_audit(conn, actor, "batch.start", f"case:{case_id}",
                          {"batch_id": batch_id, "source": source, "files": files, "plan": plan, "code": code})
        return batch_id

    def add_batch_item(self, batch_id: int, item: dict, actor: str) -> int:
        """Record how one file of a batch ended (audited as batch.file); returns the item id.

        Args:
            item: position, file, original_name, sha256, status, reason, score, analysis_s, faces and
                row (the file's row of the results table, stored as JSON).
        """
        with self._writing() as conn:
            item_id = _insert_id(
                conn,
                "INSERT INTO batch_items (batch_id, position, file, original_name, sha256, status, reason, score, "
                "analysis_s, faces, row, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [batch_id, item["position"], item["file"], item.get("original_name"), item.get("sha256"),
                 item["status"], item.get("reason"), item.get("score"), item.get("analysis_s"), item.get("faces"),
                 canonical_json(item.get("row", {})), utc_now()],
            )
            _append_audit(conn, actor, "batch.file", f"batch:{batch_id}",
                          {"item_id": item_id, "file": item["file"], "sha256": item.get("sha256"),
                           "status": item["status"], "reason": item.get("reason"), "score": item.get("score")})
        return item_id

    def end_batch(self, batch_id: int, status: str, counts: dict, actor: str) -> None:
        """Record the end of a batch: done or interrupted (audited as batch.end)."""
        if status not in ("done", "interrupted"):
            raise StoreError(f"a batch ends done or interrupted, not {status!r}")
        with self._writing() as conn:
            conn.execute("INSERT INTO batch_ends (batch_id, status, at, counts) VALUES (?, ?, ?, ?)",
                         [batch_id, status, utc_now(), canonical_json(counts)])
            _append_audit(conn, actor, "batch.end", f"batch:{batch_id}",
                          {"batch_id": batch_id, "status": status, "counts": counts})

    def batches(self, case_id: int | None = None, limit: int = 100) -> list[dict]:
        """Batches, newest first (of one case when given), each with its end (status, at, counts) or None."""
        sql = ("SELECT b.*, e.status AS end_status, e.at AS ended_at, e.counts AS end_counts, "
               "(SELECT count(*) FROM batch_items i WHERE i.batch_id = b.id) AS items "
               "FROM batches b LEFT JOIN batch_ends e ON e.batch_id = b.id")
        params: list = []
        if case_id is not None:
            sql += " WHERE b.case_id = ?"
            params.append(case_id)
        rows = _rows(self.conn, sql + " ORDER BY b.id DESC LIMIT ?", params + [limit])
        return [_decode_json(r, "plan", "code", "end_counts") for r in rows]

    def batch(self, batch_id: int) -> dict:
        """One batch, as `batches` lists it."""
        row = _one(self.conn,
                   "SELECT b.*, e.status AS end_status, e.at AS ended_at, e.counts AS end_counts, "
                   "(SELECT count(*) FROM batch_items i WHERE i.batch_id = b.id) AS items "
                   "FROM batches b LEFT JOIN batch_ends e ON e.batch_id = b.id WHERE b.id = ?", [batch_id])
        if row is None:
            raise StoreError(f"no batch with id {batch_id}")
        return _decode_json(row, "plan", "code", "end_counts")

    def batch_items(self, batch_id: int) -> list[dict]:
        """The files of a batch that have ended, in input order."""
        rows = _rows(self.conn, "SELECT * FROM batch_items WHERE batch_id = ? ORDER BY position, id", [batch_id])
        return [_decode_json(r, "row") for r in rows]

    # -- notes and verdicts ---------------------------------------------------------------------
    def add_note(self, case_id: int, text: str, author: str, sha256: str | None = None,
                 frame: int | None = None, time_s: float | None = None, track_id: int | None = None,
                 frame_end: int | None = None, time_end_s: float | None = None) -> int:
        """A new note (version 1); returns its note id.

        Args:
            frame, time_s: the frame (and its time) the note is pinned to, or a range's first frame.
            frame_end, time_end_s: a range's last frame (inclusive) and its time; None for one frame.

        Raises:
            StoreError: no text; a range end without a start frame, or before it.
        """
        if not text.strip():
            raise StoreError("a note needs text")
        _check_range(frame, frame_end, time_s, time_end_s)
        with self._writing() as conn:
            self._require_case(conn, case_id)
            note_id = _insert_id(conn, "INSERT INTO note_ids (case_id) VALUES (?) RETURNING id", [case_id])
            row_id = _insert_id(
                conn,
                "INSERT INTO notes (note_id, version, case_id, sha256, frame, time_s, track_id, author, created_at, text, "
                "deleted, frame_end, time_end_s) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) RETURNING id",
                [note_id, case_id, sha256, frame, time_s, track_id, author, utc_now(), text, frame_end, time_end_s],
            )
            row = _one(conn, "SELECT * FROM notes WHERE id = ?", [row_id])
            _append_audit(conn, author, "note.add", f"case:{case_id}", _note_facts(row))
        return note_id

    def edit_note(self, note_id: int, text: str, author: str, deleted: bool = False,
                  expected_version: int | None = None) -> int:
        """A new version of a note (older versions stay); returns the new version number.

        Args:
            expected_version: the version the edit was made on; when another version was saved
                since, raises NoteChanged and writes nothing (checked inside the write transaction,
                so two tabs saving at once cannot both pass). None skips the check.
        """
        with self._writing() as conn:
            latest = self._latest_note(conn, note_id)
            if expected_version is not None and latest["version"] != expected_version:
                raise NoteChanged(note_id, expected_version, latest)
            version = latest["version"] + 1
            row_id = _insert_id(
                conn,
                "INSERT INTO notes (note_id, version, case_id, sha256, frame, time_s, track_id, author, created_at, text, "
                "deleted, frame_end, time_end_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [note_id, version, latest["case_id"], latest["sha256"], latest["frame"], latest["time_s"],
                 latest["track_id"], author, utc_now(), text, int(deleted), latest["frame_end"], latest["time_end_s"]],
            )
            row = _one(conn, "SELECT * FROM notes WHERE id = ?", [row_id])
            _append_audit(conn, author, "note.delete" if deleted else "note.edit", f"case:{latest['case_id']}",
                          _note_facts(row))
        return version

    @staticmethod
    def _latest_note(conn: sqlite3.Connection, note_id: int) -> dict:
        row = _one(conn, "SELECT * FROM notes WHERE note_id = ? ORDER BY version DESC LIMIT 1", [note_id])
        if row is None:
            raise StoreError(f"no note with id {note_id}")
        return row

    def notes(self, case_id: int, include_deleted: bool = False) -> list[dict]:
        """The latest version of each note of a case, oldest note first."""
        rows = self.db.query(
            "SELECT * FROM notes n WHERE case_id = ? AND version = "
            "(SELECT max(version) FROM notes m WHERE m.note_id = n.note_id) ORDER BY note_id",
            [case_id],
        )
        return [dict(r) for r in rows if include_deleted or not r["deleted"]]

    def notes_key(self, case_id: int) -> tuple[int, int | None]:
        """A key that changes whenever a note version of the case is written: (rows, newest row id).
        One indexed aggregate, cheap enough to poll every few seconds."""
        rows, newest = self.conn.execute("SELECT count(*), max(id) FROM notes WHERE case_id = ?", [case_id]).fetchone()
        return rows, newest

    def note_history(self, note_id: int) -> list[dict]:
        rows = self.db.query("SELECT * FROM notes WHERE note_id = ? ORDER BY version", [note_id])
        return [dict(r) for r in rows]

    def set_verdict(self, case_id: int, verdict: str, reason: str, author: str, sha256: str | None = None) -> int:
        """Record the analyst's verdict (a new row each time; the history is kept).

        Raises:
            StoreError: an unknown verdict, a blank reason (a verdict is permanent: it must say why),
                or a blank author.
        """
        if verdict not in VERDICTS:
            raise StoreError(f"verdict must be one of {', '.join(VERDICTS)}")
        if not (reason or "").strip():
            raise StoreError("a verdict needs a reason: it is permanent, and whoever reads it later must see why")
        if not (author or "").strip():
            raise StoreError("a verdict needs its author")
        with self._writing() as conn:
            self._require_case(conn, case_id)
            verdict_id = _insert_id(
                conn,
                "INSERT INTO verdicts (case_id, sha256, verdict, reason, author, created_at) VALUES (?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                [case_id, sha256, verdict, reason, author, utc_now()],
            )
            row = _one(conn, "SELECT * FROM verdicts WHERE id = ?", [verdict_id])
            _append_audit(conn, author, "verdict.set", f"case:{case_id}", _verdict_facts(row))
        return verdict_id

    def verdicts(self, case_id: int) -> list[dict]:
        """Every verdict of a case, newest first."""
        return list(self.db.query("SELECT * FROM verdicts WHERE case_id = ? ORDER BY id DESC", [case_id]))

    @staticmethod
    def _require_case(conn: sqlite3.Connection, case_id: int) -> None:
        if not conn.execute("SELECT 1 FROM cases WHERE id = ?", [case_id]).fetchone():
            raise StoreError(f"no case with id {case_id}")

    # -- archive (hide, never delete) -----------------------------------------------------------
    def archive(self, actor: str, reason: str, case_id: int, sha256: str | None = None) -> int:
        """Hide a case (sha256 None) or one file of a case from the lists; nothing is deleted.

        A row of `archive_records` and an audit entry (case.archive / evidence.archive) record who,
        when and why. Returns the record's id.

        Raises:
            StoreError: no actor or no reason, an unknown case, a file not in the case, or a target
                already archived (nothing is written).
        """
        return self._set_archived(True, actor, reason, case_id, sha256)

    def unarchive(self, actor: str, reason: str, case_id: int, sha256: str | None = None) -> int:
        """List an archived case or file again: a later record (the archive record stays)."""
        return self._set_archived(False, actor, reason, case_id, sha256)

    def _set_archived(self, archived: bool, actor: str, reason: str, case_id: int, sha256: str | None) -> int:
        word = "archive" if archived else "unarchive"
        if not (actor or "").strip():
            raise StoreError(f"to {word} needs the analyst's name: it is recorded with the reason")
        if not (reason or "").strip():
            raise StoreError(f"to {word} needs a reason: whoever finds it hidden later must see why")
        kind = "case" if sha256 is None else "evidence"
        with self._writing() as conn:
            self._require_case(conn, case_id)
            if sha256 is not None and not conn.execute(
                    "SELECT 1 FROM case_evidence WHERE case_id = ? AND sha256 = ?", [case_id, sha256]).fetchone():
                raise StoreError(f"file {sha256[:12]}… is not in case {case_id}")
            if self._archived_now(conn, kind, case_id, sha256) == archived:
                target = f"case {case_id}" if sha256 is None else f"file {sha256[:12]}… of case {case_id}"
                raise StoreError(f"{target} is {'already' if archived else 'not'} archived")
            record_id = _insert_id(
                conn, "INSERT INTO archive_records (kind, case_id, sha256, archived, reason, actor, at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [kind, case_id, sha256, int(archived), reason.strip(), actor.strip(), utc_now()],
            )
            row = _one(conn, "SELECT * FROM archive_records WHERE id = ?", [record_id])
            subject = f"case:{case_id}" if sha256 is None else f"evidence:{sha256}"
            _append_audit(conn, actor.strip(), f"{kind}.{word}", subject, _archive_facts(row))
        return record_id

    @staticmethod
    def _archived_now(conn: sqlite3.Connection, kind: str, case_id: int, sha256: str | None) -> bool:
        row = conn.execute("SELECT archived FROM archive_records WHERE kind = ? AND case_id = ? AND sha256 IS ? "
                           "ORDER BY id DESC LIMIT 1", [kind, case_id, sha256]).fetchone()
        return bool(row and row[0])

    def archived(self) -> dict:
        """What is archived now: {"cases": {case_id: record}, "evidence": {(case_id, sha256): record}},
        each record the newest (the archiving) row of its target."""
        out: dict = {"cases": {}, "evidence": {}}
        for row in _rows(self.conn,
                         "SELECT * FROM archive_records a WHERE a.id = (SELECT max(b.id) FROM archive_records b "
                         "WHERE b.kind = a.kind AND b.case_id = a.case_id AND b.sha256 IS a.sha256) AND a.archived = 1"):
            if row["kind"] == "case":
                out["cases"][row["case_id"]] = row
            else:
                out["evidence"][(row["case_id"], row["sha256"])] = row
        return out

    def archive_history(self, case_id: int) -> list[dict]:
        """Every archive and unarchive record of a case and its files, oldest first."""
        return list(_rows(self.conn, "SELECT * FROM archive_records WHERE case_id = ? ORDER BY id", [case_id]))

    # -- search ---------------------------------------------------------------------------------
    def search(self, text: str, limit: int = 50, include_archived: bool = False) -> list[dict]:
        """Cases, files and notes whose words contain `text` (any case), and files whose sha256
        starts with it.

        Matched: case names and descriptions, file names (as kept and as each intake named the
        file), sha256 prefixes, and the latest version of each note that is not deleted. Archived
        cases and files (and the notes on them) are left out unless include_archived.

        Returns:
            Up to `limit` results per kind, as dicts: kind ("case", "file" or "note"), case_id,
            case_name, sha256, note_id, frame, track_id, field (what matched), text (the matched
            text), archived.

        Raises:
            StoreError: an empty query.
        """
        query = (text or "").strip()
        if not query:
            raise StoreError("search needs some text")
        pattern = "%" + _like_escape(query) + "%"
        prefix = _like_escape(query.lower()) + "%"
        hidden = self.archived()
        results: list[dict] = []
        per_kind: dict[str, int] = {}

        def counted(kind: str) -> bool:
            per_kind[kind] = per_kind.get(kind, 0) + 1
            return per_kind[kind] <= limit

        def keep(case_id: int, sha256: str | None) -> bool:
            archived = case_id in hidden["cases"] or (case_id, sha256) in hidden["evidence"]
            return include_archived or not archived

        def result(kind, row, field, matched, sha256=None, note=None) -> dict:
            return {"kind": kind, "case_id": row["case_id"], "case_name": row["case_name"], "sha256": sha256,
                    "note_id": note["note_id"] if note else None, "frame": note["frame"] if note else None,
                    "track_id": note["track_id"] if note else None, "field": field, "text": matched,
                    "archived": row["case_id"] in hidden["cases"] or (row["case_id"], sha256) in hidden["evidence"]}

        for row in _rows(self.conn,
                         "SELECT id AS case_id, name AS case_name, description FROM cases "
                         "WHERE name LIKE ? ESCAPE '\\' OR description LIKE ? ESCAPE '\\' ORDER BY id",
                         [pattern, pattern]):
            if keep(row["case_id"], None) and counted("case"):
                in_name = _contains(row["case_name"], query)
                results.append(result("case", row, "name" if in_name else "description",
                                      row["case_name"] if in_name else row["description"]))
        for row in _rows(self.conn,
                         "SELECT ce.case_id, c.name AS case_name, e.sha256, e.original_name, "
                         "(SELECT i.original_name FROM evidence_intakes i WHERE i.sha256 = e.sha256 "
                         " AND i.original_name LIKE ? ESCAPE '\\' ORDER BY i.id LIMIT 1) AS intake_name "
                         "FROM case_evidence ce JOIN evidence e ON e.sha256 = ce.sha256 JOIN cases c ON c.id = ce.case_id "
                         "WHERE e.original_name LIKE ? ESCAPE '\\' OR e.sha256 LIKE ? ESCAPE '\\' OR EXISTS "
                         "(SELECT 1 FROM evidence_intakes i WHERE i.sha256 = e.sha256 AND i.original_name LIKE ? ESCAPE '\\') "
                         "ORDER BY ce.case_id, ce.added_at",
                         [pattern, pattern, prefix, pattern]):
            if not (keep(row["case_id"], row["sha256"]) and counted("file")):
                continue
            if _contains(row["original_name"], query):
                field, matched = "file name", row["original_name"]
            elif row["intake_name"] is not None:
                field, matched = "file name (as submitted)", row["intake_name"]
            else:
                field, matched = "sha256", row["sha256"]
            results.append(result("file", row, field, matched, sha256=row["sha256"]))
        for row in _rows(self.conn,
                         "SELECT n.case_id, c.name AS case_name, n.note_id, n.sha256, n.frame, n.track_id, n.text "
                         "FROM notes n JOIN cases c ON c.id = n.case_id WHERE n.deleted = 0 "
                         "AND n.version = (SELECT max(m.version) FROM notes m WHERE m.note_id = n.note_id) "
                         "AND n.text LIKE ? ESCAPE '\\' ORDER BY n.note_id",
                         [pattern]):
            if keep(row["case_id"], row["sha256"]) and counted("note"):
                results.append(result("note", row, "note", row["text"], sha256=row["sha256"], note=row))
        return results


def _like_escape(text: str) -> str:
    """A text as a LIKE pattern that matches it literally (with ESCAPE '\\'): %, _ and \\ escaped."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _contains(haystack: str | None, needle: str) -> bool:
    """Whether LIKE matched this text (ASCII letters compared without case, as SQLite's LIKE does)."""
    return haystack is not None and needle.lower() in haystack.lower()


def _check_range(frame, frame_end, time_s, time_end_s) -> None:
    """A note's range is a start frame and an end at or after it; an end time needs an end frame."""
    if frame_end is None:
        if time_end_s is not None:
            raise StoreError("a range's end time needs its end frame")
        return
    if frame is None:
        raise StoreError("a range needs its first frame as well as its last")
    if int(frame_end) < int(frame):
        raise StoreError(f"a range ends at or after its first frame (frames {frame}..{frame_end} given)")
    if time_s is not None and time_end_s is not None and float(time_end_s) < float(time_s):
        raise StoreError(f"a range ends at or after its start time ({time_s}..{time_end_s} s given)")


def _decode_json(row: dict, *keys: str) -> dict:
    row = dict(row)
    for key in keys:
        if row.get(key) is not None:
            row[key] = json.loads(row[key])
    return row


# -- verification -----------------------------------------------------------------------------------
def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _key_text(key) -> str:
    return "/".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def _verify(conn: sqlite3.Connection, expect_head: str | None) -> dict:
    entries = 0
    head = None

    def result(broken_at, reason) -> dict:
        out = {"ok": reason is None, "entries": entries, "broken_at": broken_at, "reason": reason, "head": head}
        if expect_head is not None:
            out["expected_head_at"] = expected_at
        return out

    expected_at = None
    if not _has_table(conn, "audit"):
        return result(None, "there is no audit log: not a workbench database")
    if "hash" not in {r[1] for r in conn.execute("PRAGMA table_info(audit)")}:
        entries = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
        return result(None, "the audit log is not a hash chain yet (the database predates migration "
                            "0005_audit_chain): open it once with the workbench to start the chain")
    # Entries older than audit.chain_started recorded no facts; the baseline it holds vouches for theirs.
    started = conn.execute("SELECT min(id) FROM audit WHERE action = 'audit.chain_started'").fetchone()[0]
    baseline: dict = {}
    vouched: dict[str, dict] = {spec.table: {} for spec in FACT_TABLES}
    prev, last_id = GENESIS, 0
    for entry_id, at, actor, action, subject, details, prev_hash, digest in conn.execute(
        "SELECT id, at, actor, action, subject, details, prev_hash, hash FROM audit ORDER BY id"
    ):
        entries += 1
        if prev_hash is None or digest is None:
            return result(entry_id, "it is not chained (no hash): written outside the store")
        if prev_hash != prev:
            if entry_id != last_id + 1:
                missing = f"entry {last_id + 1}" if entry_id == last_id + 2 else f"entries {last_id + 1}..{entry_id - 1}"
                return result(entry_id, f"{missing} before it are missing (removed)")
            return result(entry_id, f"it does not follow entry {last_id} (prev_hash differs: an entry was changed, "
                                    "removed or inserted)")
        parsed = _parse_details(details)
        if entry_hash(prev, entry_id, at, actor, action, subject, parsed) != digest:
            return result(entry_id, "its contents do not match its hash (the entry was changed)")
        prev = head = digest
        last_id = entry_id
        if expect_head is not None and digest == expect_head:
            expected_at = entry_id
        if entry_id == started:
            baseline = parsed.get("facts", {}) if isinstance(parsed, dict) else {}
            continue
        spec = _VOUCHES.get(action)
        if spec is None or (started is not None and entry_id < started):
            continue
        try:
            key = spec.entry_key(parsed)
            hash(key)
        except (KeyError, TypeError):
            return result(entry_id, f"its details lack the facts a {action} entry records")
        vouched[spec.table].setdefault(key, (entry_id, parsed))
    if expect_head is not None and expected_at is None:
        return result(None, f"the expected head {expect_head[:16]}… is not in this history (the chain was rebuilt "
                            "or cut, or the head belongs to another database)")

    scores = _score_digests(conn) if vouched["analyses"] else {}
    for spec in FACT_TABLES:
        if not _has_table(conn, spec.table):
            continue
        recorded = vouched[spec.table]
        base = baseline.get(spec.table) or {"rows": 0, "sha256": EMPTY_SHA256}
        hasher, unmatched, first_unmatched = hashlib.sha256(), 0, None
        for row in _rows(conn, f"SELECT * FROM {spec.table} ORDER BY {spec.order_by}"):
            key = spec.row_key(row)
            hit = recorded.pop(key, None)
            if hit is None:
                unmatched += 1
                first_unmatched = key if first_unmatched is None else first_unmatched
                hasher.update(spec.baseline_line(row))
                continue
            entry_id, details = hit
            for name, value in spec.facts(row, scores).items():
                if name not in details and name not in spec.added_facts:
                    return result(entry_id, f"its details lack the {name} of {spec.label} {_key_text(key)}")
                said = details.get(name)
                # `!=` first (fast); the canonical spelling settles NaN, which is never == itself.
                if said != value and canonical_json(said) != canonical_json(value):
                    return result(entry_id, f"{spec.label} {_key_text(key)} has {name} {_short(value)}, but the entry "
                                            f"recorded {_short(said)} (changed outside the store)")
        if recorded:
            key, (entry_id, _) = min(recorded.items(), key=lambda item: item[1][0])
            return result(entry_id, f"{spec.label} {_key_text(key)} that it records is missing (removed outside the store)")
        if unmatched != base.get("rows") or hasher.hexdigest() != base.get("sha256"):
            if not base.get("rows"):
                return result(None, f"{spec.label} {_key_text(first_unmatched)} has no audit entry (added outside the store)")
            return result(started, f"{spec.table}: the {unmatched} row(s) without an entry of their own differ from the "
                                   f"{base['rows']} vouched for when the chain started (added, changed or removed "
                                   "outside the store)")
    return result(None, None)


def history_summary(result: dict) -> str:
    """One line for a `verify_history` result: "history verified: N entries, head H" or
    "history broken at entry N: reason"."""
    if result["ok"]:
        line = f"history verified: {result['entries']} entries, head {result['head'] or '(none yet)'}"
        if result.get("expected_head_at") is not None:
            line += f" (contains the expected head at entry {result['expected_head_at']})"
        return line
    where = f" at entry {result['broken_at']}" if result["broken_at"] is not None else ""
    return f"history broken{where}: {result['reason']}"


def snapshot_backup(store: Store, dest: str | Path) -> tuple[dict[str, int], str]:
    """Row counts of every table and a backup copy, taken in one read transaction (the same snapshot
    even while others write). Returns (counts by table, the copy's integrity check)."""
    conn = store.conn
    conn.execute("BEGIN")
    try:
        counts = store.table_counts()
        return counts, backup(store, dest)
    finally:
        conn.rollback()


def backup(store: Store, dest: str | Path) -> str:
    """Copy the database with SQLite's online backup API; returns the copy's integrity check.

    The copy is created 0600 (in a folder created 0700 if missing), like the database itself.
    """
    dest = Path(dest)
    _private_dir(dest.parent)
    _private_file(dest)
    target = sqlite3.connect(str(dest))
    try:
        store.conn.backup(target)
        return target.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        target.close()


# -- case bundles (workbench/bundle.py) --------------------------------------------------------------
@migration("0014_bundle_imports")
def _bundle_imports(db: sqlite_utils.Database) -> None:
    # One row per imported case bundle: which bundle (its id and the archive's sha256), from whom,
    # into which new local case, and how the bundle's ids map to local ones. A bundle is imported
    # once: its id is unique, so a second import is refused rather than making a second copy.
    db["bundle_imports"].create(
        {"id": int, "bundle_id": str, "bundle_sha256": str, "case_id": int, "source_case_id": int,
         "exporter": str, "exported_at": str, "workbench_version": str, "source_head": str, "imported_at": str,
         "imported_by": str, "archive_path": str, "evidence": str, "id_map": str},
        pk="id", foreign_keys=[("case_id", "cases", "id")],
    )
    db["bundle_imports"].create_index(["bundle_id"], unique=True)
    _append_only(db, "bundle_imports")


@contextmanager
def read_snapshot(store: Store) -> Iterator[Store]:
    """Every read of `store` on this thread inside the block sees one snapshot (a read transaction),
    even while other connections write; nothing may be written inside it."""
    conn = store.conn
    conn.execute("BEGIN")
    try:
        yield store
    finally:
        conn.rollback()


def bundle_import(store: Store, bundle_id: str) -> dict | None:
    """The record of an imported bundle (by the bundle's id), or None when it was never imported here."""
    row = _one(store.conn, "SELECT * FROM bundle_imports WHERE bundle_id = ?", [bundle_id])
    return _decode_json(row, "exporter", "evidence", "id_map") if row else None


def case_import(store: Store, case_id: int) -> dict | None:
    """The bundle a case was imported from (as `bundle_import` returns it), or None for a local case."""
    row = _one(store.conn, "SELECT * FROM bundle_imports WHERE case_id = ?", [case_id])
    return _decode_json(row, "exporter", "evidence", "id_map") if row else None


def evidence_ensembles(store: Store, sha256: str) -> list[dict]:
    """Every stored ensemble of an evidence file, oldest first, as stored (members and left_out as JSON text)."""
    return list(_rows(store.conn, "SELECT * FROM ensembles WHERE sha256 = ? ORDER BY id", [sha256]))


def score_digests(track_rows: Iterable[dict], frame_rows: Iterable[dict]) -> tuple[str, str]:
    """(track scores sha256, frame scores sha256) of one analysis, as its analysis.run entry records them.

    Args:
        track_rows: rows with track_id, score, n_frames, status, reason.
        frame_rows: rows with frame, track_id, score.
    """
    tracks = sorted(track_rows, key=lambda r: r["track_id"])
    frames = sorted(frame_rows, key=lambda r: (r["frame"], r["track_id"]))
    digests = _digests_by_analysis(
        [(0, r["track_id"], r["score"], r["n_frames"], r["status"], r["reason"]) for r in tracks])
    frame_digests = _digests_by_analysis([(0, r["frame"], r["track_id"], r["score"]) for r in frames])
    return digests.get(0, EMPTY_SHA256), frame_digests.get(0, EMPTY_SHA256)


def import_case(store: Store, facts: dict, record: dict, actor: str) -> int:
    """Write an imported case bundle as a NEW local case, in one transaction (all of it or nothing).

    Ids are new (the bundle's are kept in `bundle_imports.id_map`); notes and verdicts keep their
    original authors and times, analyses their original actor and time; every row gets the audit
    entry the history needs (by `actor`, the importing analyst, with `imported` details naming the
    bundle), then one `case.imported` entry. Evidence already known here keeps its local row and is
    only linked. Imported face runs and analyses get `|imported:BUNDLE_ID` appended to their
    params_key, so a local analysis never reuses an imported result as its own.

    Args:
        facts: case, evidence (each with its local stored_path, where the file is or will be),
            face_runs (each with boxes), analyses (each with track_scores, frame_scores), ensembles
            (as `evidence_ensembles` reads them), notes (every version), verdicts; all as the bundle's manifest holds them (checked by the caller).
        record: bundle_id, bundle_sha256, source_case_id, exporter, exported_at, workbench_version,
            source_head, archive_path, evidence ({sha256: what happened to its file}).
        actor: the importing analyst.

    Returns:
        The new case's id.

    Raises:
        StoreError: this bundle was imported already (names the case), or a fact breaks the schema.
    """
    if not (actor or "").strip():
        raise StoreError("an import needs the importing analyst's name")
    bundle_id = record["bundle_id"]
    suffix = f"|imported:{bundle_id}"
    try:
        with store._writing() as conn:
            earlier = _one(conn, "SELECT case_id, imported_at, imported_by FROM bundle_imports WHERE bundle_id = ?",
                           [bundle_id])
            if earlier is not None:
                raise StoreError(f"this bundle ({bundle_id}) was already imported as case #{earlier['case_id']} by "
                                 f"{earlier['imported_by']} at {earlier['imported_at']}; nothing was written")
            imported = {"bundle_id": bundle_id, "bundle_sha256": record["bundle_sha256"]}
            case = facts["case"]
            case_id = _insert_id(
                conn, "INSERT INTO cases (name, description, created_at, created_by) VALUES (?, ?, ?, ?) RETURNING id",
                [case["name"], case.get("description") or "", utc_now(), actor])
            row = _one(conn, "SELECT * FROM cases WHERE id = ?", [case_id])
            _append_audit(conn, actor, "case.create", f"case:{case_id}",
                          dict(_case_facts(row), imported=dict(imported, original_id=case["id"],
                                                               original_created_at=case["created_at"],
                                                               original_created_by=case["created_by"])))
            for e in facts["evidence"]:
                sha = e["sha256"]
                if not conn.execute("SELECT 1 FROM evidence WHERE sha256 = ?", [sha]).fetchone():
                    conn.execute(
                        "INSERT INTO evidence (sha256, original_name, size, stored_path, added_at, added_by, probe) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [sha, e["original_name"], e["size"], e["stored_path"], utc_now(), actor, json.dumps(e["probe"])])
                    row = _one(conn, "SELECT * FROM evidence WHERE sha256 = ?", [sha])
                    _append_audit(conn, actor, "evidence.add", f"evidence:{sha}",
                                  dict(_evidence_facts(row), imported=dict(imported, file=record["evidence"][sha])))
                conn.execute("INSERT INTO case_evidence (case_id, sha256, added_at) VALUES (?, ?, ?)",
                             [case_id, sha, utc_now()])
                _append_audit(conn, actor, "case.add_evidence", f"case:{case_id}", {"case_id": case_id, "sha256": sha})
                intake_id = _insert_id(
                    conn, "INSERT INTO evidence_intakes (sha256, case_id, original_name, actor, at) "
                          "VALUES (?, ?, ?, ?, ?) RETURNING id", [sha, case_id, e["original_name"], actor, utc_now()])
                intake = _one(conn, "SELECT * FROM evidence_intakes WHERE id = ?", [intake_id])
                _append_audit(conn, actor, "evidence.intake", f"evidence:{sha}", dict(_intake_facts(intake), imported=imported))
            runs: dict[int, int] = {}
            for run in facts["face_runs"]:
                run_id = _insert_id(
                    conn,
                    "INSERT INTO face_runs (sha256, params_key, params, frames_analysed, detection_frames, timings, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    [run["sha256"], run["params_key"] + suffix, canonical_json(run["params"]),
                     canonical_json(run["frames_analysed"]), canonical_json(run["detection_frames"]),
                     canonical_json(run["timings"]), run["created_at"]])
                runs[run["id"]] = run_id
                by_track: dict[int, list[int]] = {}
                for b in run["boxes"]:
                    by_track.setdefault(b["track_id"], []).append(b["frame"])
                for track_id, frames in sorted(by_track.items()):
                    conn.execute("INSERT INTO tracks (face_run_id, track_id, first_frame, last_frame, n_frames) "
                                 "VALUES (?, ?, ?, ?, ?)", [run_id, track_id, min(frames), max(frames), len(frames)])
                conn.executemany(
                    "INSERT INTO boxes (face_run_id, frame, track_id, x1, y1, x2, y2, prob, detected, landmarks) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, b["frame"], b["track_id"], b["x1"], b["y1"], b["x2"], b["y2"], b["prob"], b["detected"],
                      None if b["landmarks"] is None else json.dumps(b["landmarks"])) for b in run["boxes"]])
            analyses: dict[int, int] = {}
            for a in facts["analyses"]:
                analysis_id = _insert_id(
                    conn,
                    "INSERT INTO analyses (sha256, face_run_id, detector, detector_version, weights_sha256, params_key, "
                    "params, software, status, reason, score, threshold, rule, frames_used, timings, created_at, actor, "
                    "upstream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    [a["sha256"], None if a["face_run_id"] is None else runs[a["face_run_id"]], a["detector"],
                     a["detector_version"], a["weights_sha256"], a["params_key"] + suffix,
                     *(json.dumps(a[k]) for k in ("params", "software")), a["status"], a["reason"], a["score"],
                     a["threshold"], a["rule"], json.dumps(a["frames_used"]), json.dumps(a["timings"]),
                     a["created_at"], a["actor"], json.dumps(a.get("upstream"))])
                analyses[a["id"]] = analysis_id
                conn.executemany(
                    "INSERT INTO track_scores (analysis_id, track_id, score, n_frames, status, reason) VALUES (?, ?, ?, ?, ?, ?)",
                    [(analysis_id, t["track_id"], t["score"], t["n_frames"], t["status"], t["reason"])
                     for t in a["track_scores"]])
                conn.executemany("INSERT INTO frame_scores (analysis_id, frame, track_id, score) VALUES (?, ?, ?, ?)",
                                 [(analysis_id, f["frame"], f["track_id"], f["score"]) for f in a["frame_scores"]])
                stored = _one(conn, "SELECT * FROM analyses WHERE id = ?", [analysis_id])
                _append_audit(conn, actor, "analysis.run", f"evidence:{a['sha256']}",
                              dict(_analysis_facts(stored, _score_digests(conn, analysis_id)),
                                   imported=dict(imported, original_id=a["id"], original_actor=a["actor"],
                                                 original_at=a["created_at"])))
            ensembles: dict[int, int] = {}
            for ens in facts["ensembles"]:
                members = {name: analyses[old] for name, old in json.loads(ens["members"]).items()}
                ensemble_id = _insert_id(
                    conn,
                    "INSERT INTO ensembles (sha256, face_run_id, rule, members, left_out, status, score, threshold, "
                    "created_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    [ens["sha256"], None if ens["face_run_id"] is None else runs[ens["face_run_id"]], ens["rule"],
                     canonical_json(members), ens["left_out"], ens["status"], ens["score"], ens["threshold"],
                     ens["created_at"], ens["actor"]])
                ensembles[ens["id"]] = ensemble_id
                stored = _one(conn, "SELECT * FROM ensembles WHERE id = ?", [ensemble_id])
                _append_audit(conn, actor, "ensemble.compute", f"evidence:{ens['sha256']}",
                              dict(_ensemble_facts(stored), imported=dict(imported, original_id=ens["id"],
                                                                           original_actor=ens["actor"],
                                                                           original_at=ens["created_at"])))
            notes: dict[int, int] = {}
            for n in sorted(facts["notes"], key=lambda n: (n["note_id"], n["version"])):
                if n["note_id"] not in notes:
                    notes[n["note_id"]] = _insert_id(conn, "INSERT INTO note_ids (case_id) VALUES (?) RETURNING id",
                                                     [case_id])
                row_id = _insert_id(
                    conn,
                    "INSERT INTO notes (note_id, version, case_id, sha256, frame, time_s, track_id, author, created_at, "
                    "text, deleted, frame_end, time_end_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    [notes[n["note_id"]], n["version"], case_id, n["sha256"], n["frame"], n["time_s"], n["track_id"],
                     n["author"], n["created_at"], n["text"], int(bool(n["deleted"])), n["frame_end"], n["time_end_s"]])
                row = _one(conn, "SELECT * FROM notes WHERE id = ?", [row_id])
                action = "note.delete" if row["deleted"] else ("note.add" if row["version"] == 1 else "note.edit")
                _append_audit(conn, actor, action, f"case:{case_id}",
                              dict(_note_facts(row), imported=dict(imported, original_note_id=n["note_id"],
                                                                   original_author=n["author"],
                                                                   original_at=n["created_at"])))
            verdicts: dict[int, int] = {}
            for v in sorted(facts["verdicts"], key=lambda v: v["id"]):
                if v["verdict"] not in VERDICTS:
                    raise StoreError(f"verdict {v['id']} is {v['verdict']!r}, not one of {', '.join(VERDICTS)}")
                verdict_id = _insert_id(
                    conn, "INSERT INTO verdicts (case_id, sha256, verdict, reason, author, created_at) "
                          "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    [case_id, v["sha256"], v["verdict"], v["reason"], v["author"], v["created_at"]])
                verdicts[v["id"]] = verdict_id
                row = _one(conn, "SELECT * FROM verdicts WHERE id = ?", [verdict_id])
                _append_audit(conn, actor, "verdict.set", f"case:{case_id}",
                              dict(_verdict_facts(row), imported=dict(imported, original_id=v["id"],
                                                                      original_author=v["author"],
                                                                      original_at=v["created_at"])))
            id_map = {"face_runs": runs, "analyses": analyses, "ensembles": ensembles, "notes": notes,
                      "verdicts": verdicts}
            conn.execute(
                "INSERT INTO bundle_imports (bundle_id, bundle_sha256, case_id, source_case_id, exporter, exported_at, "
                "workbench_version, source_head, imported_at, imported_by, archive_path, evidence, id_map) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [bundle_id, record["bundle_sha256"], case_id, case["id"], canonical_json(record["exporter"]),
                 record["exported_at"], record["workbench_version"], record["source_head"], utc_now(), actor,
                 record["archive_path"], canonical_json(record["evidence"]), canonical_json(id_map)])
            _append_audit(conn, actor, "case.imported", f"case:{case_id}", {
                "case_id": case_id, "bundle_id": bundle_id, "bundle_sha256": record["bundle_sha256"],
                "source_case_id": case["id"], "exporter": record["exporter"], "exported_at": record["exported_at"],
                "source_head": record["source_head"], "evidence": record["evidence"],
                "counts": {k: len(v) for k, v in id_map.items()}})
    except sqlite3.Error as exc:
        raise StoreError(f"the bundle's facts do not fit this store ({exc}); nothing was written") from exc
    return case_id


# -- looking up a subject's audit entries quickly -----------------------------------------------------
@migration("0015_audit_subject_index")
def _audit_subject_index(db: sqlite_utils.Database) -> None:
    # The Review page asks on every scrub step whether a file has a recorded demo truth, and
    # audit_log(subject) lists a subject's entries: both are lookups by subject, not scans.
    db["audit"].create_index(["subject", "action", "id"], index_name="audit_subject", if_not_exists=True)


def first_audit_details(store: Store, subject: str, action: str, actor: str) -> dict | None:
    """The details of the first audit entry of this subject, action and actor; None if there is none."""
    rows = list(store.db.query("SELECT details FROM audit WHERE subject = ? AND action = ? AND actor = ? "
                               "ORDER BY id LIMIT 1", [subject, action, actor]))
    return _parse_details(rows[0]["details"]) if rows else None
