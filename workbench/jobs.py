"""Analysis jobs: submit, run in a worker process, report progress, cancel, and notice a worker that died.

A job is a row of the case store's `jobs` table (state, progress, who asked, the result) and a
message on a huey queue kept in SQLite beside the case database (`queue_path`). Workers
(`workbench/worker.py`, `python -m workbench worker`) take messages in order and run `execute`,
which calls `service.analyse_evidence`, the one entry point for analysing stored evidence.

States: queued -> running -> done | failed | cancelled (a queued job may be cancelled at once).
A running job records its worker's pid, the process's start time and host, and a heartbeat;
`reap` marks a running job failed when that process is gone (on this host), or when the
heartbeat is older than LEASE_S (another host). The worker pool reaps on every health check and
so does every reader that lists jobs, so a `kill -9` never leaves a job "running".
Cancel sets a flag that the worker reads between frames (through the pipeline's progress
callback); nothing of a cancelled analysis is stored.
"""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from huey import SqliteHuey

from workbench import config
from workbench.aggregate import Rule
from workbench.evidence import EvidenceError
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.store import Store, StoreError

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
TASK_NAME = "workbench.analyse"
PROGRESS_EVERY_S = 0.5  # progress rows written at most this often (the cancel flag is read with them)
HEARTBEAT_S = 5.0
LEASE_S = 120.0  # a running job on another host without a heartbeat for this long has lost its worker
STAGE_LABELS = {"queued": "waiting for a worker", "starting": "loading detectors",
                "faces": "decoding, finding faces and scoring"}


class JobError(Exception):
    """A job that cannot be submitted (no such evidence, a store that workers cannot reach)."""


class JobCancelled(Exception):
    """Raised inside the analysis (from its progress callback) when the job's cancel flag is set."""


# -- the queue ------------------------------------------------------------------------------------
def queue_path(db_path: str | Path) -> Path:
    """The huey queue file that belongs to a case database: `<db stem>-queue.db` beside it."""
    db_path = Path(db_path)
    return db_path.with_name(f"{db_path.stem}-queue.db")


_QUEUES: dict[str, tuple[SqliteHuey, object]] = {}
_QUEUES_LOCK = threading.Lock()


def _run_task(db_path: str, job_id: int) -> None:
    execute(db_path, job_id)


def queue(db_path: str | Path) -> SqliteHuey:
    """The huey instance (SQLite storage, strict FIFO) for a case database, with the analysis task registered."""
    return _queue(db_path)[0]


def _queue(db_path: str | Path) -> tuple[SqliteHuey, object]:
    path = queue_path(db_path)
    with _QUEUES_LOCK:
        found = _QUEUES.get(str(path))
        if found is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Messages are pickled by huey: the file gets the case database's protection (0600).
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            huey = SqliteHuey(name="workbench", filename=str(path), results=False, utc=True, strict_fifo=True,
                              timeout=30)
            found = (huey, huey.task(name=TASK_NAME)(_run_task))
            _QUEUES[str(path)] = found
    return found


def _enqueue(db_path: str | Path, job_id: int) -> None:
    _queue(db_path)[1](str(Path(db_path)), job_id)


# -- sampling as stored with the job --------------------------------------------------------------
def sampling_to_dict(sampling: Sampling) -> dict:
    """A Sampling as plain JSON values: every field (so a job or batch worker analyses with exactly
    the settings asked for), its rule as the rule's own fields."""
    return dataclasses.asdict(sampling)  # the nested Rule becomes its fields too


def sampling_from_dict(d: dict) -> Sampling:
    """The inverse of `sampling_to_dict`; a field missing from an older job keeps its default."""
    known = {f.name for f in dataclasses.fields(Sampling)}
    values = {k: v for k, v in d.items() if k in known and k != "rule"}
    return Sampling(**values, rule=Rule(**d["rule"]))


# -- submitting and cancelling --------------------------------------------------------------------
def submit(store: Store, sha256: str, detectors: Iterable[str], sampling: Sampling = Sampling(), actor: str = "local",
           case_id: int | None = None, ensemble_rule: str = "mean") -> int:
    """Queue an analysis of stored evidence (audited as job.submit); a worker runs it.

    Args:
        detectors: registry names.
        actor: who asked; the analysis is stored under this name.

    Returns:
        The job id.

    Raises:
        JobError: an in-memory store (workers are other processes), or unknown evidence.
    """
    if store.path == ":memory:":
        raise JobError("jobs need a database file: worker processes cannot see an in-memory store")
    try:
        job_id = store.add_job(sha256, list(detectors), sampling_to_dict(sampling), ensemble_rule, actor, case_id)
    except StoreError as exc:
        raise JobError(str(exc)) from exc
    try:
        _enqueue(store.path, job_id)
    except Exception as exc:  # the queue file could not be written: the job must not wait forever
        store.finish_job(job_id, "failed", error=f"could not be queued: {exc}", expect="queued")
        raise JobError(f"job {job_id} could not be queued: {exc}") from exc
    return job_id


def cancel(store: Store, job_id: int, actor: str) -> str:
    """Cancel a job: a queued one at once, a running one at its next frame (audited as job.cancel).

    Returns:
        The state afterwards (see Store.request_job_cancel).
    """
    return store.request_job_cancel(job_id, actor)


# -- running one job (inside a worker) ------------------------------------------------------------
def process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (/proc), which tells it from a later process with
    the same pid; None where /proc is not available."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[19]


def pid_alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` (started at `start`, see process_start) still runs on this host; a zombie is dead."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel (cannot tell a reused pid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


class _Progress:
    """The pipeline's progress callback for a job: writes progress now and then, raises JobCancelled on cancel."""

    def __init__(self, store: Store, job_id: int):
        self.store, self.job_id = store, job_id
        self.stage, self.last = None, 0.0

    def __call__(self, done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        if stage == self.stage and done < total and now - self.last < PROGRESS_EVERY_S:
            return
        self.stage, self.last = stage, now
        if self.store.job_progress(self.job_id, stage, done, total):
            raise JobCancelled()


class _Heartbeat:
    """A thread that says the job's worker is alive while a long model call runs between frames."""

    def __init__(self, store: Store, job_id: int):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(store, job_id), daemon=True, name=f"job-{job_id}-beat")

    def _beat(self, store: Store, job_id: int) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                store.job_heartbeat(job_id)
            except Exception:  # a busy database: the next beat tries again
                log.warning("heartbeat of job %s failed", job_id, exc_info=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


_DEVICE: dict[str, object] = {}  # this process's device, and the open lock file that holds its GPU


def worker_device(lock_dir: str | Path) -> str:
    """The device this worker process runs its jobs on, chosen once per process.

    WORKBENCH_DEVICE wins. With several GPUs each worker holds one GPU for its life: it takes the
    first free `gpu-K.lock` in `lock_dir` (an flock the kernel drops when the process dies, so a
    restarted worker takes its place); more workers than GPUs share the first. One GPU: "cuda";
    none: "cpu".
    """
    if "device" in _DEVICE:
        return str(_DEVICE["device"])
    device = os.environ.get("WORKBENCH_DEVICE") or None
    n = 0 if device else config.gpu_count()
    if n > 1:
        Path(lock_dir).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            fd = os.open(Path(lock_dir) / f"gpu-{k}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            _DEVICE["lock"], device = fd, f"cuda:{k}"
            break
    _DEVICE["device"] = device or ("cuda" if n else config.device())
    return str(_DEVICE["device"])


def execute(db_path: str | Path, job_id: int) -> str:
    """Run one queued job in this process and record how it ended.

    Returns:
        The job's final state here ("skipped" when it was no longer queued, e.g. cancelled while waiting).
    """
    store = Store(db_path)
    try:
        pid = os.getpid()
        if not store.start_job(job_id, pid, process_start(pid), socket.gethostname()):
            return "skipped"
        job = store.job(job_id)
        try:
            with _Heartbeat(store, job_id):
                result = analyse_evidence(
                    store, job["sha256"], job["detectors"], sampling_from_dict(job["sampling"]), actor=job["actor"],
                    progress=_Progress(store, job_id), device=worker_device(Path(db_path).parent / "gpu-locks"),
                    ensemble_rule=job["ensemble_rule"])
        except JobCancelled:
            store.finish_job(job_id, "cancelled", actor=store.job(job_id)["cancelled_by"])
            return "cancelled"
        except KeyboardInterrupt:
            # The pool was stopped (Ctrl-C, `make run` ending): not the job's fault, run it again later.
            if store.requeue_job(job_id, "the worker pool was stopped while the job ran"):
                _enqueue(db_path, job_id)
            raise
        except EvidenceError as exc:  # custody: the stored file no longer matches its hash
            store.finish_job(job_id, "failed", error=str(exc))
            return "failed"
        except Exception as exc:
            log.exception("job %s failed", job_id)
            store.finish_job(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
            return "failed"
        if result.error is not None:
            store.finish_job(job_id, "failed", error=result.error)
            return "failed"
        store.finish_job(job_id, "done", result_id=result.ensemble.get("ensemble_id"),
                         result={name: o.analysis_id for name, o in result.detectors.items()})
        return "done"
    finally:
        store.close()


def run_queued(db_path: str | Path, limit: int | None = None) -> list[int]:
    """Run queued messages in this process, oldest first, until the queue is empty (or `limit` ran).
    For tests and a one-shot drain; `python -m workbench worker` is the normal way.

    Returns:
        The job ids whose messages were taken.
    """
    huey, ran = queue(db_path), []
    while limit is None or len(ran) < limit:
        task = huey.dequeue()
        if task is None:
            break
        ran.append(task.args[1])
        huey.execute(task)
    return ran


# -- reading jobs ---------------------------------------------------------------------------------
def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def dead_reason(job: dict, host: str | None = None, now: datetime | None = None, lease_s: float = LEASE_S) -> str | None:
    """Why a running job's worker is gone, or None while it is (or may be) alive.

    On this host the worker's pid and start time decide; for another host, a heartbeat older than `lease_s`.
    """
    if job["state"] != "running":
        return None
    host = host or socket.gethostname()
    if job["worker_host"] == host and job["worker_pid"]:
        if pid_alive(job["worker_pid"], job["worker_start"]):
            return None
        return f"the worker process {job['worker_pid']} died while running the job (killed or crashed)"
    beat = job["heartbeat_at"] or job["started_at"]
    now = now or datetime.now(timezone.utc)
    if beat and (now - _parse_time(beat)).total_seconds() > lease_s:
        return f"no heartbeat from its worker on {job['worker_host']} for over {lease_s:.0f} s"
    return None


def reap(store: Store) -> list[int]:
    """Mark failed every running job whose worker is gone (audited as job.end by "workbench").

    Returns:
        The ids of the jobs marked failed now.
    """
    host, failed = socket.gethostname(), []
    for job in store.jobs(states=["running"], limit=10_000):
        reason = dead_reason(job, host)
        if reason and store.finish_job(job["id"], "failed", error=reason, actor="workbench"):
            log.warning("job %s: %s", job["id"], reason)
            failed.append(job["id"])
    return failed


def evidence_jobs(store: Store, sha256: str, limit: int = 20) -> list[dict]:
    """The jobs of one evidence file, newest first, after reaping dead workers' jobs."""
    reap(store)
    return store.jobs(sha256=sha256, limit=limit)


def latest_jobs(store: Store, shas: Iterable[str]) -> dict[str, dict]:
    """The newest job of each evidence file (after reaping), by sha256."""
    reap(store)
    return store.latest_jobs(shas)


def queue_position(store: Store, job: dict) -> int | None:
    """How many queued jobs were submitted before this queued one (0: next), None when not queued."""
    if job["state"] != "queued":
        return None
    return sum(1 for j in store.jobs(states=["queued"], limit=10_000) if j["id"] < job["id"])


def fraction(job: dict) -> float:
    """How far the job's current stage is, 0..1 (1 once it ended)."""
    if job["state"] not in ACTIVE:
        return 1.0
    return min(1.0, job["done"] / job["total"]) if job["total"] else 0.0


def eta_s(job: dict, now: datetime | None = None) -> float | None:
    """Seconds left in the running stage at its pace so far; None before the first frame or when not running."""
    if job["state"] != "running" or not job["done"] or not job["total"] or not job["stage_started_at"]:
        return None
    now = now or datetime.now(timezone.utc)
    elapsed = max(0.0, (now - _parse_time(job["stage_started_at"])).total_seconds())
    return elapsed / job["done"] * max(0, job["total"] - job["done"])


def describe(job: dict, now: datetime | None = None) -> str:
    """One line for a job: its state, stage, frame i of n and time left, or how it ended."""
    head = f"Job #{job['id']} ({', '.join(job['detectors'])}; asked by {job['actor']})"
    state = job["state"]
    if state == "queued":
        return f"{head}: queued, {STAGE_LABELS['queued']}"
    if state == "running":
        stage = STAGE_LABELS.get(job["stage"], job["stage"])
        line = f"{head}: running, {stage}"
        if job["total"]:
            line += f", frame {job['done']} of {job['total']}"
        eta = eta_s(job, now)
        if eta is not None:
            line += f", about {_duration(eta)} left"
        if job["cancel_requested"]:
            line += " (cancelling)"
        return line
    if state == "done":
        return f"{head}: done" + (f", result #{job['result_id']}" if job["result_id"] is not None else "")
    if state == "failed":
        return f"{head}: failed: {job['error']}"
    by = f" by {job['cancelled_by']}" if job["cancelled_by"] else ""
    return f"{head}: cancelled{by}, nothing stored"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
