"""The decode sandbox's confinement: descriptors, privileges, network, file writes, progress limits."""
from __future__ import annotations

import os
import socket
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from workbench import sandbox
from workbench.sandbox import SandboxError, report_progress, run_isolated, shared_file
from workbench.video import VideoError
from helpers import child_pids

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox only changes user and network namespace "
                                                          "when the app runs as root; not root here")


def _open_fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the descriptor listdir itself used
    return out


def _status(key: str) -> str:
    with open("/proc/self/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":"))


def _identity() -> dict:
    return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
            "no_new_privs": _status("NoNewPrivs")}


def _connect(port: int) -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        return "connected"
    except OSError as exc:
        return f"refused: {exc}"
    finally:
        s.close()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str) -> str:
    with open(path, "wb") as f:
        f.write(b"x" * 10)
    return "written"


def test_child_closes_every_inherited_descriptor(tmp_path):
    db = sqlite3.connect(tmp_path / "cases.db")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    evidence = open(tmp_path / "other-evidence.bin", "wb")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        parent = _open_fds()
        assert any(p.endswith("cases.db") for p in parent.values())  # the parent does hold them
        child = run_isolated(_open_fds, timeout_s=20)
    finally:
        db.close()
        evidence.close()
        listener.close()
    leaked = [p for p in child.values() if "cases.db" in p or "other-evidence" in p or p.startswith("socket:")]
    assert not leaked, child
    assert set(child) <= {0, 1, 2} | {fd for fd, p in child.items() if p.startswith("pipe:")}
    assert child[0] == "/dev/null"
    assert sum(p.startswith("pipe:") for fd, p in child.items() if fd > 2) == 1  # only the result pipe


def test_child_has_no_new_privileges_and_cannot_write_files():
    assert run_isolated(_identity, timeout_s=20)["no_new_privs"] == "1"
    # /tmp is writable by every user, so only RLIMIT_FSIZE (not the dropped user) stops the write.
    target = Path("/tmp") / f"workbench-sandbox-write-{os.getpid()}"
    try:
        with pytest.raises(SandboxError, match="File too large") as err:
            run_isolated(_write, str(target), timeout_s=20)
        assert err.value.reason == "error"
        assert not target.exists() or target.stat().st_size == 0
    finally:
        target.unlink(missing_ok=True)


@needs_root
def test_as_root_the_child_is_nobody_without_network():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        assert _connect(port) == "connected"  # the parent can
        who = run_isolated(_identity, timeout_s=20)
        verdict = run_isolated(_connect, port, timeout_s=20)
    finally:
        listener.close()
    assert who["uid"] == who["euid"] == sandbox.sandbox_uid() != 0
    assert who["groups"] == [] and who["gid"] != 0
    assert verdict.startswith("refused:"), verdict
    with pytest.raises(SandboxError, match="Permission denied"):
        run_isolated(_read, "/etc/shadow", timeout_s=20)


def test_shared_file_is_readable_in_the_child_and_restored_after(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    evidence = private / "clip.part"
    evidence.write_bytes(b"evidence bytes")
    os.chmod(evidence, 0o600)
    before = evidence.stat()
    with shared_file(evidence) as shared:
        assert run_isolated(_read, shared.path, keep_fds=(shared.fd,), timeout_s=20) == b"evidence bytes"
        if os.geteuid() == 0:  # the child cannot reach it by its name: the folder is private to root
            with pytest.raises(SandboxError, match="Permission denied"):
                run_isolated(_read, str(evidence), timeout_s=20)
    after = evidence.stat()
    assert (stat.S_IMODE(after.st_mode), after.st_gid) == (stat.S_IMODE(before.st_mode), before.st_gid)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(VideoError, match="not a regular file"):
        with shared_file(fifo):
            pass
    (tmp_path / "link").symlink_to(evidence)
    with pytest.raises(OSError):
        with shared_file(tmp_path / "link"):
            pass


def _progress_then_hang(frames: int) -> None:
    for n in range(1, frames + 1):
        report_progress(n)
        time.sleep(sandbox.PROGRESS_EVERY_S + 0.01)
    time.sleep(600)


def _steady_progress(seconds: float) -> str:
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        n += 1
        report_progress(n)
        time.sleep(0.05)
    return "done"


def test_no_progress_stops_the_child_whatever_its_timeout():
    before = child_pids()
    t0 = time.monotonic()
    with pytest.raises(SandboxError, match=r"no decoding progress for 1 s \(after 3 frames\)") as err:
        run_isolated(_progress_then_hang, 3, timeout_s=3600, stall_s=1)
    took = time.monotonic() - t0
    assert err.value.reason == "stalled"
    assert time.monotonic() - t0 < 300  # only catches a real hang
    assert child_pids() == before  # killed and reaped
    print(f"stalled child stopped after {took:.2f} s (stall limit 1 s, timeout 3600 s)")
    with pytest.raises(SandboxError, match="before the first frame"):
        run_isolated(time.sleep, 600, timeout_s=3600, stall_s=1)


def test_progress_keeps_a_slow_child_alive_but_not_past_its_timeout():
    # Progress every 0.05 s for 2.5 s: longer than the 1 s stall limit in total, never stalled.
    assert run_isolated(_steady_progress, 2.5, timeout_s=120, stall_s=1) == "done"
    with pytest.raises(SandboxError, match="longer than 1.5 s") as err:
        run_isolated(_steady_progress, 600, timeout_s=1.5, stall_s=1)
    assert err.value.reason == "timeout"
