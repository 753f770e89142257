"""Settings: where the case store and evidence live, which device to use, and the input limits."""
from __future__ import annotations

import os
from pathlib import Path

from workbench.video import Limits

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """The folder holding the database and the evidence store (WORKBENCH_HOME, else ./var)."""
    return Path(os.environ.get("WORKBENCH_HOME", REPO_ROOT / "var")).resolve()


def db_path() -> Path:
    return Path(os.environ.get("WORKBENCH_DB", home() / "workbench.db"))


def evidence_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_EVIDENCE", home() / "evidence"))


def device() -> str:
    """WORKBENCH_DEVICE if set (cpu, cuda, cuda:1, mps), else the first GPU, else the CPU."""
    chosen = os.environ.get("WORKBENCH_DEVICE")
    if chosen:
        return chosen
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def limits() -> Limits:
    """Input limits, each overridable by an environment variable."""
    base = Limits()
    return Limits(
        max_pixels=int(os.environ.get("WORKBENCH_MAX_PIXELS", base.max_pixels)),
        max_frames=int(os.environ.get("WORKBENCH_MAX_FRAMES", base.max_frames)),
        max_duration_s=float(os.environ.get("WORKBENCH_MAX_DURATION_S", base.max_duration_s)),
        max_file_bytes=int(os.environ.get("WORKBENCH_MAX_FILE_BYTES", base.max_file_bytes)),
    )


def import_dir() -> Path:
    """The folder analysts may pick evidence files from (WORKBENCH_IMPORT_DIR, else var/import)."""
    return Path(os.environ.get("WORKBENCH_IMPORT_DIR", home() / "import")).resolve()


def inside_import_dir(path: Path) -> bool:
    """True only for a regular file that really lies under the import folder (no escapes by links)."""
    try:
        resolved = Path(path).resolve(strict=True)
    except OSError:
        return False
    return resolved.is_file() and resolved.is_relative_to(import_dir())
