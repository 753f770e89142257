"""Case bundles: one zip archive holding a case's facts, audit entries and report (evidence files optional), verified before import.

A bundle is a zip with exactly these members:

- `manifest.json`: format and workbench version, who exported it where and when (UTC), the
  source's history head, the case row, its evidence rows (sha256, size, probe), every face run
  (boxes), analysis (detector version, weights sha256, track and frame scores) and ensemble of
  that evidence, every version of every note, every verdict, and the case's audit entries as a
  segment of the hash chain (see `audit_segment`);
- `report.html`: the case report as the exporter's workbench rendered it (optional);
- `evidence/<sha256>`: an evidence file, named by its sha256 (only with `with_evidence`);
- `SHA256SUMS`: the sha256 of every other member, one `HASH  NAME` line each.

What verification proves: every member is intact against SHA256SUMS, every included evidence
file hashes to its name, the audit segment is internally consistent (each entry's hash over its
contents and its predecessor's hash), and every exported fact matches the entry that recorded it.
What it cannot prove: that the bundle comes from the workbench it names. Whoever can edit the
archive can rewrite the whole segment with new hashes; comparing the manifest's `source_head`
with a head printed by the source workbench (`python -m workbench verify`) shows that.

Re-importing a bundle (the same `bundle_id`) is refused, naming the case it was imported as: a
bundle becomes one local case, once. Import the case into another workbench to get a second copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from workbench import __version__
from workbench.evidence import FILE_MODE, EvidenceError, private_dir, stored_path, validate
from workbench.sandbox import SandboxError
from workbench.store import (
    FACT_TABLES, GENESIS, VERDICTS, Store, StoreError, bundle_import, entry_hash, evidence_ensembles, import_case,
    read_snapshot, score_digests, utc_now,
)
from workbench.video import DEFAULT_LIMITS, Limits, VideoError

FORMAT = "workbench-case-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
REPORT = "report.html"
EVIDENCE_DIR = "evidence/"
SHA256_RE = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20


class BundleError(Exception):
    """A bundle that cannot be exported, or is refused on import (nothing was written)."""


@dataclass(frozen=True)
class BundleLimits:
    """What an archive may be before we read it (checked from the zip's directory, then while reading)."""

    max_members: int = 1000
    max_total_bytes: int = 64 * 1024**3  # uncompressed, all members together
    max_manifest_bytes: int = 512 * 1024**2
    max_report_bytes: int = 256 * 1024**2
    max_sums_bytes: int = 1024**2

    @classmethod
    def from_env(cls) -> "BundleLimits":
        """Defaults, each overridable: WORKBENCH_BUNDLE_MAX_MEMBERS, WORKBENCH_BUNDLE_MAX_BYTES."""
        base = cls()
        return cls(max_members=int(os.environ.get("WORKBENCH_BUNDLE_MAX_MEMBERS", base.max_members)),
                   max_total_bytes=int(os.environ.get("WORKBENCH_BUNDLE_MAX_BYTES", base.max_total_bytes)))


@dataclass
class BundleCheck:
    """What `verify_bundle` found.

    Attributes:
        ok: every check passed.
        problems: one sentence per failed check (empty when ok).
        bundle_sha256: the archive file's sha256.
        manifest: the parsed manifest (None when it could not be read).
        evidence_files: sha256 of every evidence file the archive holds (and that matched its name).
    """

    bundle_sha256: str
    problems: list[str] = field(default_factory=list)
    manifest: dict | None = None
    evidence_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: verified (with what it holds) or the number of failed checks."""
        if not self.ok:
            return f"bundle FAILED verification ({len(self.problems)} problem(s)); sha256 {self.bundle_sha256}"
        m = self.manifest
        return (f"bundle verified: case {m['case']['name']!r} from {m['exporter']['actor']!r} at {m['exported_at']!r}, "
                f"{len(m['evidence'])} evidence file(s) ({len(self.evidence_files)} included), "
                f"{len(m['analyses'])} analyses, {len({n['note_id'] for n in m['notes']})} notes, "
                f"{len(m['verdicts'])} verdicts, {len(m['audit']['entries'])} audit entries; sha256 {self.bundle_sha256}")


# -- export -----------------------------------------------------------------------------------------
def _case_entries(case_id: int, shas: set[str]):
    """Which audit entries belong to a case: its own and its evidence files' (not other cases' intakes)."""
    subjects = {f"case:{case_id}"} | {f"evidence:{s}" for s in shas}

    def belongs(entry: dict) -> bool:
        if entry["subject"] not in subjects:
            return False
        details = entry["details"]
        # An intake of the same bytes into another case names that case and what it was called there.
        return not (entry["action"] == "evidence.intake" and isinstance(details, dict)
                    and details.get("case_id") not in (None, case_id))

    return belongs


def audit_segment(store: Store, case_id: int, shas: set[str]) -> dict:
    """The chain from the case's first entry to the head: the case's entries in full, the others as id and hash.

    Other cases' entries are withheld (their hash stays, so the chain still links through them).

    Returns:
        {"first_id", "head", "entries": [full entry | {"id", "hash", "withheld": True}]}.
    """
    newest = store.audit_log(limit=1)
    if not newest:
        return {"first_id": None, "head": None, "entries": []}
    everything = store.audit_log(limit=newest[0]["id"])[::-1]
    belongs = _case_entries(case_id, shas)
    first = next((i for i, e in enumerate(everything) if belongs(e)), None)
    if first is None:
        return {"first_id": None, "head": newest[0]["hash"], "entries": []}
    entries = []
    for e in everything[first:]:
        if belongs(e):
            entries.append({k: e[k] for k in ("id", "at", "actor", "action", "subject", "details", "prev_hash", "hash")})
        else:
            entries.append({"id": e["id"], "hash": e["hash"], "withheld": True})
    return {"first_id": everything[first]["id"], "head": newest[0]["hash"], "entries": entries}


def case_facts(store: Store, case_id: int) -> dict:
    """Every fact of a case a bundle carries (read it inside `read_snapshot` for one consistent view)."""
    case = dict(store.case(case_id))
    evidence = []
    face_runs, analyses, ensembles = [], [], []
    for e in store.case_evidence(case_id):
        evidence.append({k: e[k] for k in ("sha256", "original_name", "size", "stored_path", "added_at", "added_by",
                                           "probe")})
        for run in reversed(store.face_runs(e["sha256"])):
            boxes = [b for rows in store.face_run_tracks(run["id"]).values() for b in rows]
            face_runs.append(dict(run, boxes=[{k: b[k] for k in ("frame", "track_id", "x1", "y1", "x2", "y2", "prob",
                                                                 "detected", "landmarks")} for b in boxes]))
        for a in store.analyses(e["sha256"]):
            tracks, frames = store.analysis_scores(a["id"])
            analyses.append(dict(
                a, track_scores=[{k: t[k] for k in ("track_id", "score", "n_frames", "status", "reason")}
                                 for t in sorted(tracks.values(), key=lambda t: t["track_id"])],
                frame_scores=[{k: f[k] for k in ("frame", "track_id", "score")} for f in frames]))
        ensembles += evidence_ensembles(store, e["sha256"])
    notes = [v for n in store.notes(case_id, include_deleted=True) for v in store.note_history(n["note_id"])]
    verdicts = list(reversed(store.verdicts(case_id)))
    return {"case": case, "evidence": evidence, "face_runs": face_runs, "analyses": analyses, "ensembles": ensembles,
            "notes": notes, "verdicts": verdicts}


def _sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _member(name: str) -> zipfile.ZipInfo:
    """A regular, read-only, deflated member (the mode is stored so a reader sees a plain file)."""
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFREG | 0o444) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _write_member(zf: zipfile.ZipFile, name: str, data: bytes, sums: dict[str, str]) -> None:
    zf.writestr(_member(name), data)
    sums[name] = hashlib.sha256(data).hexdigest()


def _write_evidence(zf: zipfile.ZipFile, row: dict, sums: dict[str, str]) -> None:
    name = EVIDENCE_DIR + row["sha256"]
    source = Path(row["stored_path"] or "")
    if not source.is_file():
        raise BundleError(f"evidence {row['original_name']!r} ({row['sha256']}) has no stored file here: "
                          "export without --with-evidence, or add the file again")
    digest = hashlib.sha256()
    with open(source, "rb") as src, zf.open(_member(name), "w", force_zip64=True) as dest:
        while block := src.read(CHUNK):
            digest.update(block)
            dest.write(block)
    if digest.hexdigest() != row["sha256"]:
        raise BundleError(f"evidence {row['original_name']!r} no longer matches its hash {row['sha256']} "
                          f"(it now hashes to {digest.hexdigest()}): nothing exported")
    sums[name] = row["sha256"]


def export_case(store: Store, case_id: int, out: str | os.PathLike, *, actor: str, with_evidence: bool = False,
                with_report: bool = True) -> dict:
    """Write a case as one bundle (see the module docstring); audited as `case.export` with its sha256.

    The source's history must verify first: a bundle vouches for its facts with the chain. The
    archive is written beside `out` and renamed into place, so a failed export leaves nothing.

    Args:
        store: the case store.
        case_id: the case to export.
        out: the archive to write (refused if it exists).
        actor: who exports it (named in the manifest and the audit log).
        with_evidence: include each evidence file under its sha256 (re-hashed while copied).
        with_report: include the HTML case report (rendered now, without heatmaps).

    Returns:
        {"path", "bundle_sha256", "bundle_id", "bytes", "members", "with_evidence"}.

    Raises:
        BundleError: no actor, the history is broken, `out` exists, an evidence file is missing or changed.
        StoreError: no case with this id.
    """
    if not (actor or "").strip():
        raise BundleError("an export needs the exporting analyst's name")
    out = Path(out)
    if out.exists():
        raise BundleError(f"{out} already exists: choose another name")
    store.case(case_id)
    report_html = None
    if with_report:
        from workbench.report import case_report  # lazy: rendering pulls in cv2 and the detectors; verify never does

        report_html = case_report(store, case_id, actor=actor, with_heatmaps=False)
    with read_snapshot(store):
        history = store.verify_history()
        if not history["ok"]:
            raise BundleError(f"this workbench's history does not verify ({history['reason']}): nothing exported; "
                              "run `python -m workbench verify`")
        facts = case_facts(store, case_id)
        segment = audit_segment(store, case_id, {e["sha256"] for e in facts["evidence"]})
    bundle_id = str(uuid.uuid4())
    for e in facts["evidence"]:
        e["file"] = EVIDENCE_DIR + e["sha256"] if with_evidence else None
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "bundle_id": bundle_id, "workbench_version": __version__,
        "exported_at": utc_now(), "exporter": {"actor": actor, "host": socket.gethostname()},
        "source_history": {"ok": history["ok"], "entries": history["entries"], "head": history["head"]},
        **facts, "audit": segment,
        "report": None if report_html is None else {"member": REPORT,
                                                     "sha256": hashlib.sha256(report_html.encode()).hexdigest()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".bundle-", suffix=".part", dir=out.parent)
    tmp = Path(tmp_name)
    sums: dict[str, str] = {}
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            _write_member(zf, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode(), sums)
            if report_html is not None:
                _write_member(zf, REPORT, report_html.encode(), sums)
            if with_evidence:
                for e in facts["evidence"]:
                    _write_evidence(zf, e, sums)
            zf.writestr(_member(SUMS), "".join(f"{h}  {n}\n" for n, h in sums.items()))
        if out.exists():
            raise BundleError(f"{out} appeared while the bundle was written: choose another name")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    bundle_sha256 = _sha256_path(out)
    size = out.stat().st_size
    store.audit(actor, "case.export", f"case:{case_id}", {
        "bundle_id": bundle_id, "bundle_sha256": bundle_sha256, "bytes": size, "members": len(sums) + 1,
        "with_evidence": with_evidence, "with_report": report_html is not None, "source_head": history["head"]})
    return {"path": str(out), "bundle_sha256": bundle_sha256, "bundle_id": bundle_id, "bytes": size,
            "members": len(sums) + 1, "with_evidence": with_evidence}


# -- reading an untrusted archive ---------------------------------------------------------------------
def _name_problem(name: str) -> str | None:
    """Why a member name is refused (None: a name a bundle may hold)."""
    path = PurePosixPath(name)
    if "\\" in name or name.startswith("/") or re.match(r"[A-Za-z]:", name) or ".." in path.parts or "\x00" in name:
        return f"member {name!r} points outside the archive (absolute path or '..'): refused (zip slip)"
    if name in (MANIFEST, SUMS, REPORT):
        return None
    if name.startswith(EVIDENCE_DIR) and SHA256_RE.fullmatch(name[len(EVIDENCE_DIR):]):
        return None
    return f"member {name!r} is not part of a case bundle (only {MANIFEST}, {SUMS}, {REPORT} and evidence/<sha256>)"


def _structure_problems(zf: zipfile.ZipFile, limits: BundleLimits) -> list[str]:
    """Refusals read from the zip's directory alone, before any member is decompressed."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        return [f"the archive has {len(infos)} members, more than the {limits.max_members} allowed: refused"]
    problems, seen = [], set()
    total = 0
    for info in infos:
        name = info.filename
        if name in seen:
            problems.append(f"member {name!r} appears more than once: refused (which copy would count?)")
        seen.add(name)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            problems.append(f"member {name!r} is a symbolic link: refused")
        elif info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            problems.append(f"member {name!r} is not a regular file: refused")
        elif (problem := _name_problem(name)) is not None:
            problems.append(problem)
        if info.flag_bits & 0x1:
            problems.append(f"member {name!r} is encrypted: refused")
        total += info.file_size
    if total > limits.max_total_bytes:
        problems.append(f"the archive unpacks to {total} bytes, more than the {limits.max_total_bytes} allowed: "
                        "refused (zip bomb?)")
    for name, cap in ((MANIFEST, limits.max_manifest_bytes), (REPORT, limits.max_report_bytes),
                      (SUMS, limits.max_sums_bytes)):
        if name in seen and zf.getinfo(name).file_size > cap:
            problems.append(f"{name} unpacks to {zf.getinfo(name).file_size} bytes, more than {cap}: refused")
    return problems


def _read_member(zf: zipfile.ZipFile, name: str, sink=None) -> str:
    """sha256 of a member, read in chunks, never past the size its directory entry declares."""
    info = zf.getinfo(name)
    digest, read = hashlib.sha256(), 0
    with zf.open(info) as fh:
        while block := fh.read(CHUNK):
            read += len(block)
            if read > info.file_size:
                raise BundleError(f"member {name!r} unpacks to more than the {info.file_size} bytes it declares")
            digest.update(block)
            if sink is not None:
                sink(block)
    return digest.hexdigest()


def _parse_sums(text: str) -> tuple[dict[str, str], list[str]]:
    sums, problems = {}, []
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split("  ", 1)
        if len(parts) != 2 or not SHA256_RE.fullmatch(parts[0]):
            problems.append(f"{SUMS} line {i} is not 'SHA256  NAME'")
        elif parts[1] in sums:
            problems.append(f"{SUMS} lists {parts[1]!r} twice")
        else:
            sums[parts[1]] = parts[0]
    return sums, problems


# -- the manifest's shape ---------------------------------------------------------------------------
_NUM = (int, float)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_OPT_NUM = (int, float, type(None))
_ANY = object
SHAPES = {
    "case": {"id": int, "name": str, "description": _OPT_STR, "created_at": str, "created_by": _OPT_STR},
    "evidence": {"sha256": str, "original_name": str, "size": int, "stored_path": _OPT_STR, "added_at": str,
                 "added_by": _OPT_STR, "probe": dict, "file": _OPT_STR},
    "face_runs": {"id": int, "sha256": str, "params_key": str, "params": _ANY, "frames_analysed": list,
                  "detection_frames": list, "timings": _ANY, "created_at": str, "boxes": list},
    "boxes": {"frame": int, "track_id": int, "x1": _NUM, "y1": _NUM, "x2": _NUM, "y2": _NUM, "prob": _OPT_NUM,
              "detected": int, "landmarks": (list, type(None))},
    "analyses": {"id": int, "sha256": str, "face_run_id": _OPT_INT, "detector": str, "detector_version": str,
                 "weights_sha256": _OPT_STR, "params_key": str, "params": _ANY, "software": _ANY, "status": str,
                 "reason": _OPT_STR, "score": _OPT_NUM, "threshold": _OPT_NUM, "rule": _OPT_STR,
                 "frames_used": _ANY, "timings": _ANY, "created_at": str, "actor": _OPT_STR,
                 "track_scores": list, "frame_scores": list},
    "track_scores": {"track_id": int, "score": _OPT_NUM, "n_frames": _OPT_INT, "status": _OPT_STR,
                     "reason": _OPT_STR},
    "frame_scores": {"frame": int, "track_id": int, "score": _OPT_NUM},
    "ensembles": {"id": int, "sha256": str, "face_run_id": _OPT_INT, "rule": str, "members": str, "left_out": _OPT_STR,
                  "status": str, "score": _OPT_NUM, "threshold": _OPT_NUM, "created_at": str, "actor": _OPT_STR},
    "notes": {"id": int, "note_id": int, "version": int, "case_id": int, "sha256": _OPT_STR, "frame": _OPT_INT,
              "time_s": _OPT_NUM, "track_id": _OPT_INT, "author": str, "created_at": str, "text": str,
              "deleted": int, "frame_end": _OPT_INT, "time_end_s": _OPT_NUM},
    "verdicts": {"id": int, "case_id": int, "sha256": _OPT_STR, "verdict": str, "reason": str, "author": str,
                 "created_at": str},
}


def _shape_problems(label: str, row, shape: dict) -> list[str]:
    if not isinstance(row, dict):
        return [f"{label} is not an object"]
    problems = []
    for key, kinds in shape.items():
        if key not in row:
            problems.append(f"{label} lacks {key!r}")
        elif kinds is not _ANY and (not isinstance(row[key], kinds) or isinstance(row[key], bool)):
            problems.append(f"{label} has {key} {row[key]!r:.40}, of the wrong type")
    return problems


def manifest_problems(m) -> list[str]:
    """What makes a manifest unusable: wrong format, missing or mistyped fields, dangling references."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return [f"{MANIFEST} is not a case bundle manifest (format {FORMAT!r} expected)"]
    if m.get("format_version") != FORMAT_VERSION:
        return [f"{MANIFEST} has format version {m.get('format_version')!r}; this workbench reads {FORMAT_VERSION}"]
    problems = []
    for key, kind in (("bundle_id", str), ("exported_at", str), ("exporter", dict), ("case", dict),
                      ("audit", dict), ("source_history", dict)):
        if not isinstance(m.get(key), kind):
            problems.append(f"{MANIFEST} lacks {key!r}")
    for key in ("evidence", "face_runs", "analyses", "ensembles", "notes", "verdicts"):
        if not isinstance(m.get(key), list):
            problems.append(f"{MANIFEST} lacks the list {key!r}")
    if problems:
        return problems
    if not isinstance(m["exporter"].get("actor"), str):
        problems.append(f"{MANIFEST}: the exporter has no name")
    problems += _shape_problems("the case", m["case"], SHAPES["case"])
    if isinstance(m["case"].get("name"), str) and not m["case"]["name"].strip():
        problems.append("the case has no name")
    for table in ("evidence", "face_runs", "analyses", "ensembles", "notes", "verdicts"):
        for i, row in enumerate(m[table]):
            problems += _shape_problems(f"{table}[{i}]", row, SHAPES[table])
    if problems:
        return problems[:50]
    for table, key in (("evidence", lambda r: r["sha256"]), ("face_runs", lambda r: r["id"]),
                       ("analyses", lambda r: r["id"]), ("ensembles", lambda r: r["id"]),
                       ("notes", lambda r: (r["note_id"], r["version"])), ("verdicts", lambda r: r["id"])):
        keys = [key(r) for r in m[table]]
        if len(set(keys)) != len(keys):
            problems.append(f"{table}: the same row is listed more than once")
    shas = {e["sha256"] for e in m["evidence"]}
    for e in m["evidence"]:
        if not SHA256_RE.fullmatch(e["sha256"]):
            problems.append(f"evidence {e['sha256']!r:.70} is not a sha256")
        if e["file"] not in (None, EVIDENCE_DIR + e["sha256"]):
            problems.append(f"evidence {e['sha256'][:12]}… names the file {e['file']!r}, not {EVIDENCE_DIR}<its sha256>")
    runs = {r["id"] for r in m["face_runs"]}
    for r in m["face_runs"]:
        if r["sha256"] not in shas:
            problems.append(f"face run {r['id']} is of a file the bundle does not list")
        for j, b in enumerate(r["boxes"]):
            problems += _shape_problems(f"face run {r['id']} box {j}", b, SHAPES["boxes"])
    for a in m["analyses"]:
        if a["sha256"] not in shas:
            problems.append(f"analysis {a['id']} is of a file the bundle does not list")
        if a["face_run_id"] is not None and a["face_run_id"] not in runs:
            problems.append(f"analysis {a['id']} refers to face run {a['face_run_id']}, which the bundle does not hold")
        for kind in ("track_scores", "frame_scores"):
            for j, s in enumerate(a[kind]):
                problems += _shape_problems(f"analysis {a['id']} {kind}[{j}]", s, SHAPES[kind])
    analysis_ids = {a["id"] for a in m["analyses"]}
    for ens in m["ensembles"]:
        try:
            members = json.loads(ens["members"])
        except ValueError:
            members = None
        if not isinstance(members, dict) or not all(isinstance(v, int) and v in analysis_ids for v in members.values()):
            problems.append(f"ensemble {ens['id']} names member analyses the bundle does not hold")
        if ens["sha256"] not in shas or (ens["face_run_id"] is not None and ens["face_run_id"] not in runs):
            problems.append(f"ensemble {ens['id']} is of a file or face run the bundle does not hold")
    for kind in ("notes", "verdicts"):
        for row in m[kind]:
            if row["case_id"] != m["case"]["id"]:
                problems.append(f"{kind[:-1]} {row['id']} belongs to case {row['case_id']}, not the bundle's case")
            if row["sha256"] is not None and row["sha256"] not in shas:
                problems.append(f"{kind[:-1]} {row['id']} is about a file the bundle does not list")
    for v in m["verdicts"]:
        if v["verdict"] not in VERDICTS:
            problems.append(f"verdict {v['id']} is {v['verdict']!r}, not one of {', '.join(VERDICTS)}")
    return problems[:50]


# -- the audit segment and the facts it vouches for ----------------------------------------------------
def segment_problems(segment: dict) -> list[str]:
    """Whether the audit segment is one unbroken piece of a hash chain ending at its head."""
    entries = segment.get("entries")
    if not isinstance(entries, list):
        return ["the audit segment has no entries list"]
    if not entries:
        return []
    problems: list[str] = []
    prev = None
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("id"), int) or not isinstance(e.get("hash"), str):
            return [f"audit segment item {i} is not an entry"]
        if i and e["id"] != entries[i - 1]["id"] + 1:
            problems.append(f"audit entries {entries[i - 1]['id'] + 1}..{e['id'] - 1} are missing from the segment")
        if not e.get("withheld"):
            fields = ("at", "actor", "action", "subject", "prev_hash")
            if any(not isinstance(e.get(k), str) for k in fields) or "details" not in e:
                problems.append(f"audit entry {e['id']} lacks some of its fields")
                prev = e["hash"]
                continue
            if prev is not None and e["prev_hash"] != prev:
                problems.append(f"audit entry {e['id']} does not follow entry {entries[i - 1]['id']} (prev_hash differs)")
            if e["id"] == 1 and e["prev_hash"] != GENESIS:
                problems.append("audit entry 1 does not start the chain")
            if entry_hash(e["prev_hash"], e["id"], e["at"], e["actor"], e["action"], e["subject"], e["details"]) != e["hash"]:
                problems.append(f"audit entry {e['id']} ({e['action']!r}): its contents do not match its hash (changed)")
        prev = e["hash"]
    if segment.get("head") != entries[-1]["hash"]:
        problems.append("the audit segment does not end at the head hash the manifest records")
    if segment.get("first_id") != entries[0]["id"]:
        problems.append("the audit segment does not start where the manifest says")
    return problems


def _fact_rows(m: dict) -> dict[str, list[dict]]:
    case_id = m["case"]["id"]
    return {
        "cases": [m["case"]],
        "evidence": m["evidence"],
        "case_evidence": [{"case_id": case_id, "sha256": e["sha256"]} for e in m["evidence"]],
        "analyses": m["analyses"],
        "ensembles": m["ensembles"],
        "notes": m["notes"],
        "verdicts": m["verdicts"],
    }


def fact_problems(m: dict) -> list[str]:
    """Every exported fact against the audit entry (in the segment) that recorded it."""
    recorded: dict[tuple[str, object], dict] = {}
    specs = {spec.table: spec for spec in FACT_TABLES}
    for e in m["audit"]["entries"]:
        if e.get("withheld") or not isinstance(e.get("details"), dict):
            continue
        for spec in FACT_TABLES:
            if e["action"] in spec.actions:
                try:
                    recorded.setdefault((spec.table, spec.entry_key(e["details"])), e)
                except (KeyError, TypeError):
                    pass
    scores = {a["id"]: score_digests(a["track_scores"], a["frame_scores"]) for a in m["analyses"]}
    problems = []
    for table, rows in _fact_rows(m).items():
        spec = specs[table]
        for row in rows:
            try:
                key = spec.row_key(row)
                entry = recorded.get((table, key))
                facts = spec.facts(row, scores)
            except (KeyError, TypeError):
                problems.append(f"a {spec.label} row lacks the fields its audit entry records")
                continue
            label = f"{spec.label} {'/'.join(map(str, key)) if isinstance(key, tuple) else key}"
            if entry is None:
                problems.append(f"{label}: no audit entry in the bundle records it")
                continue
            for name, value in facts.items():
                if json.dumps(entry["details"].get(name), sort_keys=True) != json.dumps(value, sort_keys=True):
                    problems.append(f"{label}: {name} differs from what audit entry {entry['id']} recorded (changed)")
    return problems


# -- verify -----------------------------------------------------------------------------------------
def verify_bundle(path: str | os.PathLike, limits: BundleLimits | None = None) -> BundleCheck:
    """Check a bundle without writing anything; every failed check is one line of `problems`.

    Structure (zip slip, symlinks, duplicate names, member count, unpacked size, encryption) is
    checked from the zip's directory before anything is decompressed; a structural refusal stops
    there. Then every member against SHA256SUMS, each evidence file against its name and the
    manifest, the manifest's shape, the audit segment, and the facts against their entries.
    """
    limits = limits or BundleLimits.from_env()
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"no such bundle: {str(path)!r}")
    check = BundleCheck(bundle_sha256=_sha256_path(path))
    if not zipfile.is_zipfile(path):
        check.problems.append("not a zip archive")
        return check
    try:
        with zipfile.ZipFile(path) as zf:
            check.problems += _structure_problems(zf, limits)
            if check.problems:
                return check
            _verify_members(zf, check)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, BundleError) as exc:
        check.problems.append(f"the archive cannot be read: {exc}")
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        # A manifest shaped in a way the checks above did not foresee is a failed check, never a crash.
        check.problems.append(f"the manifest cannot be checked: {type(exc).__name__}: {str(exc)[:200]!r}")
    return check


def _verify_members(zf: zipfile.ZipFile, check: BundleCheck) -> None:
    names = set(zf.namelist())
    for required in (MANIFEST, SUMS):
        if required not in names:
            check.problems.append(f"the archive has no {required}")
    if check.problems:
        return
    sums, problems = _parse_sums(zf.read(SUMS).decode("utf-8", "replace"))
    check.problems += problems
    manifest_bytes = bytearray()
    actual = {}
    for name in sorted(names - {SUMS}):
        actual[name] = _read_member(zf, name, manifest_bytes.extend if name == MANIFEST else None)
        if name not in sums:
            check.problems.append(f"{name} is not listed in {SUMS}")
        elif sums[name] != actual[name]:
            check.problems.append(f"{name}: its sha256 {actual[name]} differs from {SUMS} ({sums[name]}): changed")
    for name in sorted(set(sums) - names):
        check.problems.append(f"{name!r} is listed in {SUMS} but missing from the archive")
    for name in sorted(n for n in actual if n.startswith(EVIDENCE_DIR)):
        sha = name[len(EVIDENCE_DIR):]
        if actual[name] != sha:
            check.problems.append(f"{name}: the file hashes to {actual[name]}, not to its name")
        else:
            check.evidence_files.append(sha)
    try:
        manifest = json.loads(bytes(manifest_bytes).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        check.problems.append(f"{MANIFEST} is not JSON: {type(exc).__name__}: {str(exc)[:200]}")
        return
    problems = manifest_problems(manifest)
    if problems:
        check.problems += problems
        return
    check.manifest = manifest
    listed = {e["sha256"]: e for e in manifest["evidence"]}
    for sha in check.evidence_files:
        if sha not in listed:
            check.problems.append(f"{EVIDENCE_DIR}{sha} is not an evidence file of the case")
        elif zf.getinfo(EVIDENCE_DIR + sha).file_size != listed[sha]["size"]:
            check.problems.append(f"{EVIDENCE_DIR}{sha} has {zf.getinfo(EVIDENCE_DIR + sha).file_size} bytes; "
                                  f"the manifest says {listed[sha]['size']}")
    for sha, e in listed.items():
        if e["file"] is not None and e["file"] not in names:
            check.problems.append(f"evidence {e['original_name']!r}: {e['file']} is named in the manifest but missing")
    report = manifest.get("report")
    if report is not None:
        if not isinstance(report, dict) or report.get("member") != REPORT or REPORT not in actual:
            check.problems.append(f"the manifest names a report the archive does not hold as {REPORT}")
        elif report.get("sha256") != actual[REPORT]:
            check.problems.append(f"{REPORT}: its sha256 differs from the one the manifest records")
    check.problems += segment_problems(manifest["audit"])
    check.problems += fact_problems(manifest)


# -- import -----------------------------------------------------------------------------------------
def _store_file(zf: zipfile.ZipFile, sha: str, evidence_dir: Path) -> Path:
    """Copy one evidence member into the evidence store under its sha256 (0400), hashed again while written."""
    final = stored_path(evidence_dir, sha)
    private_dir(final.parent)
    incoming = private_dir(evidence_dir / ".incoming")
    fd, tmp_name = tempfile.mkstemp(prefix="bundle-", suffix=".part", dir=incoming)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _read_member(zf, EVIDENCE_DIR + sha, out.write)
        if digest != sha:
            raise BundleError(f"{EVIDENCE_DIR}{sha} changed while it was imported")
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def import_bundle(store: Store, path: str | os.PathLike, *, actor: str, evidence_dir: str | os.PathLike,
                  bundles_dir: str | os.PathLike, limits: BundleLimits | None = None,
                  video_limits: Limits = DEFAULT_LIMITS) -> dict:
    """Verify a bundle, then import it as a NEW local case (see `store.import_case`).

    Nothing is written unless every check passes. Included evidence files not yet in this
    workbench are stored under their sha256 (and validated as videos, in the sandbox, as at
    intake); files not included are recorded as "referenced, file not present". A copy of the
    archive is kept under `bundles_dir` (named by its sha256), so the report and manifest stay as
    received. The import is audited as `case.imported` by `actor`, naming the bundle's sha256 and
    the exporter. A bundle already imported here is refused.

    Returns:
        {"case_id", "bundle_id", "bundle_sha256", "evidence" ({sha256: what happened}), "exporter", "archive"}.

    Raises:
        BundleError: no actor, the bundle fails verification (every problem listed), was imported
            already, or an evidence file is refused; nothing was written.
    """
    if not (actor or "").strip():
        raise BundleError("an import needs the importing analyst's name")
    check = verify_bundle(path, limits)
    if not check.ok:
        raise BundleError("the bundle failed verification; nothing was imported:\n"
                          + "\n".join(f"- {p}" for p in check.problems))
    m = check.manifest
    earlier = bundle_import(store, m["bundle_id"])
    if earlier is not None:
        raise BundleError(f"this bundle was already imported as case #{earlier['case_id']} by {earlier['imported_by']} "
                          f"at {earlier['imported_at']}; nothing was written")
    evidence_dir = Path(evidence_dir)
    archive = Path(bundles_dir) / f"{check.bundle_sha256}.zip"
    created: list[Path] = []
    status: dict[str, str] = {}
    facts = {k: m[k] for k in ("case", "face_runs", "analyses", "ensembles", "notes", "verdicts")}
    facts["evidence"] = []
    try:
        with zipfile.ZipFile(path) as zf:
            for e in m["evidence"]:
                sha = e["sha256"]
                # Even a file not present gets its place: adding the same bytes later fills it.
                local = stored_path(evidence_dir, sha)
                row = dict(e, stored_path=str(local))
                try:
                    known = store.evidence(sha)
                except StoreError:
                    known = None
                if known is not None:
                    status[sha] = "already in this workbench"
                elif sha in check.evidence_files:
                    if not local.exists():
                        created.append(_store_file(zf, sha, evidence_dir))
                    elif _sha256_path(local) != sha:
                        raise BundleError(f"{local} is not the file its name says; move it away and import again")
                    try:
                        validate(local, video_limits)
                    except (VideoError, SandboxError) as exc:
                        raise BundleError(f"evidence {e['original_name']!r} ({sha}) is refused as a video: {exc}") from exc
                    status[sha] = "stored from the bundle"
                else:
                    status[sha] = "referenced, file not present"
                facts["evidence"].append(row)
        private_dir(archive.parent)
        if not archive.exists():
            shutil.copyfile(path, archive)
            created.append(archive)
            os.chmod(archive, FILE_MODE)
        record = {"bundle_id": m["bundle_id"], "bundle_sha256": check.bundle_sha256, "exporter": m["exporter"],
                  "exported_at": m["exported_at"], "workbench_version": m.get("workbench_version"),
                  "source_head": m["audit"]["head"], "archive_path": str(archive), "evidence": status}
        case_id = import_case(store, facts, record, actor)
    except (StoreError, EvidenceError, OSError, zipfile.BadZipFile) as exc:
        for p in created:
            p.unlink(missing_ok=True)
        raise BundleError(f"import refused, nothing was written: {exc}") from exc
    except BaseException:
        for p in created:
            p.unlink(missing_ok=True)
        raise
    return {"case_id": case_id, "bundle_id": m["bundle_id"], "bundle_sha256": check.bundle_sha256, "evidence": status,
            "exporter": m["exporter"], "archive": str(archive)}
