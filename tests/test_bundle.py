"""Case bundles: export, verify and import between two stores; tampered and hostile archives refused with nothing written."""
from __future__ import annotations

import hashlib
import json
import shutil
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from helpers import press
from workbench import bundle, cli
from workbench.bundle import BundleError, BundleLimits, export_case, import_bundle, verify_bundle
from workbench.evidence import EvidenceError, ingest
from workbench.evidence import verify as verify_evidence
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.store import Store, StoreError, case_import, evidence_ensembles

EXPORTER = "Ann Exporter"
IMPORTER = "Dana Importer"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_detectors, two_face_clip, no_face_clip):
    """A file-backed store with a case: 2 files, both analysed, an edited and a deleted note, two verdicts;
    and its bundle with and without the evidence files."""
    tmp = tmp_path_factory.mktemp("bundle-source")
    store = Store(tmp / "source.db")
    other = store.create_case("another case", actor="zed")  # ids differ between the stores: the import must remap
    case_id = store.create_case("Interview 7", description="two clips from a tip", actor=EXPORTER)
    clip, _ = two_face_clip
    faces = ingest(store, clip, "interview.mp4", tmp / "evidence", actor=EXPORTER, case_id=case_id)
    empty = ingest(store, no_face_clip, "street.mp4", tmp / "evidence", actor=EXPORTER, case_id=case_id)
    analyse_evidence(store, faces["sha256"], ["tiny-test"], Sampling(sample_fps=2))
    analyse_evidence(store, empty["sha256"], ["tiny-test"], Sampling(sample_fps=2))
    store.add_note(other, "another case's secret", "zed")  # inside the case's stretch of the chain
    note = store.add_note(case_id, "mouth edge flickers", "ann", sha256=faces["sha256"], frame=12, time_s=1.2, track_id=0)
    store.edit_note(note, "mouth edge flickers at 1.2 s", "bob")
    store.add_note(case_id, "blending flickers across the turn", "ann", sha256=faces["sha256"], frame=10, time_s=1.0,
                   frame_end=20, time_end_s=2.0)  # a note pinned to a time range keeps its range
    gone = store.add_note(case_id, "typo note", "ann")
    store.edit_note(gone, "typo note", "ann", deleted=True)
    store.set_verdict(case_id, "inconclusive", "need the original", "ann", sha256=faces["sha256"])
    store.set_verdict(case_id, "likely manipulated", "blending at the jaw", "bob", sha256=faces["sha256"])
    with_files = export_case(store, case_id, tmp / "with.zip", actor=EXPORTER, with_evidence=True)
    without = export_case(store, case_id, tmp / "without.zip", actor=EXPORTER, with_report=False)
    yield {"store": store, "case_id": case_id, "with": Path(with_files["path"]), "without": Path(without["path"]),
           "shas": [faces["sha256"], empty["sha256"]], "tmp": tmp}
    store.close()


@pytest.fixture
def target(tmp_path):
    """An empty second workbench: its store, evidence folder and bundles folder."""
    store = Store(tmp_path / "target.db")
    yield {"store": store, "evidence": tmp_path / "evidence", "bundles": tmp_path / "bundles", "tmp": tmp_path}
    store.close()


def do_import(target, path):
    return import_bundle(target["store"], path, actor=IMPORTER, evidence_dir=target["evidence"],
                         bundles_dir=target["bundles"])


def snapshot(target) -> tuple:
    """Everything an import could write: row counts, and the files under the evidence and bundles folders."""
    files = sorted(str(p) for d in (target["evidence"], target["bundles"]) if d.exists()
                   for p in d.rglob("*") if p.is_file())
    return target["store"].table_counts(), files


def without_ids(rows, *drop):
    return [{k: v for k, v in r.items() if k not in ("id", "case_id", *drop)} for r in rows]


def analysis_facts(store, sha):
    out = []
    for a in store.analyses(sha):
        tracks, frames = store.analysis_scores(a["id"])
        row = {k: a[k] for k in ("detector", "detector_version", "weights_sha256", "status", "reason", "score",
                                 "threshold", "rule", "params", "software", "frames_used", "created_at", "actor")}
        row["params_key"] = a["params_key"].split("|imported:")[0]
        row["tracks"] = sorted((t["track_id"], t["score"], t["n_frames"], t["status"]) for t in tracks.values())
        row["frames"] = [(f["frame"], f["track_id"], f["score"]) for f in frames]
        run = next(r for r in store.face_runs(sha) if r["id"] == a["face_run_id"])
        row["boxes"] = {t: [(b["frame"], b["x1"], b["y1"], b["x2"], b["y2"], b["prob"]) for b in rows]
                        for t, rows in store.face_run_tracks(run["id"]).items()}
        out.append(row)
    return out


def ensemble_facts(store, sha):
    """Each stored ensemble of a file, its members named by detector and the member analysis' score."""
    out = []
    for ens in evidence_ensembles(store, sha):
        members = {name: [(f["frame"], f["track_id"], f["score"]) for f in store.analysis_scores(aid)[1]]
                   for name, aid in json.loads(ens["members"]).items()}
        out.append(({k: ens[k] for k in ("rule", "status", "score", "threshold", "left_out", "created_at", "actor")},
                    members))
    return out


def all_note_versions(store, case_id):
    return [v for n in store.notes(case_id, include_deleted=True) for v in store.note_history(n["note_id"])]


def test_round_trip_imports_the_same_facts_as_a_new_case(source, target):
    src, dst = source["store"], target["store"]
    done = do_import(target, source["with"])
    new_id = done["case_id"]
    assert new_id != source["case_id"]  # the ids are this workbench's own
    assert dst.case(new_id)["name"] == "Interview 7" and dst.case(new_id)["created_by"] == IMPORTER
    for sha in source["shas"]:
        assert done["evidence"][sha] == "stored from the bundle"
        row = dst.evidence(sha)
        assert sha256_of(Path(row["stored_path"])) == sha
        assert stat.S_IMODE(Path(row["stored_path"]).stat().st_mode) == 0o400
        assert {k: row[k] for k in ("original_name", "size", "probe")} == \
            {k: src.evidence(sha)[k] for k in ("original_name", "size", "probe")}
        assert analysis_facts(dst, sha) == analysis_facts(src, sha)
        assert analysis_facts(dst, sha)[0]["frames"] or sha == source["shas"][1]  # per-frame results came along
        ensembles = [(ensemble_facts(dst, sha), ensemble_facts(src, sha))]
        assert ensembles[0][0] == ensembles[0][1] and (ensembles[0][0] or sha == source["shas"][1])
    # Every note version and every verdict, with its original author and time.
    assert without_ids(all_note_versions(dst, new_id), "note_id") == \
        without_ids(all_note_versions(src, source["case_id"]), "note_id")
    assert without_ids(dst.verdicts(new_id)) == without_ids(src.verdicts(source["case_id"]))
    assert [v["author"] for v in dst.verdicts(new_id)] == ["bob", "ann"]
    # The importing analyst is on record, naming the bundle's sha256 and its exporter.
    (entry,) = [e for e in dst.audit_log(f"case:{new_id}") if e["action"] == "case.imported"]
    assert entry["actor"] == IMPORTER
    assert entry["details"]["bundle_sha256"] == sha256_of(source["with"]) == done["bundle_sha256"]
    assert entry["details"]["exporter"]["actor"] == EXPORTER
    assert case_import(dst, new_id)["imported_by"] == IMPORTER
    assert sha256_of(Path(done["archive"])) == done["bundle_sha256"]  # kept as received, report included
    assert dst.verify_history()["ok"], dst.verify_history()


def test_without_evidence_files_the_files_are_referenced_not_present(source, target, no_face_clip):
    done = do_import(target, source["without"])
    dst = target["store"]
    assert set(done["evidence"].values()) == {"referenced, file not present"}
    for sha in source["shas"]:
        assert not Path(dst.evidence(sha)["stored_path"]).exists()
        assert analysis_facts(dst, sha) == analysis_facts(source["store"], sha)
    assert not target["evidence"].exists() or not any(p.is_file() for p in target["evidence"].rglob("*"))
    assert len(dst.verdicts(done["case_id"])) == 2
    # The file arriving later (the same bytes, by ordinary intake) fills the place the import kept for it.
    sha = source["shas"][1]
    with pytest.raises(EvidenceError, match="file is missing"):
        verify_evidence(dst, sha, actor=IMPORTER)
    ingest(dst, no_face_clip, "street.mp4", target["evidence"], actor=IMPORTER, case_id=done["case_id"])
    assert sha256_of(verify_evidence(dst, sha, actor=IMPORTER)) == sha
    assert dst.verify_history()["ok"]


def test_the_same_bundle_is_imported_once(source, target):
    first = do_import(target, source["without"])
    before = snapshot(target)
    with pytest.raises(BundleError, match=f"already imported as case #{first['case_id']} by {IMPORTER}"):
        do_import(target, source["without"])
    assert snapshot(target) == before


def test_a_verified_bundle_reports_what_it_holds(source):
    check = verify_bundle(source["with"])
    assert check.ok, check.problems
    assert sorted(check.evidence_files) == sorted(source["shas"])
    assert check.manifest["exporter"]["actor"] == EXPORTER
    assert check.manifest["audit"]["head"] == check.manifest["source_history"]["head"]
    names = zipfile.ZipFile(source["with"]).namelist()
    assert sorted(names) == sorted(["manifest.json", "report.html", "SHA256SUMS"]
                                   + [f"evidence/{s}" for s in source["shas"]])
    # Other cases' entries are withheld: only their hashes travel, so the chain still links.
    withheld = [e for e in check.manifest["audit"]["entries"] if e.get("withheld")]
    assert withheld and all(set(e) == {"id", "hash", "withheld"} for e in withheld)
    with zipfile.ZipFile(source["with"]) as zf:
        assert "another case" not in (zf.read("manifest.json") + zf.read("report.html")).decode()


def rewrite(src: Path, dest: Path, change, resum: bool = False) -> Path:
    """A copy of a bundle with `change(name, data) -> data` applied; SHA256SUMS recomputed when resum."""
    with zipfile.ZipFile(src) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    members = {n: change(n, d) for n, d in members.items()}
    if resum:
        members["SHA256SUMS"] = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in members.items()
                                        if n != "SHA256SUMS").encode()
    with zipfile.ZipFile(dest, "w") as zout:
        for n, d in members.items():
            zout.writestr(n, d)
    return dest


def edit_manifest(edit):
    def change(name, data):
        if name != "manifest.json":
            return data
        m = json.loads(data)
        edit(m)
        return json.dumps(m).encode()
    return change


def note_text(m):
    m["notes"][0]["text"] = "someone else's words"


def verdict_author(m):
    m["verdicts"][-1]["verdict"] = "likely authentic"


def score(m):
    m["analyses"][0]["frame_scores"][0]["score"] = 0.001


TAMPERS = {
    "manifest changed, sums kept": (edit_manifest(note_text), False, "manifest.json: its sha256"),
    "note text changed, sums recomputed": (edit_manifest(note_text), True, "text_sha256 differs"),
    "verdict changed, sums recomputed": (edit_manifest(verdict_author), True, "verdict differs"),
    "frame score changed, sums recomputed": (edit_manifest(score), True, "frames_sha256 differs"),
    "evidence bytes changed": (lambda n, d: d[:-1] + bytes([d[-1] ^ 1]) if n.startswith("evidence/") else d, True,
                               "hashes to"),
    "report changed": (lambda n, d: d.replace(b"Interview 7", b"Interview 8") if n == "report.html" else d, False,
                       "report.html: its sha256"),
}


@pytest.mark.parametrize("how", TAMPERS)
def test_a_tampered_bundle_is_refused_and_nothing_is_written(source, target, how):
    change, resum, says = TAMPERS[how]
    bad = rewrite(source["with"], target["tmp"] / "bad.zip", change, resum)
    check = verify_bundle(bad)
    assert not check.ok and any(says in p for p in check.problems), check.problems
    before = snapshot(target)
    with pytest.raises(BundleError, match="failed verification; nothing was imported") as refused:
        do_import(target, bad)
    assert says in str(refused.value)
    assert snapshot(target) == before


def test_an_audit_entry_changed_in_the_bundle_breaks_the_segment(source, target):
    def touch(m):
        entry = next(e for e in m["audit"]["entries"] if e.get("action") == "verdict.set")
        entry["actor"] = "mallory"
    bad = rewrite(source["without"], target["tmp"] / "bad.zip", edit_manifest(touch), resum=True)
    problems = verify_bundle(bad).problems
    assert any("'verdict.set'): its contents do not match its hash" in p for p in problems), problems


def hostile(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name we write on purpose
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for info, data in members:
                zf.writestr(info, data)
    return path


def symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


HOSTILE = {
    "zip slip": ([("manifest.json", b"{}"), ("../../evil.sh", b"rm -rf /")], "points outside the archive"),
    "absolute path": ([("/etc/cron.d/evil", b"x")], "points outside the archive"),
    "symlink": ([(symlink("evidence/" + "a" * 64), b"/etc/passwd")], "is a symbolic link"),
    "duplicate names": ([("manifest.json", b"{}"), ("manifest.json", b"{}")], "appears more than once"),
    "unknown member": ([("notes.exe", b"MZ")], "is not part of a case bundle"),
    "zip bomb": ([("evidence/" + "b" * 64, bytes(3 * 1024 * 1024))], "zip bomb"),
    "too many members": ([(f"evidence/{i:064x}", b"") for i in range(12)], "more than the 10 allowed"),
}


@pytest.mark.parametrize("how", HOSTILE)
def test_a_hostile_archive_is_refused_before_anything_is_unpacked(target, how, monkeypatch):
    members, says = HOSTILE[how]
    path = hostile(target["tmp"] / "hostile.zip", members)
    limits = BundleLimits(max_members=10, max_total_bytes=1024 * 1024)
    opened = []
    monkeypatch.setattr(bundle, "_read_member", lambda *a, **k: opened.append(a[1]))
    problems = verify_bundle(path, limits).problems
    assert any(says in p for p in problems), problems
    assert opened == []  # refused from the directory alone
    before = snapshot(target)
    with pytest.raises(BundleError, match=says):
        import_bundle(target["store"], path, actor=IMPORTER, evidence_dir=target["evidence"],
                      bundles_dir=target["bundles"], limits=limits)
    assert snapshot(target) == before
    assert not (target["tmp"].parent / "evil.sh").exists()


def test_not_a_zip_is_refused(target):
    path = target["tmp"] / "note.zip"
    path.write_text("not an archive")
    assert verify_bundle(path).problems == ["not a zip archive"]


def test_an_import_and_an_export_need_a_name(source, target):
    with pytest.raises(BundleError, match="importing analyst's name"):
        import_bundle(target["store"], source["without"], actor=" ", evidence_dir=target["evidence"],
                      bundles_dir=target["bundles"])
    with pytest.raises(BundleError, match="exporting analyst's name"):
        export_case(source["store"], source["case_id"], target["tmp"] / "x.zip", actor="")
    assert not (target["tmp"] / "x.zip").exists()


def test_an_evidence_file_changed_on_disk_is_not_exported(source, tmp_path):
    store = Store(tmp_path / "s.db")
    case_id = store.create_case("c", actor="ann")
    clip = tmp_path / "clip.mp4"
    shutil.copyfile(source["store"].evidence(source["shas"][1])["stored_path"], clip)
    row = ingest(store, clip, "clip.mp4", tmp_path / "evidence", actor="ann", case_id=case_id)
    stored = Path(row["stored_path"])
    stored.chmod(0o600)
    stored.write_bytes(stored.read_bytes() + b"x")
    with pytest.raises(BundleError, match="no longer matches its hash"):
        export_case(store, case_id, tmp_path / "out.zip", actor="ann", with_evidence=True, with_report=False)
    assert list(tmp_path.glob("*.zip")) == [] and list(tmp_path.glob(".bundle-*")) == []
    store.close()


def test_cli_exports_verifies_and_imports(source, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    out = tmp_path / "cli.zip"
    src_db = str(source["tmp"] / "source.db")
    assert cli.main(["case", "export", str(source["case_id"]), str(out), "--db", src_db, "--actor", EXPORTER,
                     "--no-report"]) == 0
    assert f"bundle sha256 {sha256_of(out)}" in capsys.readouterr().out
    assert cli.main(["case", "verify", str(out)]) == 0
    assert "bundle verified" in capsys.readouterr().out
    db = str(tmp_path / "target.db")
    assert cli.main(["case", "import", str(out), "--db", db, "--actor", IMPORTER]) == 0
    printed = capsys.readouterr().out
    assert "imported as case #1" in printed and "referenced, file not present" in printed
    assert cli.main(["case", "import", str(out), "--db", db, "--actor", IMPORTER]) == cli.EXIT_REFUSED
    assert "already imported as case #1" in capsys.readouterr().err
    bad = rewrite(out, tmp_path / "bad.zip", edit_manifest(note_text))
    assert cli.main(["case", "verify", str(bad)]) == cli.EXIT_BROKEN
    assert "FAILED: manifest.json: its sha256" in capsys.readouterr().out


def bundle_page():
    """A tiny page that draws the panel for the first case (run by AppTest as its own script)."""
    from workbench.ui import resources
    from workbench.ui.views.bundle_panel import bundle_panel

    bundle_panel(resources.store().cases()[0])


def test_bundle_panel_exports_and_imports_under_the_analysts_name(app_home, tmp_path):
    from streamlit.testing.v1 import AppTest

    from workbench.ui.views.bundle_panel import PREPARED

    at = AppTest.from_function(bundle_page, default_timeout=120).run()
    assert not at.exception, at.exception
    press(at, "Prepare bundle")
    assert any("Not recorded" in e.value for e in at.error)  # no name: nothing written
    assert PREPARED.format(case_id=1) not in at.session_state
    at.session_state["analyst"] = "Dana"
    press(at, "Prepare bundle")
    name, data, sha = at.session_state[PREPARED.format(case_id=1)]
    assert [b.label for b in at.get("download_button")] == ["Download bundle"]
    path = tmp_path / name
    path.write_bytes(data)
    assert hashlib.sha256(data).hexdigest() == sha and verify_bundle(path).ok
    store = Store(app_home / "workbench.db")
    try:
        (export,) = [e for e in store.audit_log("case:1") if e["action"] == "case.export"]
        assert export["actor"] == "Dana" and export["details"]["bundle_sha256"] == sha

        bad = rewrite(path, tmp_path / "bad.zip", edit_manifest(lambda m: m["case"].update(name="<b>x</b>")))
        at.file_uploader[0].set_value(("bad.zip", bad.read_bytes(), "application/zip")).run()
        press(at, "Verify and import")
        assert any("refused; nothing was imported" in e.value for e in at.error)
        assert any("manifest.json: its sha256" in c.value for c in at.code)
        assert len(store.cases()) == 1

        at.file_uploader[0].set_value((name, data, "application/zip")).run()
        press(at, "Verify and import")
        assert any("Imported as case #2" in s.value for s in at.success)
        (entry,) = [e for e in store.audit_log("case:2") if e["action"] == "case.imported"]
        assert entry["actor"] == "Dana" and entry["details"]["bundle_sha256"] == sha
    finally:
        store.close()


def test_a_manifest_nested_too_deep_is_a_problem_not_a_crash(target):
    deep = b"[" * 200_000 + b"]" * 200_000
    sums = f"{hashlib.sha256(deep).hexdigest()}  manifest.json\n".encode()
    path = hostile(target["tmp"] / "deep.zip", [("manifest.json", deep), ("SHA256SUMS", sums)])
    problems = verify_bundle(path).problems
    assert len(problems) == 1 and problems[0].startswith("manifest.json is not JSON: RecursionError"), problems


def test_a_row_listed_twice_is_refused(source, target):
    twice = edit_manifest(lambda m: m["verdicts"].append(dict(m["verdicts"][0])))
    bad = rewrite(source["without"], target["tmp"] / "twice.zip", twice, resum=True)
    assert "verdicts: the same row is listed more than once" in verify_bundle(bad).problems


def test_a_store_failure_after_the_files_were_copied_leaves_nothing(source, target, monkeypatch):
    def fail(*args, **kwargs):
        raise StoreError("disk full")

    monkeypatch.setattr(bundle, "import_case", fail)
    before = snapshot(target)
    with pytest.raises(BundleError, match="nothing was written: disk full"):
        do_import(target, source["with"])
    assert snapshot(target) == before
