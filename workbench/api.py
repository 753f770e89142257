"""The HTTP API (`python -m workbench serve --api`): bearer-token access to jobs, results, detectors and case reports.

A front end beside the CLI and the app: it ingests evidence with the same sandboxed intake
(`evidence.ingest`, or `evidence.open_in_folder` for the import folder), queues analyses with
`jobs.submit` (worker processes run them, as for the app) and reads what the store holds. Every
endpoint but `/health` needs `Authorization: Bearer TOKEN`; a token (`python -m workbench token
create NAME`) is stored as its sha256 only and stands for the identity NAME, which every write and
audit entry it causes records. Errors are `{"error": "..."}` with no traceback.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import secrets
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from detectors.base import SCOPE_CAVEAT, Status
from detectors.registry import UnknownDetector, default_detectors, describe_all, get_detector
from workbench import config, jobs
from workbench.aggregate import ENSEMBLE_RULES, TRACK_METHODS, VIDEO_METHODS, Rule, ensemble
from workbench.evidence import EvidenceError, display_name, ingest, open_in_folder
from workbench.pipeline import AnalysisResult, DetectorOutcome, Sampling, TrackData
from workbench.report import case_report
from workbench.store import Store, StoreError
from workbench.video import Limits, VideoInfo

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8600
# The app's upload limit (.streamlit/config.toml maxUploadSize = 500, in MiB); larger evidence
# goes through the import folder, which streams from disk.
DEFAULT_MAX_UPLOAD_BYTES = 500 * 1024**2
# Room for the multipart framing and form fields around the file in a request body.
FORM_OVERHEAD_BYTES = 64 * 1024
DEFAULT_RATE_PER_MINUTE = 120
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
LOOPBACK_NAMES = ("localhost",)


class ApiError(Exception):
    """A refusal with its HTTP status and a plain message (sent as {"error": message})."""

    def __init__(self, status: int, message: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers, extra


# -- tokens ---------------------------------------------------------------------------------------
def token_sha256(token: str) -> str:
    """The sha256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: Store, name: str, actor: str) -> str:
    """Make a new random token for identity NAME, store only its sha256 (audited), and return the token.

    Raises:
        StoreError: a bad name, or NAME already has an active token.
    """
    if not TOKEN_NAME.match(name):
        raise StoreError("a token name is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    token = secrets.token_urlsafe(32)  # 32 random bytes
    store.add_api_token(name, token_sha256(token), actor)
    return token


def identity_of(store: Store, token: str) -> str | None:
    """The identity (NAME) of an active token, or None; every stored hash is compared in constant time."""
    presented = token_sha256(token)
    found = None
    for row in store.active_api_tokens():
        if hmac.compare_digest(presented, row["token_sha256"]):
            found = row["name"]
    return found


# -- limits ---------------------------------------------------------------------------------------
class RateLimiter:
    """A token bucket per API token, in memory: `per_minute` requests a minute, bursts up to that many.

    Args:
        clock: seconds from a monotonic clock (tests pass their own).
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        if per_minute < 1:
            raise ValueError("the rate limit must allow at least one request a minute")
        self.capacity, self.rate = float(per_minute), per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float | None:
        """Spend one request of `key`'s bucket: None when allowed, else the seconds until the next is."""
        now = self.clock()
        with self._lock:
            level, then = self._buckets.get(key, (self.capacity, now))
            level = min(self.capacity, level + (now - then) * self.rate)
            if level < 1.0:
                self._buckets[key] = (level, now)
                return (1.0 - level) / self.rate
            self._buckets[key] = (level - 1.0, now)
            return None


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before it is read (Content-Length) or
    as soon as the running count passes the limit (chunked uploads); nothing past it is read."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _too_large(self.max_bytes)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(self.max_bytes)(scope, receive, send)


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse({"error": f"the request body is larger than the limit of {max_bytes / 1024**2:.0f} MiB; "
                                  "put large files in the import folder and submit their path"},
                        status_code=413, headers={"Connection": "close"})


def is_loopback(host: str) -> bool:
    """Whether a bind address only listens on this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- settings -------------------------------------------------------------------------------------
@dataclass
class ApiSettings:
    """Where the API reads and writes, and its limits (defaults: the app's, from `workbench.config`)."""

    db_path: Path = field(default_factory=config.db_path)
    evidence_dir: Path = field(default_factory=config.evidence_dir)
    import_dir: Path = field(default_factory=config.import_dir)
    limits: Limits = field(default_factory=config.limits)
    max_upload_bytes: int = field(default_factory=lambda: int(float(os.environ.get(
        "WORKBENCH_API_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_BYTES / 1024**2)) * 1024**2))
    rate_per_minute: int = field(default_factory=lambda: int(os.environ.get(
        "WORKBENCH_API_RATE_PER_MINUTE", DEFAULT_RATE_PER_MINUTE)))
    # /docs and /openapi.json need no token; they are served only while the API listens on loopback.
    docs: bool = True
    clock: Callable[[], float] = time.monotonic


# -- what a job request asks for ------------------------------------------------------------------
@dataclass
class JobRequest:
    case_id: int | None
    case_name: str | None
    detectors: list[str]
    sampling: Sampling
    ensemble_rule: str


def _text(value, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{what} must be text")
    return value


def _number(value, what: str, kind=float, minimum: float | None = None):
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ApiError(400, f"{what} must be a number")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{what} must be {'an integer' if kind is int else 'a number'}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ApiError(400, f"{what} must be finite")
    if minimum is not None and number < minimum:
        raise ApiError(400, f"{what} must be at least {minimum:g}")
    return number


def _flag(value, what: str) -> bool:
    if value in (None, "", False, "false", "0", "no"):
        return False
    if value in (True, "true", "1", "yes"):
        return True
    raise ApiError(400, f"{what} must be true or false")


def _choice(value, what: str, choices, default: str) -> str:
    value = _text(value, what) or default
    if value not in choices:
        raise ApiError(400, f"unknown {what} {value!r}; choose from {', '.join(sorted(choices))}")
    return value


def parse_job_request(fields: dict, detectors: list) -> JobRequest:
    """Check a job request's fields (the same for an upload form and a JSON body) and build the job's inputs.

    Args:
        fields: case_id or case (a name, created if new), sample_fps, every_frame, detect_every,
            track_rule, video_rule, min_frames, ensemble.
        detectors: registry names (none: the default detectors).

    Raises:
        ApiError: 400 with what is wrong.
    """
    case_id = _number(fields.get("case_id"), "case_id", int, 1)
    case_name = _text(fields.get("case"), "case")
    if (case_id is None) == (case_name is None):
        raise ApiError(400, "give exactly one of case_id (an existing case) or case (a case name, created if new)")
    names = [d for d in detectors if d not in (None, "")]
    if not all(isinstance(d, str) for d in names):
        raise ApiError(400, "detectors must be names")
    names = list(dict.fromkeys(names)) or default_detectors()
    if not names:
        raise ApiError(400, "no detectors named and none is a default")
    for name in names:
        try:
            get_detector(name)
        except UnknownDetector as exc:
            raise ApiError(400, str(exc)) from None
    every_frame = _flag(fields.get("every_frame"), "every_frame")
    sample_fps = _number(fields.get("sample_fps"), "sample_fps", float, 0.01)
    if every_frame and sample_fps is not None:
        raise ApiError(400, "give sample_fps or every_frame, not both")
    rule = Rule(track=_choice(fields.get("track_rule"), "track_rule", TRACK_METHODS, "top25-mean"),
                video=_choice(fields.get("video_rule"), "video_rule", VIDEO_METHODS, "max"),
                min_frames=_number(fields.get("min_frames"), "min_frames", int, 1) or 3)
    sampling = Sampling(sample_fps=None if every_frame else (sample_fps or 2.0),
                        detect_every=_number(fields.get("detect_every"), "detect_every", int, 1), rule=rule)
    return JobRequest(case_id, case_name, names, sampling,
                      _choice(fields.get("ensemble"), "ensemble", ENSEMBLE_RULES, "mean"))


def import_path(folder: Path, relative) -> Path:
    """A path the client gave, taken only as relative to the import folder (no '..', not absolute).

    Raises:
        ApiError: 400 for anything else; symbolic links are refused when the file is opened.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise ApiError(400, "path must be a file's path relative to the import folder")
    if "\x00" in relative or "\\" in relative:
        raise ApiError(400, "path holds a character that is not allowed")
    rel = PurePosixPath(relative)
    if rel.is_absolute():
        raise ApiError(400, "absolute paths are refused: give a path relative to the import folder")
    if any(part in ("..", ".") for part in relative.split("/")):
        raise ApiError(400, "'..' and '.' are refused in path: give a plain path inside the import folder")
    return Path(folder) / rel


# -- the result JSON ------------------------------------------------------------------------------
def job_result(store: Store, job: dict) -> dict:
    """A finished job's result as the same JSON document `analyze --json` writes (README, 'JSON output').

    Built from what the job stored (its ensemble, member analyses and face run) through the same
    `AnalysisResult.to_json`, so the keys and the scores are the CLI's. `video.path` is null (the
    server's files are not named); `video.original_name` names the file; `reused` says whether the
    job found the analysis stored before it started; `timings` are the job's own.

    Raises:
        StoreError: the job did not end done.
    """
    if job["state"] != "done" or job["result_id"] is None:
        raise StoreError(f"job {job['id']} has no result (state {job['state']})")
    sha256 = job["sha256"]
    stored = store.ensemble(job["result_id"])
    evidence = store.evidence(sha256)
    analyses = {a["id"]: a for a in store.analyses(sha256)}
    face_run = next((r for r in store.face_runs(sha256) if r["id"] == stored["face_run_id"]), None)
    outcomes: dict[str, DetectorOutcome] = {}
    for name in job["detectors"]:
        analysis_id = (job["result"] or {}).get(name)
        row = analyses.get(analysis_id)
        if row is None:
            # It never ran (weights missing or refused): only its status was stored, with the ensemble.
            status = stored["left_out"].get(name, Status.ERROR.value)
            try:
                version = get_detector(name).version
            except UnknownDetector:
                version = "unknown"
            outcomes[name] = DetectorOutcome(name, version, status,
                                             reason=f"{status} when job {job['id']} ran (the reason is not stored)")
            continue
        track_scores, frame_rows = store.analysis_scores(row["id"])
        outcomes[name] = DetectorOutcome(
            name, row["detector_version"], row["status"], row["score"], row["reason"], row["frames_used"] or [],
            row["weights_sha256"], row["threshold"], row["rule"],
            {tid: {k: t[k] for k in ("score", "n_frames", "status", "reason")} for tid, t in track_scores.items()},
            [(r["frame"], r["track_id"], r["score"]) for r in frame_rows], row["timings"] or {}, row["id"],
            reused=row["created_at"] < (job["started_at"] or job["created_at"]), upstream=row.get("upstream"))
    combined = ensemble({n: o.score for n, o in outcomes.items()}, {n: o.status for n, o in outcomes.items()},
                        job["ensemble_rule"], {n: o.threshold for n, o in outcomes.items()})
    # The stored ensemble is the fact; the recomputation only supplies its description fields.
    combined.update(rule=stored["rule"], score=stored["score"], status=stored["status"],
                    members=sorted(stored["members"]), left_out=stored["left_out"], threshold=stored["threshold"],
                    ensemble_id=stored["id"])
    tracks = []
    if face_run is not None:
        for tid, rows in sorted(store.face_run_tracks(face_run["id"]).items()):
            tracks.append(TrackData(tid, [r["frame"] for r in rows], [(r["x1"], r["y1"], r["x2"], r["y2"]) for r in rows],
                                    [bool(r["detected"]) for r in rows]))
    timings = {}
    if face_run is not None and (face_run["timings"] or {}).get("faces_s") is not None:
        timings["faces_s"] = face_run["timings"]["faces_s"]
    if job["started_at"] and job["finished_at"]:
        timings["total_s"] = round((_utc(job["finished_at"]) - _utc(job["started_at"])).total_seconds(), 3)
    result = AnalysisResult(
        VideoInfo(**dict(evidence["probe"], path=None)), sha256, jobs.sampling_from_dict(job["sampling"]),
        face_run["frames_analysed"] if face_run else [], face_run["detection_frames"] if face_run else [],
        tracks, outcomes, combined, timings, stored["face_run_id"])
    payload = result.to_json()
    payload["video"]["original_name"] = evidence["original_name"]
    return payload


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def job_status(store: Store, job: dict) -> dict:
    """A job's state and progress as JSON (who asked, stage, frame i of n, time left, how it ended)."""
    return {
        "id": job["id"], "state": job["state"], "asked_by": job["actor"], "sha256": job["sha256"],
        "case_id": job["case_id"], "detectors": job["detectors"], "sampling": job["sampling"],
        "ensemble_rule": job["ensemble_rule"], "stage": job["stage"], "done": job["done"], "total": job["total"],
        "fraction": jobs.fraction(job), "eta_s": jobs.eta_s(job), "queue_position": jobs.queue_position(store, job),
        "created_at": job["created_at"], "started_at": job["started_at"], "finished_at": job["finished_at"],
        "cancel_requested": bool(job["cancel_requested"]), "cancelled_by": job["cancelled_by"],
        "error": job["error"], "result_id": job["result_id"], "description": jobs.describe(job),
    }


def detector_rows() -> list[dict]:
    """Every registered detector with its card (`detectors.registry.describe_all`, as the CLI lists them)."""
    return describe_all()


# -- the app --------------------------------------------------------------------------------------
def _error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse(dict({"error": message}, **extra), status_code=status, headers=headers)


BEARER = re.compile(r"^Bearer ([A-Za-z0-9_\-.~+/]+=*)$")


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The API as an ASGI app (uvicorn serves it; tests drive it with TestClient)."""
    settings = settings or ApiSettings()
    store = Store(settings.db_path)
    limiter = RateLimiter(settings.rate_per_minute, settings.clock)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        store.close()

    app = FastAPI(
        lifespan=lifespan,
        title="Deepfake-video analyst workbench API", version="1",
        description="Submit evidence for analysis, follow the job, read its result (the `analyze --json` "
                    f"document), list detectors and download case reports. Caveat: {SCOPE_CAVEAT}",
        docs_url="/docs" if settings.docs else None, redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.store, app.state.settings, app.state.limiter = store, settings, limiter
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD_BYTES)

    @app.middleware("http")
    async def plain_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return _error(exc.status, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(400, f"bad request: {where}")

    @app.exception_handler(Exception)
    async def crashed(_request, exc: Exception):
        log.error("API request failed", exc_info=exc)
        return _error(500, "internal error; the server log has the details")

    def authenticate(request: Request) -> str:
        header = request.headers.get("authorization", "")
        match = BEARER.match(header)
        who = identity_of(store, match.group(1)) if match else None
        if who is None:
            raise ApiError(401, "a valid API token is required: Authorization: Bearer TOKEN",
                           {"WWW-Authenticate": "Bearer"})
        wait = limiter.take(token_sha256(match.group(1)))
        if wait is not None:
            raise ApiError(429, f"rate limit of {settings.rate_per_minute} requests a minute reached",
                           {"Retry-After": str(max(1, math.ceil(wait)))})
        return who

    @app.get("/health", summary="Is the API up (no token)")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/jobs", status_code=202, summary="Add evidence (upload or import-folder path) and queue its analysis",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                      "file": {"type": "string", "format": "binary"}, "case_id": {"type": "integer"},
                      "case": {"type": "string"}, "detector": {"type": "array", "items": {"type": "string"}},
                      "sample_fps": {"type": "number"}, "every_frame": {"type": "boolean"},
                      "detect_every": {"type": "integer"}, "track_rule": {"type": "string"},
                      "video_rule": {"type": "string"}, "min_frames": {"type": "integer"},
                      "ensemble": {"type": "string"}}}},
                  "application/json": {"schema": {"type": "object", "required": ["path"], "properties": {
                      "path": {"type": "string", "description": "relative to the import folder"},
                      "case_id": {"type": "integer"}, "case": {"type": "string"},
                      "detectors": {"type": "array", "items": {"type": "string"}},
                      "sampling": {"type": "object"}, "ensemble": {"type": "string"}}}}}}})
    async def submit_job(request: Request, who: str = Depends(authenticate)) -> dict:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            return await _submit_upload(request, who)
        if kind == "application/json":
            return await _submit_path(request, who)
        raise ApiError(415, "send multipart/form-data (a file upload) or application/json (an import-folder path)")

    async def _submit_upload(request: Request, who: str) -> dict:
        try:
            # Starlette spools each file part to a temporary file past 1 MB; BodyLimit stops at the limit.
            form = await request.form(max_files=1, max_fields=32)
        except _BodyTooLarge:
            raise
        except Exception as exc:
            raise ApiError(400, f"the upload could not be read as a form: {type(exc).__name__}") from None
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "the form needs a file field named 'file'")
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            req = parse_job_request(fields, form.getlist("detector"))
            name = display_name(upload.filename or "upload")
            return await run_in_threadpool(_ingest_and_submit, req, who, upload.file, name, None)
        finally:
            await form.close()

    async def _submit_path(request: Request, who: str) -> dict:
        try:
            body = await request.json()
        except _BodyTooLarge:
            raise
        except Exception:
            raise ApiError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        sampling = body.get("sampling") or {}
        if not isinstance(sampling, dict):
            raise ApiError(400, "sampling must be an object")
        detectors = body.get("detectors") or []
        if not isinstance(detectors, list):
            raise ApiError(400, "detectors must be a list of names")
        req = parse_job_request(dict(sampling, case_id=body.get("case_id"), case=body.get("case"),
                                     ensemble=body.get("ensemble")), detectors)
        path = import_path(settings.import_dir, body.get("path"))
        return await run_in_threadpool(_ingest_and_submit, req, who, None, path.name, path)

    def _case_for(req: JobRequest, who: str) -> int:
        if req.case_id is not None:
            try:
                return store.case(req.case_id)["id"]
            except StoreError:
                raise ApiError(404, f"no case with id {req.case_id}") from None
        matches = [c["id"] for c in store.cases() if c["name"] == req.case_name]
        try:
            return matches[0] if matches else store.create_case(req.case_name, actor=who)
        except StoreError as exc:
            raise ApiError(400, str(exc)) from None

    def _ingest_and_submit(req: JobRequest, who: str, upload, name: str, path: Path | None) -> dict:
        case_id = _case_for(req, who)
        try:
            if path is None:
                evidence = ingest(store, upload, name, settings.evidence_dir, who, case_id, settings.limits)
            else:
                evidence = _ingest_import(path, name, who, case_id)
        except EvidenceError as exc:
            raise ApiError(422, f"refused: {exc}") from None
        try:
            job_id = jobs.submit(store, evidence["sha256"], req.detectors, req.sampling, actor=who, case_id=case_id,
                                 ensemble_rule=req.ensemble_rule)
        except jobs.JobError as exc:
            raise ApiError(503, str(exc)) from None
        return {"job_id": job_id, "state": "queued", "case_id": case_id, "sha256": evidence["sha256"],
                "original_name": evidence["original_name"]}

    def _ingest_import(path: Path, name: str, who: str, case_id: int) -> dict:
        # Opened once, without following any symlink, and only under the import folder (as the app does).
        try:
            fd = open_in_folder(path, settings.import_dir)
        except EvidenceError as exc:
            store.audit(who, "evidence.refused", f"import:{name}", {"reason": str(exc)})
            raise ApiError(400, f"refused: {exc}") from None
        except FileNotFoundError:
            raise ApiError(404, "no such file in the import folder") from None
        except OSError as exc:
            raise ApiError(400, f"that path cannot be opened ({exc.strerror or type(exc).__name__})") from None
        with os.fdopen(fd, "rb") as src:
            return ingest(store, src, name, settings.evidence_dir, who, case_id, settings.limits)

    def _job(job_id: int) -> dict:
        try:
            return store.job(job_id)
        except StoreError:
            raise ApiError(404, f"no job with id {job_id}") from None

    @app.get("/jobs/{job_id}", summary="A job's state and progress")
    def get_job(job_id: int, who: str = Depends(authenticate)) -> dict:
        jobs.reap(store)  # a job whose worker died reads as failed, as in the app
        return job_status(store, _job(job_id))

    @app.post("/jobs/{job_id}/cancel", summary="Cancel a job (a running one stops at its next frame)")
    def cancel_job(job_id: int, who: str = Depends(authenticate)) -> dict:
        _job(job_id)
        return {"job_id": job_id, "state": jobs.cancel(store, job_id, who)}

    @app.get("/jobs/{job_id}/result", summary="A done job's result: the `analyze --json` document")
    def get_result(job_id: int, who: str = Depends(authenticate)) -> dict:
        jobs.reap(store)
        job = _job(job_id)
        if job["state"] != "done":
            why = f": {job['error']}" if job["state"] == "failed" and job["error"] else ""
            raise ApiError(409, f"job {job_id} is {job['state']}{why}; a result exists once it is done",
                           state=job["state"])
        return job_result(store, job)

    @app.get("/detectors", summary="Detectors, their versions, weights status and model cards")
    def detectors(who: str = Depends(authenticate)) -> dict:
        return {"detectors": detector_rows(), "caveat": SCOPE_CAVEAT}

    @app.get("/cases/{case_id}/report", summary="The case's self-contained HTML report, as a download",
             response_class=Response, responses={200: {"content": {"text/html": {}}}})
    def report(case_id: int, heatmaps: bool = True, who: str = Depends(authenticate)) -> Response:
        try:
            store.case(case_id)
        except StoreError:
            raise ApiError(404, f"no case with id {case_id}") from None
        html = case_report(store, case_id, actor=who, with_heatmaps=heatmaps)
        # A download, never a page of this origin: sandboxed, and never sniffed as something else.
        return Response(html.encode("utf-8"), media_type="text/html; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="case-{case_id}-report.html"',
            "Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"})

    return app


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, settings: ApiSettings | None = None) -> None:
    """Run the API with uvicorn until Ctrl-C (docs only on a loopback address; see `ApiSettings.docs`)."""
    import uvicorn  # lazy: only `serve --api` runs a server

    settings = settings or ApiSettings()
    settings.docs = settings.docs and is_loopback(host)
    uvicorn.run(create_app(settings), host=host, port=port, server_header=False, date_header=False,
                log_level="info", access_log=True)
