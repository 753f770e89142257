"""The case store: SQLite through sqlite-utils, migrations, and every read/write of facts.

Facts (cases, evidence, analyses, tracks, scores, notes, verdicts, the audit log) live here;
nothing else writes SQL. Values are always bound as parameters. Notes, verdicts and the audit
log are append-only: triggers refuse UPDATE and DELETE, so an edit is a new version.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

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


class StoreError(Exception):
    """A request the store refuses (unknown case, bad verdict, ...)."""


class Store:
    """The workbench's SQLite database.

    >>> store = Store(":memory:")
    >>> case_id = store.create_case("demo", actor="analyst")
    >>> store.case(case_id)["name"]
    'demo'
    """

    def __init__(self, path: str | Path = ":memory:", busy_timeout_ms: int = 30_000):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.migrate()

    def close(self) -> None:
        self.conn.close()

    # -- schema ---------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending migrations in order; safe to call on every open.

        Returns:
            Names of the migrations applied now.
        """
        applied_now = []
        with self.conn:
            self.conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
        for name, fn in MIGRATIONS:
            with self.conn:
                # BEGIN IMMEDIATE: two processes opening a fresh database must not both migrate.
                self.conn.execute("BEGIN IMMEDIATE")
                done = self.conn.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone()
                if done:
                    continue
                fn(self.db)
                self.conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", [name, utc_now()])
                applied_now.append(name)
        return applied_now

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT name FROM _migrations ORDER BY rowid")]

    # -- audit ----------------------------------------------------------------------------------
    def _audit(self, actor: str, action: str, subject: str, details: dict | None = None) -> None:
        self.conn.execute(
            "INSERT INTO audit (at, actor, action, subject, details) VALUES (?, ?, ?, ?, ?)",
            [utc_now(), actor, action, subject, json.dumps(details or {}, sort_keys=True)],
        )

    def audit(self, actor: str, action: str, subject: str, details: dict | None = None) -> None:
        """Append one entry to the audit log (its own transaction)."""
        with self.conn:
            self._audit(actor, action, subject, details)

    def audit_log(self, subject: str | None = None, limit: int = 1000) -> list[dict]:
        if subject is None:
            rows = self.db.query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", [limit])
        else:
            rows = self.db.query("SELECT * FROM audit WHERE subject = ? ORDER BY id DESC LIMIT ?", [subject, limit])
        return [dict(r, details=json.loads(r["details"])) for r in rows]

    # -- cases ----------------------------------------------------------------------------------
    def create_case(self, name: str, description: str = "", actor: str = "local") -> int:
        name = name.strip()
        if not name:
            raise StoreError("a case needs a name")
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO cases (name, description, created_at, created_by) VALUES (?, ?, ?, ?)",
                [name, description, utc_now(), actor],
            )
            case_id = cur.lastrowid
            self._audit(actor, "case.create", f"case:{case_id}", {"name": name})
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
        """Record a stored evidence file (idempotent per sha256) and link it to a case."""
        with self.conn:
            exists = self.conn.execute("SELECT 1 FROM evidence WHERE sha256 = ?", [sha256]).fetchone()
            if not exists:
                self.conn.execute(
                    "INSERT INTO evidence (sha256, original_name, size, stored_path, added_at, added_by, probe) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [sha256, original_name, size, stored_path, utc_now(), actor, json.dumps(probe)],
                )
                self._audit(actor, "evidence.add", f"evidence:{sha256}", {"original_name": original_name, "size": size})
            if case_id is not None:
                if not self.conn.execute("SELECT 1 FROM cases WHERE id = ?", [case_id]).fetchone():
                    raise StoreError(f"no case with id {case_id}")
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO case_evidence (case_id, sha256, added_at) VALUES (?, ?, ?)",
                    [case_id, sha256, utc_now()],
                )
                if cur.rowcount:
                    self._audit(actor, "case.add_evidence", f"case:{case_id}", {"sha256": sha256})
        return self.evidence(sha256)

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
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO face_runs (sha256, params_key, params, frames_analysed, detection_frames, timings, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [sha256, params_key, json.dumps(params, sort_keys=True), json.dumps(frames_analysed),
                 json.dumps(detection_frames), json.dumps(timings), utc_now()],
            )
            run_id = cur.lastrowid
            for track in tracks:
                frames = track.frames
                if not frames:
                    continue
                self.conn.execute(
                    "INSERT INTO tracks (face_run_id, track_id, first_frame, last_frame, n_frames) VALUES (?, ?, ?, ?, ?)",
                    [run_id, track.id, frames[0], frames[-1], len(frames)],
                )
                self.conn.executemany(
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
        """Store one detector's analysis with its scores, and audit it, in one transaction."""
        row = dict(record)
        for key in ("params", "software", "frames_used", "timings", "upstream"):
            row[key] = json.dumps(row.get(key))
        row.setdefault("created_at", utc_now())
        row["actor"] = actor
        cols = ", ".join(row)
        with self.conn:
            cur = self.conn.execute(
                f"INSERT INTO analyses ({cols}) VALUES ({', '.join('?' for _ in row)})", list(row.values())
            )
            analysis_id = cur.lastrowid
            self.conn.executemany(
                "INSERT INTO track_scores (analysis_id, track_id, score, n_frames, status, reason) VALUES (?, ?, ?, ?, ?, ?)",
                [(analysis_id, tid, t.get("score"), t.get("n_frames", 0), t.get("status"), t.get("reason"))
                 for tid, t in track_scores.items()],
            )
            self.conn.executemany(
                "INSERT INTO frame_scores (analysis_id, frame, track_id, score) VALUES (?, ?, ?, ?)",
                [(analysis_id, f, t, s) for f, t, s in frame_scores],
            )
            self._audit(
                actor, "analysis.run", f"evidence:{record['sha256']}",
                {"analysis_id": analysis_id, "detector": record["detector"], "version": record.get("detector_version"),
                 "weights_sha256": record.get("weights_sha256"), "threshold": record.get("threshold"),
                 "status": record["status"], "params_key": record.get("params_key")},
            )
        return analysis_id

    # -- bias evaluations -----------------------------------------------------------------------
    def save_bias_report(self, report: dict, html_path: str | None, actor: str) -> list[int]:
        """Store one row per detector of a bias evaluation run (and audit it)."""
        ids = []
        with self.conn:
            for name, d in report["detectors"].items():
                cur = self.conn.execute(
                    "INSERT INTO bias_reports (created_at, actor, detector, detector_version, dataset, labels_sha256, "
                    "videos, scored, threshold, result, html_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [report["created_at"], actor, name, d["version"], report["dataset"], report["labels_sha256"],
                     report["videos"], d["scored"], d["threshold"], json.dumps(d), html_path],
                )
                ids.append(cur.lastrowid)
            self._audit(actor, "bias.evaluate", f"dataset:{report['labels_sha256']}",
                        {"dataset": report["dataset"], "detectors": sorted(report["detectors"]), "videos": report["videos"]})
        return ids

    def latest_bias_report(self, detector: str) -> dict | None:
        rows = list(self.db.query(
            "SELECT * FROM bias_reports WHERE detector = ? ORDER BY id DESC LIMIT 1", [detector]))
        return _decode_json(rows[0], "result") if rows else None

    # -- notes and verdicts ---------------------------------------------------------------------
    def add_note(self, case_id: int, text: str, author: str, sha256: str | None = None,
                 frame: int | None = None, time_s: float | None = None, track_id: int | None = None) -> int:
        """A new note (version 1); returns its note id."""
        if not text.strip():
            raise StoreError("a note needs text")
        with self.conn:
            self._require_case(case_id)
            note_id = self.conn.execute("INSERT INTO note_ids (case_id) VALUES (?)", [case_id]).lastrowid
            self.conn.execute(
                "INSERT INTO notes (note_id, version, case_id, sha256, frame, time_s, track_id, author, created_at, text, deleted) "
                "VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                [note_id, case_id, sha256, frame, time_s, track_id, author, utc_now(), text],
            )
            self._audit(author, "note.add", f"case:{case_id}", {"note_id": note_id, "frame": frame, "track_id": track_id})
        return note_id

    def edit_note(self, note_id: int, text: str, author: str, deleted: bool = False) -> int:
        """A new version of a note (older versions stay); returns the new version number."""
        with self.conn:
            latest = self._latest_note(note_id)
            version = latest["version"] + 1
            self.conn.execute(
                "INSERT INTO notes (note_id, version, case_id, sha256, frame, time_s, track_id, author, created_at, text, deleted) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [note_id, version, latest["case_id"], latest["sha256"], latest["frame"], latest["time_s"],
                 latest["track_id"], author, utc_now(), text, int(deleted)],
            )
            self._audit(author, "note.delete" if deleted else "note.edit", f"case:{latest['case_id']}",
                        {"note_id": note_id, "version": version})
        return version

    def _latest_note(self, note_id: int) -> dict:
        row = self.conn.execute(
            "SELECT * FROM notes WHERE note_id = ? ORDER BY version DESC LIMIT 1", [note_id]
        ).fetchone()
        if row is None:
            raise StoreError(f"no note with id {note_id}")
        cols = [d[0] for d in self.conn.execute("SELECT * FROM notes LIMIT 0").description]
        return dict(zip(cols, row))

    def notes(self, case_id: int, include_deleted: bool = False) -> list[dict]:
        """The latest version of each note of a case, oldest note first."""
        rows = self.db.query(
            "SELECT * FROM notes n WHERE case_id = ? AND version = "
            "(SELECT max(version) FROM notes m WHERE m.note_id = n.note_id) ORDER BY note_id",
            [case_id],
        )
        return [dict(r) for r in rows if include_deleted or not r["deleted"]]

    def note_history(self, note_id: int) -> list[dict]:
        rows = self.db.query("SELECT * FROM notes WHERE note_id = ? ORDER BY version", [note_id])
        return [dict(r) for r in rows]

    def set_verdict(self, case_id: int, verdict: str, reason: str, author: str, sha256: str | None = None) -> int:
        """Record the analyst's verdict (a new row each time; the history is kept)."""
        if verdict not in VERDICTS:
            raise StoreError(f"verdict must be one of {', '.join(VERDICTS)}")
        with self.conn:
            self._require_case(case_id)
            cur = self.conn.execute(
                "INSERT INTO verdicts (case_id, sha256, verdict, reason, author, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [case_id, sha256, verdict, reason, author, utc_now()],
            )
            self._audit(author, "verdict.set", f"case:{case_id}", {"verdict": verdict, "sha256": sha256, "verdict_id": cur.lastrowid})
        return cur.lastrowid

    def verdicts(self, case_id: int) -> list[dict]:
        """Every verdict of a case, newest first."""
        return list(self.db.query("SELECT * FROM verdicts WHERE case_id = ? ORDER BY id DESC", [case_id]))

    def _require_case(self, case_id: int) -> None:
        if not self.conn.execute("SELECT 1 FROM cases WHERE id = ?", [case_id]).fetchone():
            raise StoreError(f"no case with id {case_id}")


def _decode_json(row: dict, *keys: str) -> dict:
    row = dict(row)
    for key in keys:
        if row.get(key) is not None:
            row[key] = json.loads(row[key])
    return row


def backup(store: Store, dest: str | Path) -> str:
    """Copy the database with SQLite's online backup API; returns the copy's integrity check."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    target = sqlite3.connect(str(dest))
    try:
        store.conn.backup(target)
        return target.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        target.close()

