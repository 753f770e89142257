"""Batch triage of an archive: find the videos, ingest them, analyse each in worker processes (or Ray tasks), record the batch, write its results table.

The driver (the process that runs `run_batch`) alone writes to the case database: it ingests the
files (custody as usual, in threads of its own; the decoding runs in the sandbox's child
processes), checks custody, and sends each new file to a worker: a process of a local pool
(`concurrent.futures`, spawned) or, with `ray_address`, a Ray task. A worker re-hashes the file
it reads, runs `pipeline.analyze` with the driver's snapshot of what the store already holds for
that file (`service.stored_reuse` over the snapshot, so a rerun recomputes nothing), and returns
the result; the driver stores it with `service.persist`, the same code `analyse_evidence` uses.

A worker refuses to work when its code differs from the driver's (`code_version`: the version
and a hash of the workbench/ and detectors/ sources), so a cluster node with other code gives no
results. A worker process that dies is replaced and its video tried again, `max_retries` times;
a video that keeps killing its worker is listed as failed. A bad file never stops the batch.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import importlib
import io
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from detectors.registry import get_detector, register, unregister
from detectors.weights import sha256_file
from workbench import __version__
from workbench.evidence import EvidenceError, ingest, verify
from workbench.jobs import pid_alive, process_start, sampling_from_dict, sampling_to_dict
from workbench.pipeline import AnalysisResult, Sampling, analyze
from workbench.service import persist, stored_reuse
from workbench.store import Store
from workbench.video import DEFAULT_LIMITS, Limits, VideoInfo

ROOT = Path(__file__).resolve().parent.parent
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts",
                            ".m2ts", ".wmv", ".flv", ".3gp", ".ogv"})
# How a file of a batch ended. "already analysed": every result was in the store for this plan.
STATUSES = ("analysed", "already analysed", "duplicate", "refused", "failed")
BAD = ("refused", "failed")
DEFAULT_MAX_RETRIES = 2
# Cells a spreadsheet would run as a formula: a file name from an archive is not trusted.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class BatchError(Exception):
    """A batch that cannot start (no such folder, a CSV without a `path` column, Ray missing)."""


class CodeMismatch(Exception):
    """A worker whose code differs from the driver's: it refuses to analyse."""


# -- what to analyse --------------------------------------------------------------------------------
def find_videos(source: str | os.PathLike) -> tuple[list[Path], int]:
    """The videos of a folder (recursively, by file suffix, symlinked folders not followed) or of a CSV's `path` column.

    A CSV's relative paths are taken from the CSV's folder. Listed paths are kept even when they
    do not exist: ingest refuses them, with the reason, in the results table.

    Returns:
        (video paths in a stable order, how many other files were left out).

    Raises:
        BatchError: not a folder or a .csv file, or a CSV without a `path` column.
    """
    source = Path(source)
    if source.is_dir():
        found, other = [], 0
        for folder, dirs, files in os.walk(source, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder) / name
                if path.suffix.lower() in VIDEO_SUFFIXES and not name.startswith("."):
                    found.append(path)
                else:
                    other += 1
        return found, other
    if source.is_file() and source.suffix.lower() == ".csv":
        with source.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise BatchError(f"{source.name} has no `path` column (columns: {', '.join(reader.fieldnames or [])})")
            paths = [row["path"].strip() for row in reader if (row.get("path") or "").strip()]
        return [p if p.is_absolute() else source.parent / p for p in map(Path, paths)], 0
    raise BatchError(f"{str(source)!r} is neither a folder nor a .csv file")


# -- the code a worker must share with the driver ---------------------------------------------------
_CODE: dict | None = None


def code_version() -> dict:
    """This process's code: the workbench version, a sha256 over the sources of workbench/ and detectors/
    (every .py and .toml file, by relative path), and the git commit where there is one (informative only)."""
    global _CODE
    if _CODE is None:
        digest = hashlib.sha256()
        for package in ("workbench", "detectors"):
            for path in sorted((ROOT / package).rglob("*")):
                if path.suffix in (".py", ".toml") and "__pycache__" not in path.parts:
                    digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
                    digest.update(path.read_bytes() + b"\0")
        _CODE = {"workbench": __version__, "source_sha256": digest.hexdigest(), "git": _git_commit()}
    return _CODE


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def check_code(expected: dict) -> None:
    """Raise CodeMismatch unless this process runs the driver's code (version and source hash)."""
    mine = code_version()
    for key in ("workbench", "source_sha256"):
        if mine[key] != expected[key]:
            raise CodeMismatch(f"this worker runs other code than the driver ({key} {mine[key][:16]} here, "
                               f"{expected[key][:16]} on the driver): install the driver's version on every node")


# -- detectors registered in workers ----------------------------------------------------------------
def load_hooks(hooks: Iterable[str]) -> None:
    """Import each "module:NAME": a Detector subclass is registered (replacing one of the same name),
    a function is called. How detectors outside the package reach a worker process or a Ray node."""
    for hook in hooks:
        module_name, _, attr = hook.partition(":")
        if not module_name or not attr:
            raise BatchError(f"a detector hook is MODULE:NAME, not {hook!r}")
        target = getattr(importlib.import_module(module_name), attr)
        if isinstance(target, type):
            unregister(target.name)
            register(target)
        else:
            target()


def hook_paths(hooks: Iterable[str]) -> list[str]:
    """The folders a worker needs on its import path: the project root and each hook's top-level folder."""
    paths = [str(ROOT)]
    for hook in hooks:
        top = importlib.import_module(hook.partition(":")[0].split(".")[0])
        where = Path(top.__file__).resolve()
        folder = str(where.parent.parent if where.name == "__init__.py" else where.parent)
        if folder not in paths:
            paths.append(folder)
    return paths


_READY: tuple | None = None


def _prepare_worker(paths: list[str], hooks: list[str], threads: int | None) -> None:
    """Once per worker process: the import path, the hooks, and torch's thread count."""
    global _READY
    key = (tuple(paths), tuple(hooks), threads)
    if _READY == key:
        return
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    load_hooks(hooks)
    if threads:
        import torch

        torch.set_num_threads(threads)
    _READY = key


# -- what the store already holds, as plain values a worker can carry ------------------------------
class StoredSnapshot:
    """The store's reusable results for one evidence file, as plain values: answers the four questions
    `service.stored_reuse` asks a Store, so a worker without the database reuses exactly what it would."""

    def __init__(self, analyses: list[dict], scores: dict[int, tuple], face_runs: list[dict]):
        self.analyses, self.scores, self.face_runs = analyses, scores, face_runs

    @classmethod
    def of(cls, store: Store, sha256: str) -> "StoredSnapshot":
        analyses = [a for a in store.analyses(sha256) if a["status"] in ("ok", "inconclusive")]
        scores = {a["id"]: store.analysis_scores(a["id"]) for a in analyses}
        runs = [dict(run, tracks=store.face_run_tracks(run["id"])) for run in store.face_runs(sha256)]
        return cls(analyses, scores, runs)

    def find_analysis(self, sha256, detector, version, weights_sha256, params_key):
        found = [a for a in self.analyses if a["sha256"] == sha256 and a["detector"] == detector
                 and a["detector_version"] == version and a["weights_sha256"] == weights_sha256
                 and a["params_key"] == params_key]
        return max(found, key=lambda a: a["id"]) if found else None

    def analysis_scores(self, analysis_id):
        return self.scores[analysis_id]

    def find_face_run(self, sha256, params_key):
        return next((r for r in self.face_runs if r["sha256"] == sha256 and r["params_key"] == params_key), None)

    def face_run_tracks(self, face_run_id):
        return next(r["tracks"] for r in self.face_runs if r["id"] == face_run_id)


# -- one video, in a worker -------------------------------------------------------------------------
@dataclass
class Task:
    """Everything a worker needs for one video (plain values; pickled to a process or a Ray node)."""

    position: int
    sha256: str
    path: str
    probe: dict
    detectors: list[str]
    sampling: dict
    ensemble_rule: str
    device: str | None
    snapshot: StoredSnapshot
    code: dict
    paths: list[str]
    hooks: list[str]
    threads: int | None = None


def analyse_task(task: Task) -> dict:
    """Analyse one video in a worker: check code and custody, analyse with the snapshot's reuse.

    Returns:
        {"result": AnalysisResult, "analysis_s": seconds} or {"error": reason}; nothing is stored here.
    """
    t0 = time.perf_counter()
    try:
        _prepare_worker(task.paths, task.hooks, task.threads)
        check_code(task.code)
        actual = sha256_file(task.path) if Path(task.path).is_file() else None
        if actual != task.sha256:
            found = "the file is missing" if actual is None else f"the file hashes to {actual}"
            return {"error": f"custody: {found} on this worker, not {task.sha256}; not analysed"}
        device = task.device
        if device is None:
            from workbench import config  # lazy: the worker's own device (a Ray node's GPU), read where it runs

            device = config.device()
        info = VideoInfo(**dict(task.probe, path=task.path))
        result = analyze(task.path, task.detectors, sampling_from_dict(task.sampling), device=device,
                         ensemble_rule=task.ensemble_rule, info=info, reuse=stored_reuse(task.snapshot, task.sha256))
    except CodeMismatch as exc:
        return {"error": str(exc)}
    except Exception as exc:  # the video's failure is its result; the batch goes on
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"result": result, "analysis_s": round(time.perf_counter() - t0, 3)}


# -- executors: a local process pool, or Ray ---------------------------------------------------------
class LocalPool:
    """N spawned worker processes (a fresh interpreter each: no forked torch or SQLite state).

    When a worker dies, its pool fails every task it held, and which one killed it is unknown: those
    tasks run again each in a pool of its own, so that a death is blamed on the video that caused it.
    """

    kind = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self.capacity = workers  # tasks in flight at once: a dead pool takes down no more than these
        self.shared: cf.ProcessPoolExecutor | None = None
        self.members: dict[cf.Future, cf.ProcessPoolExecutor] = {}

    def submit(self, task: Task, alone: bool = False) -> cf.Future:
        if alone:
            pool = _spawn_pool(1)
        else:
            if self.shared is None:
                self.shared = _spawn_pool(self.workers)
            pool = self.shared
        future = pool.submit(analyse_task, task)
        self.members[future] = pool
        return future

    def release(self, future: cf.Future) -> None:
        """The driver has the future's answer: a pool of its own is shut down."""
        pool = self.members.pop(future, None)
        if pool is not None and pool is not self.shared:
            pool.shutdown(wait=True)

    def casualties(self, future: cf.Future, exc: BaseException) -> list[cf.Future] | None:
        """None unless `exc` says the worker process died; else every future its pool held (the pool is gone)."""
        if not isinstance(exc, cf.process.BrokenProcessPool):
            return None
        pool = self.members.get(future)
        down = [f for f, p in self.members.items() if p is pool]
        for f in down:
            self.members.pop(f)
        if pool is self.shared:
            self.shared = None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        return down

    def close(self, cancel: bool = False) -> None:
        pools = {id(p): p for p in self.members.values()}
        if self.shared is not None:
            pools[id(self.shared)] = self.shared
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=cancel)
        self.members.clear()
        self.shared = None


def _spawn_pool(workers: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


class RayPool:
    """Each video a Ray task placed by its resources; Ray retries a task whose worker died (`max_retries`)."""

    kind = "ray"

    def __init__(self, address: str, workers: int, max_retries: int, gpus_per_task: float | None,
                 cpus_per_task: float = 1.0):
        try:
            import ray  # lazy: Ray is optional (requirements-cluster.txt), needed only here
        except ImportError as exc:
            raise BatchError("--ray needs Ray: pip install -r requirements-cluster.txt") from exc
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if address == "auto":
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
            self.started = True
        gpus = ray.cluster_resources().get("GPU", 0)
        self.resources = task_resources(gpus, gpus_per_task, cpus_per_task)
        self.max_retries = max_retries
        self.remote = ray.remote(analyse_task)
        # Tasks in flight: enough to keep every slot of the cluster busy, while the driver holds the rest.
        slots = ray.cluster_resources().get("CPU", workers) / self.resources["num_cpus"]
        self.capacity = max(1, 2 * int(slots))

    def submit(self, task: Task, alone: bool = False) -> cf.Future:
        # GPU tasks pick the device where they run; CPU-only tasks run on the CPU even on a GPU node.
        if not self.resources["num_gpus"]:
            task.device = "cpu"
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(task.paths)}}
        ref = self.remote.options(max_retries=self.max_retries, retry_exceptions=False, runtime_env=env,
                                  **self.resources).remote(task)
        return ref.future()

    def release(self, future: cf.Future) -> None:
        pass

    def casualties(self, future: cf.Future, exc: BaseException) -> list[cf.Future] | None:
        return None  # Ray already retried a task whose worker died, max_retries times

    def close(self, cancel: bool = False) -> None:
        if self.started:
            self.ray.shutdown()


def task_resources(cluster_gpus: float, gpus_per_task: float | None, cpus_per_task: float = 1.0) -> dict:
    """A video task's Ray resources: a GPU (or `gpus_per_task` of one) only when the cluster has GPUs.

    >>> task_resources(0, None)
    {'num_cpus': 1.0, 'num_gpus': 0}
    >>> task_resources(4, 0.5)
    {'num_cpus': 1.0, 'num_gpus': 0.5}
    """
    if not cluster_gpus:
        return {"num_cpus": cpus_per_task, "num_gpus": 0}
    return {"num_cpus": cpus_per_task, "num_gpus": 1.0 if gpus_per_task is None else gpus_per_task}


def _failure_reason(exc: BaseException, kind: str, attempts: int) -> str:
    name = type(exc).__name__
    if kind == "ray" and any(word in name for word in ("WorkerCrashed", "NodeDied", "OutOfMemory")):
        return f"the Ray worker running it died {attempts} time(s) ({name}); given up"
    text = str(exc).strip().splitlines()
    return f"{name}: {text[-1] if text else ''}"


# -- the batch ----------------------------------------------------------------------------------------
@dataclass
class BatchOutcome:
    """What a finished (or interrupted) batch did: its id, the results table, counts, where the table was written."""

    batch_id: int
    rows: list[dict]
    counts: dict
    other_files: int = 0
    written: list[Path] = field(default_factory=list)
    status: str = "done"

    @property
    def bad(self) -> list[dict]:
        return [r for r in self.rows if r["status"] in BAD]


def app_link(case_id: int, sha256: str | None) -> str:
    """A link that opens the case (and the file) in the app: WORKBENCH_APP_URL (default http://localhost:8501/)."""
    base = os.environ.get("WORKBENCH_APP_URL", "http://localhost:8501/")
    query = f"?case={case_id}" + (f"&evidence={sha256}" if sha256 else "")
    return base.rstrip("/") + "/" + query


def _row(position: int, path: Path, case_id: int, status: str, reason: str | None, evidence: dict | None = None,
         result: AnalysisResult | None = None, analysis_s: float | None = None) -> dict:
    """One row of the results table (plain values; `detectors` nested, flattened for the CSV)."""
    probe = (evidence or {}).get("probe") or {}
    row = {
        "position": position, "file": str(path), "original_name": (evidence or {}).get("original_name", path.name),
        "sha256": (evidence or {}).get("sha256"), "status": status, "reason": reason,
        "score": None, "ensemble_status": None, "ensemble_rule": None, "faces": None, "analysis_s": analysis_s,
        "width": probe.get("width"), "height": probe.get("height"), "fps": probe.get("fps"),
        "frames": probe.get("frames"), "duration_s": probe.get("duration_s"), "codec": probe.get("codec"),
        "detectors": {}, "link": app_link(case_id, (evidence or {}).get("sha256")),
    }
    if result is not None:
        ens = result.ensemble
        row.update(score=ens.get("score"), ensemble_status=ens.get("status"), ensemble_rule=ens.get("rule"),
                   faces=len(result.tracks))
        row["detectors"] = {name: {"status": o.status, "score": o.score, "reason": o.reason, "reused": o.reused,
                                   "analysis_id": o.analysis_id} for name, o in result.detectors.items()}
    return row


def sort_rows(rows: list[dict]) -> list[dict]:
    """Highest ensemble score first; rows without a score last (then in input order)."""
    return sorted(rows, key=lambda r: (r["score"] is None, -(r["score"] or 0.0), r["position"]))


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def table_csv(rows: list[dict], detectors: list[str]) -> str:
    """The results table as CSV: one column per fact, three per detector; formula-like cells defused."""
    columns = ["file", "original_name", "sha256", "status", "reason", "score", "ensemble_status", "ensemble_rule",
               "faces", "analysis_s", "width", "height", "fps", "frames", "duration_s", "codec"]
    columns += [f"{name}_{k}" for name in detectors for k in ("status", "score", "reason")]
    columns.append("link")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        flat = dict(row)
        for name in detectors:
            d = row["detectors"].get(name, {})
            flat.update({f"{name}_status": d.get("status"), f"{name}_score": d.get("score"),
                         f"{name}_reason": d.get("reason")})
        writer.writerow([_cell(flat.get(c)) for c in columns])
    return out.getvalue()


def write_table(outcome: BatchOutcome, out_dir: Path, detectors: list[str], case: dict, plan: dict) -> list[Path]:
    """Write results.csv and results.json (sorted by score) into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / "results.csv", out_dir / "results.json"
    csv_path.write_text(table_csv(outcome.rows, detectors), encoding="utf-8")
    payload = {"batch_id": outcome.batch_id, "case": {"id": case["id"], "name": case["name"]}, "plan": plan,
               "status": outcome.status, "counts": outcome.counts, "rows": outcome.rows}
    json_path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return [csv_path, json_path]


def counts_of(rows: list[dict], files: int) -> dict:
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in STATUSES}
    counts["files"] = files
    return counts


def run_batch(
    store: Store,
    paths: list[Path],
    case_id: int,
    detectors: list[str],
    sampling: Sampling = Sampling(),
    *,
    actor: str = "local",
    evidence_dir: str | os.PathLike,
    limits: Limits = DEFAULT_LIMITS,
    workers: int = 1,
    ray_address: str | None = None,
    hooks: Iterable[str] = (),
    ensemble_rule: str = "mean",
    device: str | None = None,
    source: str = "",
    max_retries: int = DEFAULT_MAX_RETRIES,
    gpus_per_task: float | None = None,
    progress: Callable[[dict], None] | None = None,
    started: Callable[[int, int], None] | None = None,
) -> BatchOutcome:
    """Ingest and analyse every file of `paths` into a case; record the batch; return its results table.

    Files are ingested in `workers` threads (each decode in the sandbox), in input order for the
    duplicate check: a file whose bytes were already seen in this batch is a "duplicate" row with
    the first one's results. Every new file is analysed by a worker (`analyse_task`) and stored
    here; a file whose results were all in the store for this plan is "already analysed".

    Args:
        detectors: registry names (also known to the workers: built in, or registered by `hooks`).
        hooks: "module:NAME" detector classes or functions every worker loads (see `load_hooks`).
        ray_address: None for the local pool, "auto" for a local Ray instance (or the one this
            process already started), else a Ray cluster's address.
        device: the torch device for every worker; None: each worker's own (`config.device()`).
        progress: called with each file's row as it ends. started: called with (batch id, files).

    Returns:
        The BatchOutcome; its rows are sorted by score (highest first, no score last).
    """
    if workers < 1:
        raise BatchError("a batch needs at least one worker")
    hooks = list(hooks)
    load_hooks(hooks)
    for name in detectors:
        get_detector(name)  # an unknown name stops the batch before it starts
    code = code_version()
    plan = {"detectors": list(detectors), "sampling": sampling_to_dict(sampling), "ensemble_rule": ensemble_rule,
            "workers": workers, "executor": "ray" if ray_address else "local", "ray_address": ray_address,
            "hooks": hooks}
    pid = os.getpid()
    batch_id = store.start_batch(case_id, actor, source, plan, len(paths), code, pid, process_start(pid),
                                 socket.gethostname())
    if started:
        started(batch_id, len(paths))
    executor = (RayPool(ray_address, workers, max_retries, gpus_per_task) if ray_address else LocalPool(workers))
    threads = None if ray_address else max(1, (os.cpu_count() or 1) // workers)
    worker_paths = hook_paths(hooks)
    rows: list[dict] = []

    def finish(row: dict) -> None:
        rows.append(row)
        store.add_batch_item(batch_id, {**row, "row": row}, actor)
        if progress:
            progress(row)

    first_of: dict[str, dict] = {}  # sha256 -> {"path", "waiting": duplicates (position, path), "done": row}
    backlog: list[list] = []  # [task, path, evidence, deaths, deaths alone, alone?] waiting for a slot
    running: dict[cf.Future, list] = {}

    def settle(sha256: str, row: dict) -> None:
        finish(row)
        for position, dup_path in first_of[sha256]["waiting"]:
            finish(dict(row, position=position, file=str(dup_path), original_name=dup_path.name, status="duplicate",
                        reason=f"the same bytes as {row['file']}"))
        first_of[sha256]["done"] = row

    def pump() -> None:
        while backlog and len(running) < executor.capacity:
            entry = backlog.pop(0)
            running[executor.submit(entry[0], alone=entry[5])] = entry

    def intake(position: int, path: Path, evidence: dict | None, refusal: str | None) -> None:
        if refusal is not None:
            finish(_row(position, path, case_id, "refused", refusal))
            return
        sha256 = evidence["sha256"]
        if sha256 in first_of:
            first = first_of[sha256]
            if "done" in first:
                finish(dict(first["done"], position=position, file=str(path), original_name=path.name,
                            status="duplicate", reason=f"the same bytes as {first['path']}"))
            else:
                first["waiting"].append((position, path))
            return
        first_of[sha256] = {"path": str(path), "waiting": []}
        try:
            verify(store, sha256, actor)  # custody, as analyse_evidence checks it (a mismatch is audited)
        except EvidenceError as exc:
            settle(sha256, _row(position, path, case_id, "failed", str(exc), evidence))
            return
        task = Task(position, sha256, evidence["stored_path"], evidence["probe"], list(detectors),
                    sampling_to_dict(sampling), ensemble_rule, device, StoredSnapshot.of(store, sha256), code,
                    worker_paths, hooks, threads)
        backlog.append([task, path, evidence, 0, 0, False])

    def answer(future: cf.Future) -> None:
        entry = running.pop(future, None)
        if entry is None:
            return  # already handled as a casualty of its pool
        task, path, evidence = entry[:3]
        try:
            result = future.result()
        except Exception as exc:
            down = executor.casualties(future, exc)
            if down is None:
                result = {"error": _failure_reason(exc, executor.kind, max_retries + 1)}
            else:
                _after_death(future, entry, down)
                return
        executor.release(future)
        settle(task.sha256, _stored_row(store, task, path, evidence, result, case_id, actor))

    def _after_death(future: cf.Future, entry: list, down: list[cf.Future]) -> None:
        # A worker died and took its pool down. Tasks of that pool that had finished are stored as usual;
        # the death is counted against a task only when it was the pool's one unfinished task. The others
        # run again, each alone; a task that died alone more than max_retries times is failed.
        others = [f for f in dict.fromkeys(down) if f is not future and f in running]
        finished = [f for f in others if f.done() and not f.cancelled() and f.exception() is None]
        for f in finished:
            answer(f)
        entries = [entry] + [running.pop(f) for f in others if f not in finished]
        alone = len(entries) == 1
        for held in entries:
            held[3] += 1
            held[4] += 1 if alone else 0
            if held[4] > max_retries:
                settle(held[0].sha256, _row(held[0].position, held[1], case_id, "failed",
                                            f"its worker process died {held[3]} time(s); given up", held[2]))
            else:
                held[5] = True
                backlog.insert(0, held)

    status = "done"
    ingest_pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="batch-ingest")
    try:
        intakes = [ingest_pool.submit(_ingest_one, store, path, evidence_dir, actor, case_id, limits) for path in paths]
        taken = 0  # intakes are handled in input order, so the first of two equal files is the original
        while taken < len(paths) or running or backlog:
            while taken < len(paths) and intakes[taken].done():
                intake(taken, paths[taken], *intakes[taken].result())
                taken += 1
            pump()
            waiting = list(running) + ([intakes[taken]] if taken < len(paths) else [])
            if not waiting:
                continue
            done, _ = cf.wait(waiting, return_when=cf.FIRST_COMPLETED)
            for future in done:
                if future in running:
                    answer(future)
    except BaseException:  # Ctrl-C, or the driver itself failing: what ended so far stays recorded
        status = "interrupted"
        for future in running:
            future.cancel()
        raise
    finally:
        ingest_pool.shutdown(wait=True, cancel_futures=True)
        executor.close(cancel=status != "done")
        counts = counts_of(rows, len(paths))
        store.end_batch(batch_id, status, counts, actor)
    return BatchOutcome(batch_id, sort_rows(rows), counts, status=status)


def _ingest_one(store: Store, path: Path, evidence_dir, actor: str, case_id: int, limits: Limits):
    """(evidence row, None) or (None, why it was refused); runs in an ingest thread of the driver."""
    try:
        if not path.is_file():
            raise EvidenceError("no such file" if not path.exists() else "not a regular file")
        return ingest(store, path, path.name, evidence_dir, actor, case_id, limits), None
    except EvidenceError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"the file cannot be read ({exc.strerror or type(exc).__name__})"
    except Exception as exc:  # whatever one file does, the batch goes on; the reason is its row
        return None, f"{type(exc).__name__}: {exc}"


def _stored_row(store: Store, task: Task, path: Path, evidence: dict, answer: dict, case_id: int, actor: str) -> dict:
    """Store a worker's answer (`service.persist`) and make its row of the table."""
    if "error" in answer:
        store.audit(actor, "analysis.failed", f"evidence:{task.sha256}", {"reason": answer["error"]})
        return _row(task.position, path, case_id, "failed", answer["error"], evidence)
    result: AnalysisResult = answer["result"]
    result.sha256 = task.sha256
    persist(store, task.sha256, result, actor)
    if result.error is not None:
        return _row(task.position, path, case_id, "failed", result.error, evidence, result, answer["analysis_s"])
    reused = result.face_tracks is None and all(o.reused for o in result.detectors.values()
                                                if o.status in ("ok", "inconclusive"))
    status = "already analysed" if reused else "analysed"
    return _row(task.position, path, case_id, status, None, evidence, result, answer["analysis_s"])


# -- reading batches ----------------------------------------------------------------------------------
def batch_state(batch: dict, host: str | None = None) -> str:
    """done / interrupted from the batch's end row; without one: running, or stopped when its driver is gone."""
    if batch["end_status"]:
        return batch["end_status"]
    if batch["driver_host"] == (host or socket.gethostname()) and not pid_alive(batch["driver_pid"], batch["driver_start"]):
        return "stopped"
    return "running"


def batch_table(store: Store, batch_id: int) -> list[dict]:
    """A batch's stored rows as the Cases page shows them, sorted by score (no score last)."""
    rows = sort_rows([item["row"] for item in store.batch_items(batch_id)])
    return [{"file": r["original_name"], "score": r["score"], "status": r["status"],
             "duration (s)": r["duration_s"], "faces": r["faces"], "analysis (s)": r["analysis_s"],
             "reason": r["reason"] or "", "sha256": r["sha256"]} for r in rows]
