"""Evidence custody: files hashed while they stream in, stored read-only under their sha256."""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import unicodedata
from pathlib import Path
from typing import BinaryIO

from detectors.base import sha256_file
from workbench.store import Store
from workbench.video import DEFAULT_LIMITS, Limits, VideoError, probe

MAX_NAME_CHARS = 255


class EvidenceError(Exception):
    """Evidence that was refused or no longer matches its hash."""


def display_name(original: str) -> str:
    """A client-supplied file name made safe to keep as metadata (never used as a path)."""
    cleaned = "".join(ch if unicodedata.category(ch)[0] != "C" else "\N{REPLACEMENT CHARACTER}" for ch in original)
    return cleaned[:MAX_NAME_CHARS] or "(unnamed)"


def stored_path(evidence_dir: Path, sha256: str) -> Path:
    return Path(evidence_dir) / sha256[:2] / sha256


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
    """Hash a video while copying it into the evidence store, probe it, and record it.

    The copy is named by its sha256 and made read-only; the client's name is kept as metadata
    only. A refused file leaves nothing behind but an audit entry.

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
        try:
            info = probe(tmp, limits)
        except VideoError as exc:
            raise EvidenceError(str(exc)) from exc
        final = stored_path(evidence_dir, sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
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
    return store.add_evidence(sha256, name, size, str(final), probe_facts, actor, case_id)


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

