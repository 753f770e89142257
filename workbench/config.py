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


def gpu_count() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    import torch  # lazy: torch is heavy and not every caller needs it

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers() -> int:
    """Analysis worker processes to start: WORKBENCH_WORKERS if set, else one per GPU, else one."""
    chosen = os.environ.get("WORKBENCH_WORKERS")
    if chosen:
        return int(chosen)
    return max(1, gpu_count())


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


def root_warning() -> str | None:
    """A warning to show when the app runs as root, else None.

    As root the decode sandbox still drops to WORKBENCH_SANDBOX_UID without network, but
    everything else (the app, the detectors, the database) runs with every privilege.
    """
    if os.geteuid() != 0:
        return None
    return ("the workbench is running as root: run it as an ordinary user; evidence and the database are "
            "kept private to the user that runs it (0400/0600 files, 0700 folders)")
