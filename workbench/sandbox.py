"""Run untrusted decoding in a child process, under a wall-clock timeout and a memory limit.

A decoder that crashes (SIGSEGV), hangs, or allocates without bound takes down only the child;
the caller gets a `SandboxError` with a plain-words reason, or the child's own `VideoError`.

>>> from workbench.sandbox import run_isolated
>>> run_isolated(pow, 2, 10, timeout_s=5)
1024

Limits (defaults from the environment, read at each call):
    WORKBENCH_DECODE_TIMEOUT_S   wall-clock seconds per call (default 120)
    WORKBENCH_DECODE_MEMORY_MB   address space the child may add to what it inherits (default 3072)

The child is forked (Linux): it starts in milliseconds and needs nothing re-imported. It gets
RLIMIT_AS = inherited address space + memory_mb, an RLIMIT_CPU backstop, and dies with its
parent (PR_SET_PDEATHSIG). Only the result (or the error message) is pickled back; the
function and its arguments reach the child through fork.
"""
from __future__ import annotations

import ctypes
import faulthandler
import math
import multiprocessing
import os
import resource
import signal
from multiprocessing.connection import wait

from workbench.video import VideoError

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MEMORY_MB = 3072


class SandboxError(Exception):
    """The isolated call did not return a result. `reason` is one of:

    'timeout', 'crash' (killed by a signal), 'memory' (out of memory) or 'error' (it raised).
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def default_timeout_s() -> float:
    return float(os.environ.get("WORKBENCH_DECODE_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def default_memory_mb() -> int:
    return int(os.environ.get("WORKBENCH_DECODE_MEMORY_MB", DEFAULT_MEMORY_MB))


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


def _child(conn, fn, args, kwargs, memory_mb: int | None, cpu_s: int) -> None:
    faulthandler.disable()  # a crash is reported by the parent, not as a Python stack dump
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the parent
    except (OSError, AttributeError):
        pass
    try:
        if memory_mb:
            limit = _vm_size_bytes() + memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if cpu_s:
            # A backstop only (the parent's timer is the real limit): CPU time counts every thread.
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        result = fn(*args, **kwargs)
        message = ("ok", result)
    except VideoError as exc:
        message = ("video", str(exc))
    except MemoryError as exc:
        message = ("memory", str(exc) or "MemoryError")
    except BaseException as exc:  # noqa: BLE001 - the child reports everything, then exits
        message = ("error", f"{type(exc).__name__}: {exc}")
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


def run_isolated(fn, *args, timeout_s: float | None = None, memory_mb: int | None = None, **kwargs):
    """Call `fn(*args, **kwargs)` in a forked child and return its (picklable) result.

    Args:
        fn: any callable; it runs in the child, its result comes back pickled.
        timeout_s: wall-clock limit; default WORKBENCH_DECODE_TIMEOUT_S (120 s).
        memory_mb: address space the child may add to what it inherited from this process;
            default WORKBENCH_DECODE_MEMORY_MB (3072). 0 disables the limit.

    Raises:
        VideoError: the child raised VideoError (same message).
        SandboxError: the child timed out (it is killed and reaped), was killed by a signal
            (a decoder crash, or the kernel's OOM killer), ran out of memory, or raised anything
            else; `.reason` says which.
    """
    timeout_s = default_timeout_s() if timeout_s is None else float(timeout_s)
    memory_mb = default_memory_mb() if memory_mb is None else int(memory_mb)
    cpu_s = int(math.ceil(timeout_s * max(1, os.cpu_count() or 1))) + 10
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs, memory_mb, cpu_s), daemon=True)
    proc.start()
    send.close()
    message = None
    try:
        if not wait([recv, proc.sentinel], timeout=timeout_s):
            raise SandboxError(f"decoding took longer than {timeout_s:g} s and was stopped", "timeout")
        if recv.poll(0):
            try:
                message = recv.recv()
            except (EOFError, OSError):
                message = None  # died mid-way; judged by its exit status below
        proc.join(timeout=5)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        recv.close()
    code = proc.exitcode
    proc.close()
    if message is not None:
        kind, value = message
        if kind == "ok":
            return value
        if kind == "video":
            raise VideoError(value)
        if kind == "memory":
            raise SandboxError(f"decoding ran out of memory (limit {memory_mb} MB): {value}", "memory")
        raise SandboxError(f"decoding failed: {value}", "error")
    if code is not None and code < 0:
        signum = -code
        if signum == signal.SIGKILL:
            raise SandboxError(f"the decoder was killed (signal {signum}, SIGKILL; likely out of memory)", "memory")
        if signum == signal.SIGXCPU:
            raise SandboxError(f"the decoder used too much CPU time (signal {signum}, SIGXCPU)", "timeout")
        raise SandboxError(f"the decoder crashed (signal {signum}, {_signal_name(signum)})", "crash")
    raise SandboxError(f"the decoder exited without a result (exit status {code})", "crash")
