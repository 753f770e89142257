"""Run untrusted decoding in a forked child: crash, hang, memory, descriptor and privilege isolation.

A decoder that crashes (SIGSEGV), hangs, stops making progress, or allocates without bound takes
down only the child; the caller gets a `SandboxError` with a plain-words reason, or the child's
own `VideoError`.

>>> from workbench.sandbox import run_isolated
>>> run_isolated(pow, 2, 10, timeout_s=5)
1024

Limits (defaults from the environment, read at each call; none comes from the file):
    WORKBENCH_DECODE_TIMEOUT_S   wall-clock seconds per call (default 120)
    WORKBENCH_DECODE_STALL_S     seconds without progress before a call that reports progress
                                 (`report_progress`) is stopped (default 30)
    WORKBENCH_DECODE_MEMORY_MB   address space the child may add to what it inherits (default 3072)
    WORKBENCH_SANDBOX_UID        the user the child becomes when the app runs as root (default 65534)

What the child is isolated from, exactly:
    * crashes, hangs and memory: it is a separate process (fork), killed at the wall-clock limit or
      after WORKBENCH_DECODE_STALL_S without progress, with RLIMIT_AS (inherited address space +
      WORKBENCH_DECODE_MEMORY_MB), RLIMIT_CPU (timeout × CPU count + 10 s), RLIMIT_FSIZE 0 (it
      cannot grow or write any file), RLIMIT_CORE 0, and PR_SET_PDEATHSIG (it dies with the parent).
    * descriptors: every descriptor it inherited is closed except stdin (made /dev/null),
      stdout/stderr (the server's log), the result pipe and the descriptors the caller passes in
      `keep_fds` (the one evidence file being checked). Database connections, sockets, other
      evidence files and uploads are not reachable through it.
    * privileges: PR_SET_NO_NEW_PRIVS is set (no setuid binary or file capability can raise them).
      When the app runs as root the child also gets its own empty network namespace (no
      interfaces, not even loopback: any connect fails) and then becomes WORKBENCH_SANDBOX_UID
      (nobody) with that user's group and no supplementary groups; the evidence file stays
      readable only through the descriptor passed in (`shared_file`).
    What it is NOT isolated from, said plainly: when the app does not run as root, the child
    keeps the app's user, so it can read and write whatever that user can through paths
    (RLIMIT_FSIZE 0 only stops it writing data to files) and it can open network connections;
    there is no seccomp filter and no filesystem namespace; the child's memory starts as a copy
    of the app's (fork), so anything the app holds in memory (not on a descriptor) is visible to
    a compromised decoder, which can only send it back to the app itself through the result pipe.

Fork with threads: only the forking thread exists in the child, so a lock another thread held at
that moment stays held there. The child therefore does only simple work before `fn`: it freezes
the garbage collector (objects inherited from the parent are never finalised in the child, so no
finaliser closes a descriptor number that was since reused), closes descriptors by number, and
exits with os._exit, never returning into the caller's stack.
"""
from __future__ import annotations

import ctypes
import faulthandler
import gc
import math
import os
import resource
import signal
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Pipe, wait
from typing import Iterator

from workbench.video import VideoError

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_STALL_S = 30.0
DEFAULT_MEMORY_MB = 3072
DEFAULT_SANDBOX_UID = 65534  # nobody
# The child reports progress at most this often, so a fast decode does not flood the pipe.
PROGRESS_EVERY_S = 0.25

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWNET = 0x40000000

# Loaded once here: dlopen in a child forked from a threaded app could wait on a loader lock
# that another thread held at the fork.
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


class SandboxError(Exception):
    """The isolated call did not return a result. `reason` is one of:

    'timeout' (over the wall-clock or CPU limit), 'stalled' (no progress within the stall limit),
    'crash' (killed by a signal), 'memory' (out of memory) or 'error' (it raised).
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def default_timeout_s() -> float:
    return float(os.environ.get("WORKBENCH_DECODE_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def default_stall_s() -> float:
    return float(os.environ.get("WORKBENCH_DECODE_STALL_S", DEFAULT_STALL_S))


def default_memory_mb() -> int:
    return int(os.environ.get("WORKBENCH_DECODE_MEMORY_MB", DEFAULT_MEMORY_MB))


def sandbox_uid() -> int:
    return int(os.environ.get("WORKBENCH_SANDBOX_UID", DEFAULT_SANDBOX_UID))


def drops_privileges() -> bool:
    """True when the child changes user and network namespace (the app runs as root)."""
    return os.geteuid() == 0


def _sandbox_gid() -> int:
    import pwd

    try:
        return pwd.getpwuid(sandbox_uid()).pw_gid
    except KeyError:
        return sandbox_uid()


# -- progress, reported from inside the child ---------------------------------------------------
_progress_conn = None
_progress_last = 0.0


def report_progress(done: int) -> None:
    """Tell the parent that the work advanced (e.g. `done` frames decoded).

    Cheap enough to call per frame: at most one message per PROGRESS_EVERY_S. Outside a
    sandboxed child it does nothing.
    """
    global _progress_last
    if _progress_conn is None:
        return
    now = time.monotonic()
    if now - _progress_last >= PROGRESS_EVERY_S:
        _progress_last = now
        _progress_conn.send(("progress", done))


# -- a file the child may read -----------------------------------------------------------------
@dataclass(frozen=True)
class SharedFile:
    """An open evidence file for a sandboxed child: open it by `path`, keep `fd` open (`keep_fds`)."""

    path: str
    fd: int


@contextmanager
def shared_file(path: str | os.PathLike) -> Iterator[SharedFile]:
    """Open a regular file once (no symlink, no FIFO) and lend it to sandboxed children.

    The child reads it as `/proc/self/fd/N` through the descriptor opened here, so it needs no
    access to the file's folders. When the child will run as another user (the app is root),
    the file's group is lent to that user's group, read-only, for the duration; mode and group
    are restored on exit.

    Raises:
        VideoError: not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise VideoError("not a regular file")
        lent = drops_privileges()
        if lent:
            os.fchown(fd, -1, _sandbox_gid())
            os.fchmod(fd, stat.S_IRUSR | stat.S_IRGRP)
        try:
            yield SharedFile(f"/proc/self/fd/{fd}", fd)
        finally:
            if lent:
                os.fchown(fd, -1, st.st_gid)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)


# -- the child ----------------------------------------------------------------------------------
def _vm_size_bytes() -> int:
    """This process's current address-space size (VmSize), 0 if unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _close_inherited(keep: set[int]) -> None:
    """Close every descriptor from 3 up except those in `keep`."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max(os.sysconf("SC_OPEN_MAX"), low + 1))


def _confine(libc, keep: set[int], drop: tuple[int, int] | None) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _close_inherited(keep)
    if libc is not None:
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if drop is not None:
        if libc is None or libc.unshare(_CLONE_NEWNET) != 0:
            raise OSError(f"could not give the decoder its own network namespace ({os.strerror(ctypes.get_errno())})")
        uid, gid = drop
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if libc is not None:
        # Changing credentials clears the parent-death signal, so it is set after.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child(conn, fn, args, kwargs, memory_mb: int, cpu_s: int, keep_fds: tuple[int, ...],
           drop: tuple[int, int] | None) -> None:
    global _progress_conn, _progress_last
    gc.freeze()
    faulthandler.disable()  # a crash is reported by the parent, not as a Python stack dump
    try:
        _confine(_LIBC, {conn.fileno(), *keep_fds}, drop)
        if memory_mb:
            limit = _vm_size_bytes() + memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # A backstop only (the parent's timer is the real limit): CPU time counts every thread.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _progress_conn, _progress_last = conn, 0.0  # the first frame is always reported
        result = fn(*args, **kwargs)
        message = ("ok", result)
    except VideoError as exc:
        message = ("video", str(exc))
    except MemoryError as exc:
        message = ("memory", str(exc) or "MemoryError")
    except BaseException as exc:  # noqa: BLE001 - the child reports everything, then exits
        message = ("error", f"{type(exc).__name__}: {exc}")
    _progress_conn = None
    try:
        conn.send(message)
    except Exception as exc:  # an unpicklable result
        conn.send(("error", f"the result could not be sent back ({type(exc).__name__}: {exc})"))
    conn.close()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# -- the parent ---------------------------------------------------------------------------------
def run_isolated(fn, *args, timeout_s: float | None = None, memory_mb: int | None = None,
                 stall_s: float | None = None, keep_fds: tuple[int, ...] = (), **kwargs):
    """Call `fn(*args, **kwargs)` in a forked, confined child and return its (picklable) result.

    Args:
        fn: any callable; it runs in the child, its result comes back pickled.
        timeout_s: wall-clock limit; default WORKBENCH_DECODE_TIMEOUT_S (120 s).
        memory_mb: address space the child may add to what it inherited from this process;
            default WORKBENCH_DECODE_MEMORY_MB (3072). 0 disables the limit.
        stall_s: when given, `fn` must call `report_progress` and is stopped when no progress
            arrives for this long (the first report is due stall_s after the start).
        keep_fds: descriptors the child keeps open (all others are closed), e.g. SharedFile.fd.

    Raises:
        VideoError: the child raised VideoError (same message).
        SandboxError: the child timed out or stalled (it is killed and reaped), was killed by a
            signal (a decoder crash, or the kernel's OOM killer), ran out of memory, or raised
            anything else; `.reason` says which.
    """
    timeout_s = default_timeout_s() if timeout_s is None else float(timeout_s)
    memory_mb = default_memory_mb() if memory_mb is None else int(memory_mb)
    cpu_s = int(math.ceil(timeout_s * max(1, os.cpu_count() or 1))) + 10
    # Looked up here, not in the child: a user lookup may take locks another thread holds.
    drop = (sandbox_uid(), _sandbox_gid()) if drops_privileges() else None
    recv, send = Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller's stack
        code = 1
        try:
            _child(send, fn, args, kwargs, memory_mb, cpu_s, tuple(keep_fds), drop)
            code = 0
        finally:
            os._exit(code)
    send.close()
    message, status, done = None, None, None
    start = time.monotonic()
    last_progress = start
    try:
        while message is None:
            now = time.monotonic()
            if now - start >= timeout_s:
                raise SandboxError(f"decoding took longer than {timeout_s:g} s and was stopped", "timeout")
            if stall_s is not None and now - last_progress >= stall_s:
                after = "before the first frame" if done is None else f"after {done:,} frames"
                raise SandboxError(f"no decoding progress for {stall_s:g} s ({after}); the decoder was stopped",
                                   "stalled")
            left = timeout_s - (now - start)
            if stall_s is not None:
                left = min(left, stall_s - (now - last_progress))
            if not wait([recv], timeout=max(left, 0.0)):
                continue
            try:
                received = recv.recv()
            except (EOFError, OSError):
                break  # the child is gone without a result; judged by its exit status below
            if received[0] == "progress":
                done, last_progress = received[1], time.monotonic()
            else:
                message = received
    finally:
        if message is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
        recv.close()
    code = os.waitstatus_to_exitcode(status)
    if message is not None:
        kind, value = message
        if kind == "ok":
            return value
        if kind == "video":
            raise VideoError(value)
        if kind == "memory":
            raise SandboxError(f"decoding ran out of memory (limit {memory_mb} MB): {value}", "memory")
        raise SandboxError(f"decoding failed: {value}", "error")
    if code < 0:
        signum = -code
        if signum == signal.SIGKILL:
            raise SandboxError(f"the decoder was killed (signal {signum}, SIGKILL; likely out of memory)", "memory")
        if signum == signal.SIGXCPU:
            raise SandboxError(f"the decoder used too much CPU time (signal {signum}, SIGXCPU)", "timeout")
        raise SandboxError(f"the decoder crashed (signal {signum}, {_signal_name(signum)})", "crash")
    raise SandboxError(f"the decoder exited without a result (exit status {code})", "crash")
