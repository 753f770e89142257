"""Evidence custody: files hashed while they stream in, stored read-only under their sha256."""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import BinaryIO

import av

from detectors.base import sha256_file
from workbench.sandbox import SandboxError, default_timeout_s, run_isolated
from workbench.store import Store
from workbench.video import DEFAULT_LIMITS, Limits, VideoError, VideoInfo, _open, _video_stream, probe

MAX_NAME_CHARS = 255
# The full-decode timeout grows with the work: WORKBENCH_DECODE_TIMEOUT_S plus the video's
# pixels at this (deliberately slow) decoding rate, WORKBENCH_DECODE_MIN_MPX_PER_S.
DEFAULT_MIN_MPX_PER_S = 10.0


class EvidenceError(Exception):
    """Evidence that was refused or no longer matches its hash."""


def display_name(original: str) -> str:
    """A client-supplied file name made safe to keep as metadata (never used as a path)."""
    cleaned = "".join(ch if unicodedata.category(ch)[0] != "C" else "\N{REPLACEMENT CHARACTER}" for ch in original)
    return cleaned[:MAX_NAME_CHARS] or "(unnamed)"


def stored_path(evidence_dir: Path, sha256: str) -> Path:
    return Path(evidence_dir) / sha256[:2] / sha256


def decode_all(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> tuple[int, int, int]:
    """Decode every frame once, in order (no colour conversion); runs inside the sandbox.

    Returns:
        (frames decoded, width, height) of the decoded frames.

    Raises:
        VideoError: decoding fails at some frame (the message names it), a frame is over the
            pixel limit, the frame size changes mid-stream, or more frames than allowed.
    """
    n, size = 0, None
    with _open(path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        try:
            for frm in container.decode(stream):
                if size is None:
                    size = (frm.width, frm.height)
                    if frm.width * frm.height > limits.max_pixels:
                        raise VideoError(f"resolution {frm.width}x{frm.height} is above the limit")
                elif (frm.width, frm.height) != size:
                    raise VideoError(
                        f"the frame size changes at frame {n} ({size[0]}x{size[1]} to {frm.width}x{frm.height})"
                    )
                n += 1
                if n > limits.max_frames:
                    raise VideoError(f"more than {limits.max_frames:,} frames decode; above the limit")
        except MemoryError:
            raise
        except av.FFmpegError as exc:
            raise VideoError(f"decoding failed at frame {n} ({exc.strerror or type(exc).__name__})") from exc
    return n, size[0] if size else 0, size[1] if size else 0


def validate(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> tuple[VideoInfo, int]:
    """Probe under limits, then decode every frame, each in a sandboxed child process.

    The probe runs under WORKBENCH_DECODE_TIMEOUT_S; the full decode under that plus the
    video's total pixels at WORKBENCH_DECODE_MIN_MPX_PER_S (10 Mpx/s), so long videos are not
    refused for taking long. Both run under WORKBENCH_DECODE_MEMORY_MB.

    Returns:
        (probe facts, frames decoded).

    Raises:
        VideoError: refused, with the reason in plain words (SandboxError for crash, hang, memory).
    """
    info = run_isolated(probe, path, limits)
    rate = float(os.environ.get("WORKBENCH_DECODE_MIN_MPX_PER_S", DEFAULT_MIN_MPX_PER_S)) * 1e6
    timeout = default_timeout_s() + info.frames * info.width * info.height / rate
    decoded, _, _ = run_isolated(decode_all, path, limits, timeout_s=timeout)
    # Frame-accurate review needs the sequential decode and the index to agree frame for frame;
    # a damaged file where they differ would number its frames differently in the viewer and the
    # analysis, so it is refused rather than shown slightly wrong.
    if decoded != info.frames:
        raise VideoError(
            f"{decoded} frames decode but the container's index lists {info.frames}: the file is damaged, "
            "and frame-accurate review is not possible"
        )
    return info, decoded


def _copy_hashing(src: BinaryIO, dest: BinaryIO, max_bytes: int) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while block := src.read(1 << 20):
        size += len(block)
        if size > max_bytes:
            raise EvidenceError(f"file is larger than the limit of {max_bytes / 1e9:.1f} GB")
        digest.update(block)
        dest.write(block)
    return digest.hexdigest(), size


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

    The copy is named by its sha256 and made read-only; the client's name is kept as metadata
    only. Validation (`validate`) probes it under limits and decodes every frame once, in a
    sandboxed child process, so a decoder crash or hang refuses the file instead of taking the
    app down. A refused file leaves nothing behind but an `evidence.refused` audit entry.

    Args:
        source: a local path or a readable binary file object (an upload).
        original_name: the name the client gave; stored, escaped wherever shown, never a path.

    Returns:
        The evidence row (sha256, original_name, size, stored_path, probe, ...).

    Raises:
        EvidenceError: the file is refused (not a video, over a limit, ...).
    """
    evidence_dir = Path(evidence_dir)
    incoming = evidence_dir / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    name = display_name(original_name)
    fd, tmp_name = tempfile.mkstemp(dir=incoming, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, (str, os.PathLike)):
                with open(source, "rb") as src:
                    sha256, size = _copy_hashing(src, out, limits.max_file_bytes)
            else:
                sha256, size = _copy_hashing(source, out, limits.max_file_bytes)
        t0 = time.perf_counter()
        try:
            info, decoded = validate(tmp, limits)
        except (VideoError, SandboxError) as exc:
            raise EvidenceError(str(exc)) from exc
        validation = {"indexed_frames": info.frames, "decoded_frames": decoded,
                      "validate_s": round(time.perf_counter() - t0, 3)}
        final = stored_path(evidence_dir, sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        new = not final.exists()
        if not new:
            tmp.unlink()
        else:
            os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(tmp, final)
    except EvidenceError as exc:
        tmp.unlink(missing_ok=True)
        store.audit(actor, "evidence.refused", f"upload:{name}", {"reason": str(exc)})
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    probe_facts = dict(info.to_dict(), path=None)
    row = store.add_evidence(sha256, name, size, str(final), probe_facts, actor, case_id)
    if new:
        store.audit(actor, "evidence.validated", f"evidence:{sha256}", validation)
    return row


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

