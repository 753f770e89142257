"""Run untrusted decoding in a forked child: crash, hang, memory, descriptor and privilege isolation.

A decoder that crashes (SIGSEGV), hangs, stops making progress, or allocates without bound takes
down only the child; the caller gets a `SandboxError` with a plain-words reason, or the child's
own `VideoError`. `run_isolated` returns one result (ingest's probe and packet scan);
`stream_isolated` streams a generator's arrays back through shared memory, and
`isolated_frames` is the analysis' one decode of a video on it: the models stay in the caller,
only the decoder touches the file's bytes, and only inside the child.

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
import mmap
import os
import resource
import signal
import stat
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from multiprocessing.connection import Pipe, wait

import numpy as np
from typing import Generator, Iterable, Iterator

from workbench.video import DEFAULT_LIMITS, Limits, VideoError, VideoInfo, decode_checked, probe

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


def _send_items(conn, back, items, ring: mmap.mmap, item_bytes: int, slots: int):
    """Stream (meta, array) items through the shared ring: each into a free slot, then its number.

    The parent hands each slot back once it has copied the array out, so the child waits here
    when the parent is busy (that wait is not a stall). Returns the generator's return value.
    """
    free = list(range(slots))
    while True:
        try:
            meta, array = next(items)
        except StopIteration as stop:
            return stop.value
        array = np.ascontiguousarray(array)
        if array.nbytes > item_bytes:
            raise ValueError(f"an item of {array.nbytes:,} bytes does not fit the {item_bytes:,}-byte slots")
        while back.poll() or not free:
            free.append(back.recv())  # EOFError when the parent stopped reading: the child ends
        slot = free.pop()
        view = np.frombuffer(ring, np.uint8, array.nbytes, slot * item_bytes)
        view[:] = array.reshape(-1).view(np.uint8)
        del view
        conn.send(("item", meta, slot, array.shape, array.dtype.str))


def _child(conn, fn, args, kwargs, memory_mb: int, cpu_s: int, keep_fds: tuple[int, ...],
           drop: tuple[int, int] | None, ring=None) -> None:
    global _progress_conn, _progress_last
    gc.freeze()
    faulthandler.disable()  # a crash is reported by the parent, not as a Python stack dump
    try:
        back = ring[0] if ring is not None else None
        _confine(_LIBC, {conn.fileno(), *keep_fds, *([back.fileno()] if back is not None else [])}, drop)
        if memory_mb:
            limit = _vm_size_bytes() + memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # A backstop only (the parent's timer is the real limit): CPU time counts every thread.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _progress_conn, _progress_last = conn, 0.0  # the first frame is always reported
        result = fn(*args, **kwargs)
        if ring is not None:
            result = _send_items(conn, back, result, *ring[1:])
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
def _start(fn, args, kwargs, memory_mb: int, cpu_s: int, keep_fds: tuple[int, ...], ring=None):
    """Fork the confined child that runs `fn`; returns (its pid, the end of the result pipe)."""
    # Looked up here, not in the child: a user lookup may take locks another thread holds.
    drop = (sandbox_uid(), _sandbox_gid()) if drops_privileges() else None
    recv, send = Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller's stack
        code = 1
        try:
            _child(send, fn, args, kwargs, memory_mb, cpu_s, tuple(keep_fds), drop, ring)
            code = 0
        finally:
            os._exit(code)
    send.close()
    return pid, recv


def _cpu_limit_s(timeout_s: float) -> int:
    return int(math.ceil(timeout_s * max(1, os.cpu_count() or 1))) + 10


class _Watch:
    """The parent's side of one child: waits for its messages under the wall-clock and stall limits.

    Only the time the parent spends waiting counts: while a streaming caller is busy with an
    item, the child may be blocked on a full ring, and that is not the decoder's time.
    """

    def __init__(self, pid: int, recv, timeout_s: float, stall_s: float | None):
        self.pid, self.recv, self.timeout_s, self.stall_s = pid, recv, timeout_s, stall_s
        self.waited = 0.0
        self.done: int | None = None

    def next_message(self):
        """The child's next message other than progress, or None when it is gone without one.

        Raises:
            SandboxError: over the wall-clock limit ('timeout') or no progress ('stalled').
        """
        start = last_progress = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if self.waited + (now - start) >= self.timeout_s:
                    raise SandboxError(f"decoding took longer than {self.timeout_s:g} s and was stopped", "timeout")
                if self.stall_s is not None and now - last_progress >= self.stall_s:
                    after = "before the first frame" if self.done is None else f"after {self.done:,} frames"
                    raise SandboxError(f"no decoding progress for {self.stall_s:g} s ({after}); the decoder was "
                                       "stopped", "stalled")
                left = self.timeout_s - self.waited - (now - start)
                if self.stall_s is not None:
                    left = min(left, self.stall_s - (now - last_progress))
                if not wait([self.recv], timeout=max(left, 0.0)):
                    continue
                try:
                    received = self.recv.recv()
                except (EOFError, OSError):
                    return None  # the child is gone without a result; judged by its exit status
                if received[0] == "progress":
                    self.done, last_progress = received[1], time.monotonic()
                else:
                    return received
        finally:
            self.waited += time.monotonic() - start

    def end(self, finished: bool) -> int:
        """Kill the child unless it `finished` (sent its result), reap it, close the pipe; its exit code."""
        if not finished:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(self.pid, 0)
        self.recv.close()
        return os.waitstatus_to_exitcode(status)


def _outcome(message, code: int, memory_mb: int):
    """The child's result, or the error its message or exit code stands for."""
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
    pid, recv = _start(fn, args, kwargs, memory_mb, _cpu_limit_s(timeout_s), keep_fds)
    watch, message = _Watch(pid, recv, timeout_s, stall_s), None
    try:
        message = watch.next_message()
    finally:
        code = watch.end(finished=message is not None)
    return _outcome(message, code, memory_mb)


# The ring of shared memory a streaming child writes items into holds about this many bytes
# (at least 2 and at most RING_SLOTS items): enough for the child to decode ahead of the caller.
RING_BYTES = 64 * 1024**2
RING_SLOTS = 8


def stream_isolated(fn, *args, item_bytes: int, timeout_s: float | None = None, memory_mb: int | None = None,
                    stall_s: float | None = None, keep_fds: tuple[int, ...] = (),
                    **kwargs) -> Generator[tuple[object, np.ndarray], None, object]:
    """Run the generator `fn(*args, **kwargs)` in a forked, confined child; yield what it yields.

    The child yields (meta, numpy array) pairs; each array travels through a ring of shared
    memory (slots of `item_bytes`, mapped before the fork, so no descriptor is involved) and
    its (picklable) meta and slot number through the result pipe; the caller gets a copy. The
    child is confined as in `run_isolated`; `timeout_s` and `stall_s` count only the time this
    side spends waiting for the next item, not the time the caller spends on each. Closing the
    generator (or an exception in the caller) kills and reaps the child.

    Returns (as the generator's return value):
        What `fn`'s generator returned.

    Raises:
        VideoError, SandboxError: as `run_isolated`, at the item where it happened.
    """
    timeout_s = default_timeout_s() if timeout_s is None else float(timeout_s)
    memory_mb = default_memory_mb() if memory_mb is None else int(memory_mb)
    item_bytes = max(1, int(item_bytes))
    slots = max(2, min(RING_SLOTS, RING_BYTES // item_bytes))
    ring = mmap.mmap(-1, slots * item_bytes)  # MAP_SHARED | MAP_ANONYMOUS: the child writes, we read
    back_recv, back_send = Pipe(duplex=False)
    try:
        pid, recv = _start(fn, args, kwargs, memory_mb, _cpu_limit_s(timeout_s), keep_fds,
                           ring=(back_recv, ring, item_bytes, slots))
    except BaseException:
        back_send.close()
        ring.close()
        raise
    finally:
        back_recv.close()
    watch, message = _Watch(pid, recv, timeout_s, stall_s), None
    try:
        while True:
            received = watch.next_message()
            if received is None or received[0] != "item":
                message = received
                break
            _, meta, slot, shape, dtype = received
            count = math.prod(shape)
            array = np.frombuffer(ring, np.dtype(dtype), count, slot * item_bytes).reshape(shape).copy()
            try:
                back_send.send(slot)
            except OSError:
                pass  # the child is gone; its exit status tells why at the next message
            yield meta, array
    finally:
        code = watch.end(finished=message is not None)
        back_send.close()
        ring.close()
    return _outcome(message, code, memory_mb)


# -- the analysis' decoder ----------------------------------------------------------------------
# The full-decode timeout grows with the work: WORKBENCH_DECODE_TIMEOUT_S plus the video's
# pixels at this (deliberately slow) decoding rate, WORKBENCH_DECODE_MIN_MPX_PER_S ...
DEFAULT_MIN_MPX_PER_S = 10.0
# ... but those pixels come from the file's own header, so the timeout is capped by a value a
# file cannot raise: WORKBENCH_DECODE_MAX_S, by default WORKBENCH_DECODE_TIMEOUT_S plus this
# many times the configured longest duration (decoding at half real-time speed still passes).
DECODE_MAX_FACTOR = 2.0


def decode_max_s(limits: Limits = DEFAULT_LIMITS) -> float:
    """The longest a full decode may run, from the configured limits only (never the file).

    WORKBENCH_DECODE_MAX_S if set, else WORKBENCH_DECODE_TIMEOUT_S + DECODE_MAX_FACTOR (2) ×
    limits.max_duration_s: 6 h 2 min with the default 3 h limit.
    """
    configured = os.environ.get("WORKBENCH_DECODE_MAX_S")
    if configured:
        return float(configured)
    return default_timeout_s() + DECODE_MAX_FACTOR * limits.max_duration_s


def decode_timeout_s(info: VideoInfo, limits: Limits = DEFAULT_LIMITS) -> float:
    """Wall-clock limit for decoding this video: grows with its pixels, capped by `decode_max_s`."""
    rate = float(os.environ.get("WORKBENCH_DECODE_MIN_MPX_PER_S", DEFAULT_MIN_MPX_PER_S)) * 1e6
    return min(default_timeout_s() + info.frames * info.width * info.height / rate, decode_max_s(limits))


@contextmanager
def _lent(path: str | os.PathLike) -> Iterator[SharedFile]:
    """`shared_file`, with a file that cannot be opened refused as a VideoError."""
    with ExitStack() as stack:
        try:
            shared = stack.enter_context(shared_file(path))
        except OSError as exc:
            raise VideoError(f"the file cannot be opened ({exc.strerror or type(exc).__name__})") from exc
        yield shared


def probe_isolated(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> VideoInfo:
    """`video.probe` in a sandboxed child (it demuxes the file and decodes its first frame).

    Raises:
        VideoError: refused by the probe, or the child crashed, hung or ran out of memory.
    """
    with _lent(path) as shared:
        try:
            info = run_isolated(probe, shared.path, limits, keep_fds=(shared.fd,))
        except SandboxError as exc:
            raise VideoError(str(exc)) from exc
    return replace(info, path=os.fspath(path))


def isolated_frames(path: str | os.PathLike, info: VideoInfo, wanted: Iterable[int] | None = None,
                    limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[int, np.ndarray]]:
    """The analysis' one decode: `video.decode_checked` in a sandboxed child, frames streamed back.

    Every frame is decoded once, inside the sandbox (the confinement of `run_isolated`), and
    checked there (decodes, keeps its size, the count matches the index); the wanted frames come
    back as RGB through shared memory. The decode is stopped after WORKBENCH_DECODE_STALL_S
    without progress while this side waits, and when the time waited passes `decode_timeout_s`.

    Yields:
        (frame number, RGB uint8 array), in order, for the wanted frames (all when None).

    Raises:
        VideoError: the file failed the decode's checks, or the decoder crashed, hung, stalled or
            ran out of memory (the message says which); raised where it happened, so the frames
            before it may already have been yielded.
    """
    wanted_frames = None if wanted is None else sorted(set(wanted))
    with _lent(path) as shared:
        try:
            yield from stream_isolated(decode_checked, shared.path, info, wanted_frames, on_decoded=report_progress,
                                       item_bytes=info.width * info.height * 3, timeout_s=decode_timeout_s(info, limits),
                                       stall_s=default_stall_s(), keep_fds=(shared.fd,))
        except SandboxError as exc:
            raise VideoError(str(exc)) from exc
