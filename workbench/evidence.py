"""Evidence custody: files hashed while they stream in, stored read-only under their sha256."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import BinaryIO

from detectors.weights import sha256_file
from workbench.sandbox import (
    SandboxError, decode_max_s, default_stall_s, default_timeout_s, report_progress, run_isolated, shared_file,
)
from workbench.store import Store
from workbench.video import DEFAULT_LIMITS, Limits, PacketScan, VideoError, VideoInfo, inspect

MAX_NAME_CHARS = 255
# The packet scan reads the whole file; its wall-clock limit grows with the file's real size
# (not a header claim) at this deliberately slow rate, on top of WORKBENCH_DECODE_TIMEOUT_S.
DEFAULT_MIN_SCAN_MB_PER_S = 20.0
# Evidence files and their folders are private to the app's user, whatever the umask.
FILE_MODE = 0o400
DIR_MODE = 0o700


class EvidenceError(Exception):
    """Evidence that was refused or no longer matches its hash."""


def display_name(original: str) -> str:
    """A client-supplied file name made safe to keep as metadata (never used as a path)."""
    cleaned = "".join(ch if unicodedata.category(ch)[0] != "C" else "\N{REPLACEMENT CHARACTER}" for ch in original)
    return cleaned[:MAX_NAME_CHARS] or "(unnamed)"


def stored_path(evidence_dir: Path, sha256: str) -> Path:
    return Path(evidence_dir) / sha256[:2] / sha256


def inspect_timeout_s(size_bytes: int, limits: Limits = DEFAULT_LIMITS) -> float:
    """Wall-clock limit for `video.inspect` of a file this size: WORKBENCH_DECODE_TIMEOUT_S plus
    its bytes at WORKBENCH_SCAN_MIN_MB_PER_S (20 MB/s), capped by `decode_max_s`."""
    rate = float(os.environ.get("WORKBENCH_SCAN_MIN_MB_PER_S", DEFAULT_MIN_SCAN_MB_PER_S)) * 1e6
    return min(default_timeout_s() + size_bytes / rate, decode_max_s(limits))


def validate(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> tuple[VideoInfo, PacketScan]:
    """Probe under limits and scan every packet (`video.inspect`), in a sandboxed child process.

    No frame is decoded beyond the first (the probe's); the full decode, with its checks, is
    the analysis' own (`sandbox.isolated_frames`). The file is opened once (no symlink, regular
    files only) and the child reads it through that descriptor, under `inspect_timeout_s`
    (from the file's real size), WORKBENCH_DECODE_STALL_S without a packet read, and
    WORKBENCH_DECODE_MEMORY_MB.

    Returns:
        (probe facts, packet scan).

    Raises:
        VideoError: refused, with the reason in plain words (SandboxError for crash, hang, memory).
    """
    with contextlib.ExitStack() as stack:
        try:
            shared = stack.enter_context(shared_file(path))
        except OSError as exc:
            raise VideoError(f"the file cannot be opened ({exc.strerror or type(exc).__name__})") from exc
        return run_isolated(inspect, shared.path, limits, on_progress=report_progress,
                            timeout_s=inspect_timeout_s(os.fstat(shared.fd).st_size, limits),
                            stall_s=default_stall_s(), keep_fds=(shared.fd,))


def _copy_hashing(src: BinaryIO, dest: BinaryIO, max_bytes: int) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while block := src.read(1 << 20):
        size += len(block)
        if size > max_bytes:
            raise EvidenceError(f"file is larger than the limit of {max_bytes / 1e9:.1f} GB")
        digest.update(block)
        dest.write(block)
    return digest.hexdigest(), size


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it 0700, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def _refuse_unless_regular(fd: int, max_bytes: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a folder" if stat.S_ISDIR(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "special")
        raise EvidenceError(f"not a regular file ({kind}); only regular files are taken as evidence")
    if st.st_size > max_bytes:
        raise EvidenceError(f"file is {st.st_size / 1e9:.1f} GB, above the limit of {max_bytes / 1e9:.1f} GB")


def open_regular(path: str | os.PathLike, max_bytes: int, follow_symlinks: bool = True) -> BinaryIO:
    """Open a local file for reading, refusing anything but a regular file before reading a byte.

    Opened non-blocking (a FIFO cannot block the open) and checked on the descriptor (fstat), so
    a device such as /dev/zero or a FIFO is refused, and so is a file over `max_bytes`.

    Raises:
        EvidenceError: not a regular file, or too large. OSError: it cannot be opened.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        _refuse_unless_regular(fd, max_bytes)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _lock_free(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def remove_stale_parts(incoming: Path) -> int:
    """Delete `.part` files left by an ingest that was killed; returns how many.

    An ingest holds an exclusive lock (flock) on its `.part` file until it is done, and the
    kernel drops the lock when the process dies, so an unlocked `.part` file has no owner.
    """
    removed = 0
    for part in incoming.glob("*.part"):
        try:
            fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if _lock_free(fd) and os.stat(part, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                part.unlink()
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _new_part(incoming: Path) -> tuple[int, Path]:
    """A new, locked `.part` file: (descriptor, path)."""
    while True:
        fd, name = tempfile.mkstemp(dir=incoming, suffix=".part")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(name, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd, Path(name)
        except FileNotFoundError:
            pass
        os.close(fd)  # another ingest took it for stale between mkstemp and flock: take a new one


def ingest(
    store: Store,
    source: str | os.PathLike | BinaryIO,
    original_name: str,
    evidence_dir: str | os.PathLike,
    actor: str = "local",
    case_id: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> dict:
    """Hash a video while copying it into the evidence store, validate it, and record it.

    The copy is named by its sha256 and made read-only (0400, in 0700 folders); the client's
    name is kept as metadata only. A local path must be a regular file (a device, FIFO or
    folder is refused before a byte is read). Validation (`validate`) probes it under limits and
    scans every packet without decoding (counts, timestamps, sizes, key frames, bytes against the
    file, span against the header), in a sandboxed child process, so a demuxer crash or hang
    refuses the file instead of taking the app down; frames are decoded only by the analysis,
    once, in its own sandbox (`sandbox.isolated_frames`). A refused file leaves nothing behind but an
    `evidence.refused` audit entry; a killed ingest's `.part` file is removed by the next one.

    Args:
        source: a local path or a readable binary file object (an upload).
        original_name: the name the client gave; stored, escaped wherever shown, never a path.

    Returns:
        The evidence row (sha256, original_name, size, stored_path, probe, ...).

    Raises:
        EvidenceError: the file is refused (not a video, not a regular file, over a limit, ...).
        OSError: a local path cannot be opened (e.g. FileNotFoundError).
    """
    evidence_dir = private_dir(Path(evidence_dir))
    incoming = private_dir(evidence_dir / ".incoming")
    remove_stale_parts(incoming)
    name = display_name(original_name)
    src = None
    try:
        if isinstance(source, (str, os.PathLike)):
            src = open_regular(source, limits.max_file_bytes)
    except EvidenceError as exc:
        store.audit(actor, "evidence.refused", f"upload:{name}", {"reason": str(exc)})
        raise
    fd, tmp = _new_part(incoming)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            if src is not None:
                with src:
                    sha256, size = _copy_hashing(src, out, limits.max_file_bytes)
            else:
                sha256, size = _copy_hashing(source, out, limits.max_file_bytes)
        t0 = time.perf_counter()
        try:
            info, scan = validate(tmp, limits)
        except (VideoError, SandboxError) as exc:
            raise EvidenceError(str(exc)) from exc
        validation = {"indexed_frames": info.frames, **scan.to_dict(), "validate_s": round(time.perf_counter() - t0, 3)}
        final = stored_path(evidence_dir, sha256)
        private_dir(final.parent)
        new = not final.exists()
        if not new:
            tmp.unlink()
        else:
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, final)
    except EvidenceError as exc:
        tmp.unlink(missing_ok=True)
        store.audit(actor, "evidence.refused", f"upload:{name}", {"reason": str(exc)})
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)  # releases the lock: the file is stored, or gone
        if src is not None:
            src.close()
    probe_facts = dict(info.to_dict(), path=None)
    row = store.add_evidence(sha256, name, size, str(final), probe_facts, actor, case_id)
    if new:
        store.audit(actor, "evidence.validated", f"evidence:{sha256}", validation)
    return row


def open_in_folder(path: str | os.PathLike, folder: str | os.PathLike) -> int:
    """Open a regular file that lies under `folder`, once, without following any symlink.

    Each folder between `folder` and the file is opened relative to the one before
    (O_NOFOLLOW, O_DIRECTORY), then the file itself (O_NOFOLLOW, O_NONBLOCK); the descriptor is
    checked (fstat: a regular file) and its real path (/proc/self/fd) must lie under `folder`.
    Nothing is checked by name and then opened again, so a link swapped in between a check
    and the open cannot lead outside.

    Returns:
        A read-only descriptor (the caller closes it).

    Raises:
        EvidenceError: outside the folder, through a symlink, or not a regular file.
        OSError: it does not exist.
    """
    base = Path(os.path.realpath(folder))
    target = Path(os.path.abspath(path))
    for prefix in (base, Path(os.path.abspath(folder))):
        if target.is_relative_to(prefix):
            rel = target.relative_to(prefix)
            break
    else:
        raise EvidenceError("that file is outside the import folder")
    if not rel.parts or any(part in ("", ".", "..") for part in rel.parts):
        raise EvidenceError("that path does not name a file inside the import folder")
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    dir_fd = os.open(base, dir_flags)
    try:
        for part in rel.parts[:-1]:
            try:
                next_fd = os.open(part, dir_flags, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink (or a file) where a folder should be
                    raise EvidenceError("a folder on that path is a symbolic link; refused") from exc
                raise
            os.close(dir_fd)
            dir_fd = next_fd
        try:
            fd = os.open(rel.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise EvidenceError("that file is a symbolic link; refused") from exc
            raise
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EvidenceError("not a regular file; only regular files are taken as evidence")
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not real.is_relative_to(base):
            raise EvidenceError("that file is outside the import folder")
    except BaseException:
        os.close(fd)
        raise
    return fd


def ingest_from_import_dir(
    store: Store,
    path: str | os.PathLike,
    import_dir: str | os.PathLike,
    evidence_dir: str | os.PathLike,
    actor: str = "local",
    case_id: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> dict:
    """Ingest a file picked from the import folder, opened once with `open_in_folder`.

    Returns:
        The evidence row, as `ingest`.

    Raises:
        EvidenceError: outside the folder, through a symlink, not a regular file, or refused by
            `ingest` (each refusal is audited).
    """
    name = display_name(Path(path).name)
    try:
        fd = open_in_folder(path, import_dir)
        try:
            _refuse_unless_regular(fd, limits.max_file_bytes)
        except BaseException:
            os.close(fd)
            raise
    except EvidenceError as exc:
        store.audit(actor, "evidence.refused", f"import:{name}", {"reason": str(exc)})
        raise
    with os.fdopen(fd, "rb") as src:
        return ingest(store, src, name, evidence_dir, actor, case_id, limits)


def verify(store: Store, sha256: str, actor: str = "local") -> Path:
    """Re-hash a stored evidence file; its path if it still matches, else EvidenceError (logged)."""
    row = store.evidence(sha256)
    path = Path(row["stored_path"])
    actual = sha256_file(path) if path.is_file() else None
    if actual != sha256:
        reason = "file is missing" if actual is None else f"file now hashes to {actual}"
        store.audit(actor, "evidence.mismatch", f"evidence:{sha256}", {"reason": reason})
        raise EvidenceError(f"evidence {sha256[:12]}… no longer matches its hash ({reason}); analysis blocked")
    return path

