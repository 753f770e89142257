"""Analysis jobs: audited states, order on one worker, a killed worker detected, cancel, dead workers seen by readers."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import numbered_frames
from helpers import child_pids
from workbench import cli, jobs
from workbench.evidence import ingest
from workbench.pipeline import Sampling
from workbench.store import Store
from workbench.video import Limits, write_video

ROOT = Path(__file__).resolve().parent.parent
HANG_S = 300  # generous: only there to stop a hang, the machine running the suite may be loaded
# The pool as `python -m workbench worker` runs it, in a fresh interpreter that also registers the
# test-only tiny detectors (a forked pytest could inherit a torch thread pool in a bad state).
POOL = ("import sys; sys.path.insert(0, 'tests'); "
        "from detectors.registry import register, unregister; from tiny_detector import TinyDetector; "
        "unregister(TinyDetector.name); register(TinyDetector); "
        "from workbench.worker import serve; serve(sys.argv[1], workers=1, health_check_s=0.5)")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """1000 frames at 25 fps (40 s): with face detection on every frame, a job runs long enough to stop."""
    path = tmp_path_factory.mktemp("jobclips") / "long.mp4"
    write_video(path, numbered_frames(1000, 320, 240, seed=3), fps=25, gop=250)
    return path


@pytest.fixture
def home(tmp_path, tiny_detectors, no_face_clip, h264_clip):
    store = Store(tmp_path / "workbench.db")
    files = {name: ingest(store, clip, name, tmp_path / "evidence", "test", None, Limits())["sha256"]
             for name, clip in (("short.mp4", no_face_clip), ("other.mp4", h264_clip))}
    yield store, files
    store.close()


def descendants(pid: int) -> set[int]:
    """Every live descendant of a process (from /proc), for checking that none is left behind."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = {int(p) for p in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(kids - found)
            found |= kids
    return found


@pytest.fixture
def pool(home):
    """Start the worker pool on the home's database; stop it with Ctrl-C's signal and check nothing is left."""
    store, _ = home
    started: list[tuple[subprocess.Popen, set[int]]] = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", POOL, store.path], cwd=ROOT, stdin=subprocess.DEVNULL)
        started.append((proc, set()))
        return proc

    yield start
    for proc, _ in started:
        seen = descendants(proc.pid) | {proc.pid}
        starts = {pid: jobs.process_start(pid) for pid in seen}
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("the worker pool did not stop on SIGINT")
        left = [pid for pid in seen if pid != proc.pid and jobs.pid_alive(pid, starts[pid])]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"worker processes left behind: {left}"
        assert proc.pid not in child_pids()


def wait_for(predicate, what: str):
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def actions(store: Store, job_id: int) -> list[tuple[int, str, str]]:
    """(audit id, action, actor) of every entry about one job, oldest first."""
    return [(e["id"], e["action"], e["actor"]) for e in reversed(store.audit_log())
            if isinstance(e["details"], dict) and e["details"].get("job_id") == job_id]


def test_a_job_runs_and_every_step_is_audited(home):
    store, files = home
    sha = files["short.mp4"]
    job_id = jobs.submit(store, sha, ["tiny-test"], Sampling(sample_fps=None), actor="alice")
    assert store.job(job_id)["state"] == "queued"
    assert jobs.run_queued(store.path) == [job_id]
    job = store.job(job_id)
    assert job["state"] == "done" and job["actor"] == "alice" and job["done"] == job["total"] == 30
    (analysis,) = store.analyses(sha)
    assert job["result"] == {"tiny-test": analysis["id"]} and analysis["actor"] == "alice"
    assert job["result_id"] == store.latest_ensemble(sha, analysis["face_run_id"])["id"]
    assert [a for _, a, _ in actions(store, job_id)] == ["job.submit", "job.start", "job.end"]
    assert store.verify_history()["ok"]


def test_a_cancelled_queued_job_never_runs(home):
    store, files = home
    job_id = jobs.submit(store, files["short.mp4"], ["tiny-test"], actor="alice")
    assert jobs.cancel(store, job_id, "bob") == "cancelled"
    assert jobs.run_queued(store.path) == [job_id]  # the message is taken, and skipped
    job = store.job(job_id)
    assert job["state"] == "cancelled" and job["cancelled_by"] == "bob" and job["started_at"] is None
    assert store.analyses(files["short.mp4"]) == []
    assert [(a, who) for _, a, who in actions(store, job_id)] == [("job.submit", "alice"), ("job.cancel", "bob")]


def test_a_reader_marks_a_dead_workers_job_failed(home):
    store, files = home
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_start = jobs.process_start(gone.pid)
    gone.wait()
    dead = jobs.submit(store, files["short.mp4"], ["tiny-test"], actor="alice")
    alive = jobs.submit(store, files["other.mp4"], ["tiny-test"], actor="alice")
    assert store.start_job(dead, gone.pid, gone_start, socket.gethostname())
    assert store.start_job(alive, os.getpid(), jobs.process_start(os.getpid()), socket.gethostname())
    (job,) = jobs.evidence_jobs(store, files["short.mp4"])
    assert job["state"] == "failed" and f"worker process {gone.pid} died" in job["error"]
    assert store.job(alive)["state"] == "running"  # its worker (this process) is alive
    assert actions(store, dead)[-1][1:] == ("job.end", "workbench")


def test_another_hosts_job_is_failed_only_when_its_heartbeat_is_stale(home):
    store, files = home
    job_id = jobs.submit(store, files["short.mp4"], ["tiny-test"], actor="alice")
    assert store.start_job(job_id, 1234, None, "another-host")
    job = store.job(job_id)
    beat = datetime.strptime(job["heartbeat_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert jobs.dead_reason(job, now=beat + timedelta(seconds=jobs.LEASE_S - 1)) is None
    assert "no heartbeat" in jobs.dead_reason(job, now=beat + timedelta(seconds=jobs.LEASE_S + 1))


def test_progress_and_eta_are_read_from_the_store(home):
    store, files = home
    job_id = jobs.submit(store, files["short.mp4"], ["tiny-test"], actor="alice")
    assert store.start_job(job_id, os.getpid(), jobs.process_start(os.getpid()), "here")
    assert store.job_progress(job_id, "faces", 10, 40) is False
    job = store.job(job_id)
    started = datetime.strptime(job["stage_started_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    # 10 frames took 20 s: the 30 left take 60 s at that pace.
    assert jobs.eta_s(job, now=started + timedelta(seconds=20)) == pytest.approx(60.0)
    line = jobs.describe(job, now=started + timedelta(seconds=20))
    assert "frame 10 of 40" in line and "about 1 min 00 s left" in line and "asked by alice" in line
    assert jobs.cancel(store, job_id, "bob") == "running"
    assert store.job_progress(job_id, "faces", 11, 40) is True  # the worker sees the flag with its next write


def test_two_analysts_jobs_run_in_order_on_one_worker(home, pool):
    store, files = home
    first = jobs.submit(store, files["short.mp4"], ["tiny-test"], Sampling(sample_fps=None), actor="alice")
    second = jobs.submit(store, files["other.mp4"], ["tiny-test"], Sampling(sample_fps=None), actor="bob")
    pool()
    wait_for(lambda: all(store.job(j)["state"] not in jobs.ACTIVE for j in (first, second)), "both jobs to end")
    assert [store.job(j)["state"] for j in (first, second)] == ["done", "done"]
    first_end = next(i for i, a, _ in actions(store, first) if a == "job.end")
    second_start = next(i for i, a, _ in actions(store, second) if a == "job.start")
    assert first_end < second_start  # one worker: bob's job started after alice's ended
    assert [a["actor"] for a in store.analyses(files["short.mp4"])] == ["alice"]
    assert [a["actor"] for a in store.analyses(files["other.mp4"])] == ["bob"]


@pytest.fixture
def long_sha(home, long_clip):
    store, _ = home
    return ingest(store, long_clip, "long.mp4", Path(store.path).parent / "evidence", "test", None, Limits())["sha256"]


SLOW = Sampling(sample_fps=None, detect_every=1)  # every frame, face detection on each


def test_a_killed_worker_is_detected_and_its_job_marked_failed(home, pool, long_sha):
    store, files = home
    job_id = jobs.submit(store, long_sha, ["tiny-test"], SLOW, actor="alice")
    pool()
    job = wait_for(lambda: (lambda j: j if j["state"] == "running" and j["done"] else None)(store.job(job_id)),
                   "the job to report progress")
    os.kill(job["worker_pid"], signal.SIGKILL)
    # store.job does not reap: the pool's health check must notice the dead worker by itself.
    wait_for(lambda: store.job(job_id)["state"] != "running", "the pool to notice the dead worker")
    job = store.job(job_id)
    assert job["state"] == "failed" and f"worker process {job['worker_pid']} died" in job["error"]
    assert store.analyses(long_sha) == []
    # huey restarted the worker: the next job runs.
    after = jobs.submit(store, files["short.mp4"], ["tiny-test"], actor="bob")
    wait_for(lambda: store.job(after)["state"] not in jobs.ACTIVE, "the next job to end")
    assert store.job(after)["state"] == "done"


def test_cancel_stops_a_running_job_and_stores_nothing(home, pool, long_sha):
    store, _ = home
    job_id = jobs.submit(store, long_sha, ["tiny-test"], SLOW, actor="alice")
    pool()
    wait_for(lambda: store.job(job_id)["done"], "the job to report progress")
    assert jobs.cancel(store, job_id, "bob") == "running"
    wait_for(lambda: store.job(job_id)["state"] != "running", "the worker to stop")
    job = store.job(job_id)
    assert job["state"] == "cancelled" and job["cancelled_by"] == "bob" and job["done"] < job["total"]
    assert store.analyses(long_sha) == [] and store.face_runs(long_sha) == []
    assert [(a, who) for _, a, who in actions(store, job_id)][-2:] == [("job.cancel", "bob"), ("job.end", "bob")]
    assert store.verify_history()["ok"]


APP = str(ROOT / "workbench" / "ui" / "app.py")


def review_session() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=HANG_S).run()
    assert not at.exception, at.exception
    return at


def page_text(at: AppTest) -> str:
    return "\n".join(str(getattr(el, "value", "")) + " " + str(getattr(el, "text", ""))
                     for kind in ("progress", "success", "warning", "text", "markdown") for el in at.get(kind))


def test_a_job_survives_a_page_reload(app_home, tiny_detectors):
    first = review_session()
    first.sidebar.text_input(key="analyst").set_value("ana").run()
    first.multiselect[0].set_value(["tiny-test"]).run()
    next(b for b in first.button if b.label == "Run").click().run()
    assert not first.exception, first.exception
    db = app_home / "workbench.db"
    store = Store(db)
    try:
        (job,) = store.jobs()
        assert job["state"] == "queued" and job["detectors"] == ["tiny-test"]
        # A new session (a reload, or a second tab) sees the same job, then its progress as a worker reports it.
        second = review_session()
        assert f"Job #{job['id']}" in page_text(second) and "queued" in page_text(second)
        assert store.start_job(job["id"], os.getpid(), jobs.process_start(os.getpid()), socket.gethostname())
        store.job_progress(job["id"], "faces", 12, 50)
        second.run()
        assert "frame 12 of 50" in page_text(second)
        # The new session has no analyst name yet: a cancel is refused until one is typed.
        next(b for b in second.button if b.label == "Cancel").click().run()
        assert store.job(job["id"])["cancel_requested"] == 0
        assert "Not cancelled. Type your name" in "\n".join(e.value for e in second.error)
        second.sidebar.text_input(key="analyst").set_value("bob").run()
        next(b for b in second.button if b.label == "Cancel").click().run()
        assert store.job(job["id"])["cancel_requested"] == 1
        assert store.job(job["id"])["cancelled_by"] == "bob"
        # The Cases page shows the file's job state.
        cases = AppTest.from_file(APP, default_timeout=HANG_S).run()
        cases.switch_page("views/cases.py").run()
        (table,) = cases.dataframe
        assert table.value["latest job"].tolist() == [f"running 12/50 frames (#{job['id']})"]
    finally:
        store.close()


def test_analyze_background_queues_a_job_that_jobs_lists_and_cancels(tmp_path, tiny_detectors, no_face_clip, capsys):
    db = tmp_path / "workbench.db"
    common = ["--db", str(db), "--evidence-dir", str(tmp_path / "evidence")]
    assert cli.main(["analyze", str(no_face_clip), "--detector", "tiny-test", "--background", "--actor", "carol",
                     "--json", "-", *common]) == 0
    queued = json.loads(capsys.readouterr().out)
    assert queued["state"] == "queued"
    assert cli.main(["jobs", "--db", str(db)]) == 0
    assert f"Job #{queued['job_id']} (tiny-test; asked by carol): queued" in capsys.readouterr().out
    assert cli.main(["jobs", "--db", str(db), "--cancel", str(queued["job_id"]), "--actor", "dave"]) == 0
    assert "cancelled" in capsys.readouterr().out
    store = Store(db)
    try:
        assert store.analyses(queued["sha256"]) == []  # nothing ran in the foreground
        assert store.job(queued["job_id"])["cancelled_by"] == "dave"
    finally:
        store.close()


def test_stopping_the_pool_puts_a_running_job_back_in_the_queue(home, pool, long_sha):
    store, _ = home
    job_id = jobs.submit(store, long_sha, ["tiny-test"], SLOW, actor="alice")
    proc = pool()
    wait_for(lambda: store.job(job_id)["done"], "the job to report progress")
    worker_pids = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C on `make run` sends
    proc.wait(timeout=HANG_S)
    assert not [pid for pid in worker_pids if jobs.pid_alive(pid, None)]
    job = store.job(job_id)
    assert job["state"] == "queued" and job["worker_pid"] is None and store.analyses(long_sha) == []
    assert [a for _, a, _ in actions(store, job_id)][-1] == "job.requeue"
    # The message is back on the queue: the next pool (here, this process) takes it (and, cancelled, skips it).
    assert jobs.cancel(store, job_id, "alice") == "cancelled"
    assert jobs.run_queued(store.path) == [job_id]


def test_each_worker_holds_its_own_gpu_and_a_dead_workers_gpu_is_taken_again(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DEVICE", raising=False)
    monkeypatch.setattr(jobs.config, "gpu_count", lambda: 2)

    def fresh_worker():
        monkeypatch.setattr(jobs, "_DEVICE", {})  # what a new worker process starts with
        return jobs.worker_device(tmp_path), jobs._DEVICE

    first, first_state = fresh_worker()
    second, _ = fresh_worker()
    third, _ = fresh_worker()
    assert (first, second, third) == ("cuda:0", "cuda:1", "cuda")  # a third worker shares rather than waits
    os.close(first_state["lock"])  # the first worker dies: the kernel drops its lock
    again, _ = fresh_worker()
    assert again == "cuda:0"
    monkeypatch.setattr(jobs.config, "gpu_count", lambda: 0)
    monkeypatch.setattr(jobs.config, "device", lambda: "cpu")
    assert fresh_worker()[0] == "cpu"
    monkeypatch.setenv("WORKBENCH_DEVICE", "cuda:3")
    assert fresh_worker()[0] == "cuda:3"


def test_the_pool_starts_one_worker_per_gpu_unless_told(monkeypatch):
    from workbench import config

    monkeypatch.delenv("WORKBENCH_WORKERS", raising=False)
    monkeypatch.setattr(config, "gpu_count", lambda: 4)
    assert config.default_workers() == 4
    monkeypatch.setattr(config, "gpu_count", lambda: 0)
    assert config.default_workers() == 1
    monkeypatch.setenv("WORKBENCH_WORKERS", "3")
    assert config.default_workers() == 3


def test_a_job_and_a_batch_worker_get_every_sampling_setting_asked_for():
    from dataclasses import fields

    from workbench.aggregate import Rule
    from workbench.pipeline import Sampling

    asked = Sampling(sample_fps=3.5, detect_every=4, detect_size=960, min_face_px=48, find_face_px=96,
                     candidate_prob=0.7, confirm_prob=0.95, confirm_hits=4, rule=Rule("mean", "mean", 5))
    assert {f.name for f in fields(Sampling)} <= set(jobs.sampling_to_dict(asked))  # nothing left out
    assert jobs.sampling_from_dict(json.loads(json.dumps(jobs.sampling_to_dict(asked)))) == asked
    older = {"sample_fps": 2.0, "detect_every": None, "detect_size": 640, "min_face_px": 32,
             "rule": {"track": "top25-mean", "video": "max", "min_frames": 3}}  # a job stored before the new fields
    assert jobs.sampling_from_dict(older) == Sampling(sample_fps=2.0)
