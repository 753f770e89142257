"""Batch triage: a folder or CSV ingested and analysed by worker processes, the table sorted by score, bad files listed, duplicates found, reruns skipped, the Cases page's batch table."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers import child_pids
from tiny_detector import TinyDetector
from workbench import batch, cli
from workbench.store import Store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "workbench" / "ui" / "app.py")
HOOK = "tiny_detector:TinyDetector"  # registered in every worker process (tests/ is on their path)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, two_face_clip, no_face_clip):
    """A folder: a clip with faces, one without (in a subfolder), a text file named .mp4, a copy of the first, a note."""
    root = tmp_path_factory.mktemp("archive")
    (root / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(two_face_clip[0], root / "faces.mp4")
    shutil.copy(no_face_clip, root / "nested" / "noface.MP4")
    (root / "broken.mp4").write_text("this is a text file, not a video\n")
    shutil.copy(two_face_clip[0], root / "nested" / "deeper" / "copy-of-faces.mp4")
    (root / "notes.txt").write_text("not a video")
    return root


def workers_left(before: set[int]) -> set[int]:
    """Child processes started since `before`, less multiprocessing's resource tracker: one helper per
    interpreter (started by the first spawned pool, ended with the interpreter), not a batch's worker."""
    def tracker(pid: int) -> bool:
        try:
            return b"multiprocessing.resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
    return {pid for pid in child_pids() - before if not tracker(pid)}


def batch_args(db: Path, evidence: Path, out: Path, *extra: str) -> list[str]:
    return ["--case", "archive", "--detector", "tiny-test", "--register", HOOK, "--db", str(db),
            "--evidence-dir", str(evidence), "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def first_run(archive, tmp_path_factory, tiny_detectors):
    """The archive run once through the CLI with one worker process (and the processes alive before it)."""
    work = tmp_path_factory.mktemp("batchrun")
    before = child_pids()
    args = batch_args(work / "workbench.db", work / "evidence", work / "out")
    rc = cli.main(["batch", str(archive), *args])
    return {"work": work, "rc": rc, "children_before": before, "args": args,
            "table": json.loads((work / "out" / "results.json").read_text())}


def test_the_folder_is_searched_recursively_for_videos(archive):
    found, other = batch.find_videos(archive)
    assert sorted(p.name for p in found) == ["broken.mp4", "copy-of-faces.mp4", "faces.mp4", "noface.MP4"]
    assert other == 1  # notes.txt


def test_a_batch_analyses_lists_the_bad_file_and_finds_the_duplicate(first_run, archive, capsys):
    assert first_run["rc"] == 0
    rows = {Path(r["file"]).name: r for r in first_run["table"]["rows"]}
    assert rows["faces.mp4"]["status"] == "analysed" and rows["noface.MP4"]["status"] == "analysed"
    assert rows["broken.mp4"]["status"] == "refused" and "not a readable video" in rows["broken.mp4"]["reason"]
    assert rows["broken.mp4"]["sha256"] is None and rows["broken.mp4"]["score"] is None
    dup = rows["copy-of-faces.mp4"]
    assert dup["status"] == "duplicate" and dup["sha256"] == rows["faces.mp4"]["sha256"]
    assert dup["reason"] == f"the same bytes as {archive / 'faces.mp4'}"
    # The facts of the table: probe, every detector's status/score/reason, the ensemble, the link.
    faces = rows["faces.mp4"]
    assert (faces["width"], faces["height"], faces["codec"]) == (640, 360, "h264") and faces["faces"] == 2
    assert faces["detectors"]["tiny-test"]["status"] == "ok" and faces["score"] == faces["detectors"]["tiny-test"]["score"]
    assert rows["noface.MP4"]["detectors"]["tiny-test"]["reason"].startswith("no face found")
    case_id = first_run["table"]["case"]["id"]
    assert faces["link"] == f"http://localhost:8501/?case={case_id}&evidence={faces['sha256']}"
    assert first_run["table"]["counts"] == {"analysed": 2, "already analysed": 0, "duplicate": 1, "refused": 1,
                                            "failed": 0, "files": 4}


def test_the_table_is_sorted_by_score_with_no_score_last(first_run):
    for rows in (first_run["table"]["rows"],
                 list(csv.DictReader((first_run["work"] / "out" / "results.csv").open()))):
        scores = [float(r["score"]) if r["score"] not in (None, "") else None for r in rows]
        scored = [s for s in scores if s is not None]
        assert scored and scores[:len(scored)] == sorted(scored, reverse=True)
        assert all(s is None for s in scores[len(scored):])
        assert {Path(r["file"]).name for r in rows[:len(scored)]} == {"faces.mp4", "copy-of-faces.mp4"}


def test_the_stored_results_are_those_the_one_entry_point_stores(first_run):
    store = Store(first_run["work"] / "workbench.db")
    try:
        faces = next(r for r in first_run["table"]["rows"] if r["status"] == "analysed" and r["faces"])
        (analysis,) = store.analyses(faces["sha256"])
        assert analysis["score"] == faces["score"] and analysis["detector"] == "tiny-test"
        assert analysis["id"] == faces["detectors"]["tiny-test"]["analysis_id"]
        (recorded,) = store.batches()
        assert recorded["end_status"] == "done" and recorded["files"] == 4 and recorded["items"] == 4
        assert recorded["code"]["source_sha256"] == batch.code_version()["source_sha256"]
        actions = [e["action"] for e in store.audit_log()]
        assert actions.count("batch.start") == 1 and actions.count("batch.file") == 4 and actions.count("batch.end") == 1
        assert store.verify_history()["ok"]
    finally:
        store.close()


def test_no_process_is_left_behind(first_run):
    assert workers_left(first_run["children_before"]) == set()


def test_a_rerun_skips_everything_already_analysed(first_run, archive, capsys):
    work = first_run["work"]
    store = Store(work / "workbench.db")
    try:
        analyses_before = sum(len(store.analyses(r["sha256"])) for r in first_run["table"]["rows"] if r["sha256"])
        face_runs_before = sum(len(store.face_runs(r["sha256"])) for r in first_run["table"]["rows"] if r["sha256"])
    finally:
        store.close()
    capsys.readouterr()
    args = batch_args(work / "workbench.db", work / "evidence", work / "rerun")
    assert cli.main(["batch", str(archive), *args]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 already analysed" in out and "0 analysed" in out
    assert f"refused: {archive / 'broken.mp4'}: not a readable video file" in out  # listed at the end
    table = json.loads((work / "rerun" / "results.json").read_text())
    assert table["counts"]["already analysed"] == 2 and table["counts"]["analysed"] == 0
    first = {r["file"]: r for r in first_run["table"]["rows"]}
    for row in table["rows"]:  # the same results, read back from the store
        assert row["score"] == first[row["file"]]["score"] and row["status"] != "analysed"
    store = Store(work / "workbench.db")
    try:
        assert sum(len(store.analyses(r["sha256"])) for r in table["rows"] if r["sha256"]) == analyses_before
        assert sum(len(store.face_runs(r["sha256"])) for r in table["rows"] if r["sha256"]) == face_runs_before
        assert [b["id"] for b in store.batches()] == [table["batch_id"], first_run["table"]["batch_id"]]
    finally:
        store.close()


def test_a_csv_lists_the_files(tmp_path, tiny_detectors, no_face_clip, capsys):
    folder = tmp_path / "list"
    folder.mkdir()
    shutil.copy(no_face_clip, folder / "one.mp4")
    sheet = folder / "files.csv"
    with sheet.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerow(["one.mp4", "real"])  # relative to the CSV's folder
        writer.writerow([str(folder / "missing.mp4"), "fake"])
    args = batch_args(tmp_path / "db.sqlite", tmp_path / "evidence", tmp_path / "out")
    assert cli.main(["batch", str(sheet), *args]) == 0
    rows = {Path(r["file"]).name: r for r in json.loads((tmp_path / "out" / "results.json").read_text())["rows"]}
    assert rows["one.mp4"]["status"] == "analysed"
    assert rows["missing.mp4"]["status"] == "refused" and rows["missing.mp4"]["reason"] == "no such file"
    bad = tmp_path / "bad.csv"
    bad.write_text("file\none.mp4\n")
    assert cli.main(["batch", str(bad), *args]) == 2
    assert "no `path` column" in capsys.readouterr().err


def test_csv_cells_that_a_spreadsheet_would_run_are_defused():
    row = {"position": 0, "file": "=HYPERLINK(\"http://x\")", "original_name": "+1", "sha256": None,
           "status": "refused", "reason": "-", "score": None, "detectors": {}, "link": "@x"}
    (header, values) = list(csv.reader(batch.table_csv([row], []).splitlines()))
    cells = dict(zip(header, values))
    assert cells["file"].startswith("'=") and cells["original_name"] == "'+1" and cells["link"] == "'@x"


class DyingDetector(TinyDetector):
    """Kills the worker process that runs it (as an out-of-memory kill would)."""

    name = "tiny-dies"

    def predict(self, crops):
        os._exit(9)


def test_a_video_that_kills_its_worker_is_retried_then_listed_failed(tmp_path, tiny_detectors, two_face_clip,
                                                                      no_face_clip):
    store = Store(tmp_path / "db.sqlite")
    before = child_pids()
    try:
        case_id = store.create_case("crash")
        # The no-face clip never reaches the detector, so it is analysed; the clip with faces kills its worker.
        outcome = batch.run_batch(store, [Path(two_face_clip[0]), Path(no_face_clip)], case_id, ["tiny-dies"],
                                  evidence_dir=tmp_path / "evidence", hooks=["test_batch:DyingDetector"], workers=2,
                                  max_retries=1)
        rows = {Path(r["file"]).name: r for r in outcome.rows}
        assert rows[Path(two_face_clip[0]).name]["status"] == "failed"
        # Two workers: if both clips were in the pool when it died, the death is blamed on neither; each
        # runs again alone, and only the clip that kills its worker alone (twice: max_retries 1) fails.
        reason = rows[Path(two_face_clip[0]).name]["reason"]
        assert reason.startswith("its worker process died") and reason.endswith("time(s); given up")
        assert rows[Path(no_face_clip).name]["status"] == "analysed"
        assert store.batch(outcome.batch_id)["end_status"] == "done"
    finally:
        store.close()
    assert workers_left(before) == set()


def test_a_worker_with_other_code_refuses(tiny_detectors, no_face_clip):
    code = dict(batch.code_version(), source_sha256="0" * 64)
    task = batch.Task(0, "0" * 64, str(no_face_clip), {}, ["tiny-test"], {}, "mean", "cpu",
                      batch.StoredSnapshot([], {}, []), code, [str(ROOT)], [])
    answer = batch.analyse_task(task)
    assert "other code than the driver" in answer["error"] and "result" not in answer


def test_the_cases_page_shows_the_batch_and_opens_a_file_in_review(app_home, first_run, archive, tiny_detectors):
    db = app_home / "workbench.db"
    AppTest.from_file(APP, default_timeout=120).run()  # the app's first start (demo case)
    args = batch_args(db, app_home / "evidence", app_home / "out")
    assert cli.main(["batch", str(archive), *args]) == 0
    store = Store(db)
    try:
        case_id = next(c["id"] for c in store.cases() if c["name"] == "archive")
        faces_sha = next(e["sha256"] for e in store.case_evidence(case_id) if e["original_name"] == "faces.mp4")
    finally:
        store.close()
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["case"] = str(case_id)
    at.run()
    at.switch_page("views/cases.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[-1].value
    assert list(table.columns[:5]) == ["file", "score", "status", "duration (s)", "faces"]
    assert table["file"].tolist()[:2] == ["faces.mp4", "copy-of-faces.mp4"]  # scored first
    assert set(table["status"]) == {"analysed", "duplicate", "refused"}
    assert table.loc[table["file"] == "broken.mp4", "reason"].item().startswith("not a readable video")
    picker = next(s for s in at.selectbox if s.label == "Open a file of this batch")
    assert picker.options[0].startswith("faces.mp4")
    next(b for b in at.button if b.key and b.key.startswith("batch-open-")).click().run()
    assert not at.exception, at.exception
    assert at.session_state["sel_evidence"] == faces_sha


def test_ray_stays_optional():
    """No runtime module imports Ray at module level, and `make run`'s requirements do not name it."""
    import ast

    for path in (ROOT / "workbench").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "ray" or n.startswith("ray.") for n in names), path
    assert not any(line.split("=")[0].strip().lower() == "ray"
                   for line in (ROOT / "requirements.txt").read_text().splitlines())
    assert "ray==" in (ROOT / "requirements-cluster.txt").read_text()
