"""Case helpers above the store: the demo case (its ground truth, its pre-analysis) and which cases and files a list shows."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from detectors.registry import default_detectors, get_detector
from workbench import config, demo
from workbench.evidence import ingest
from workbench.jobs import ACTIVE
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.store import Store, first_audit_details

DEMO_CASE_NAME = "Demo: synthetic face swap"
DEMO_CASE_DESCRIPTION = (
    "A generated clip made from public-domain photos (Grace Hopper, NASA's astronaut portrait). "
    "During a marked segment the generator itself swaps one face; the ground truth is stored beside the clip."
)


def demo_clip_path() -> Path:
    return config.home() / "demo" / "demo.mp4"


def ensure_demo_case(store: Store, evidence_dir: Path | None = None, clip: Path | None = None) -> int | None:
    """On a store with no case yet, create the demo case with the demo clip as its evidence.

    Returns:
        The demo case id if it was created or already exists, None when other cases exist.
    """
    existing = store.cases()
    for case in existing:
        if case["name"] == DEMO_CASE_NAME:
            return case["id"]
    if existing:
        return None
    clip = clip or demo_clip_path()
    if not (clip.is_file() and demo.truth_path(clip).is_file()):
        clip.parent.mkdir(parents=True, exist_ok=True)
        demo.make_demo(clip)
    case_id = store.create_case(DEMO_CASE_NAME, DEMO_CASE_DESCRIPTION, actor="workbench")
    row = ingest(store, clip, "demo.mp4", evidence_dir or config.evidence_dir(), actor="workbench", case_id=case_id)
    record_demo_truth(store, row["sha256"], clip)
    return case_id


# -- the demo's ground truth, kept in the store by the evidence's sha256 ------------------------------
# The truth is read from the generator's own JSON once, when the demo clip becomes evidence, and
# recorded as an audit entry of that evidence (hash-chained, written only by this code). The Review
# page reads it from there by sha256: never from a file beside some path, which a user could supply.
DEMO_TRUTH_ACTION = "demo.truth"
DEMO_TRUTH_ACTOR = "workbench"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_demo_truth(store: Store, sha256: str, clip: Path) -> bool:
    """Record the ground truth written beside the workbench's demo clip for the evidence made from it.

    Args:
        sha256: the stored evidence; it must be the clip's own hash.
        clip: the demo clip the workbench generated (its truth is demo.truth_path(clip)).

    Returns:
        True when recorded now; False when already recorded, or the clip is not that evidence.
    """
    if demo_truth(store, sha256) is not None or _file_sha256(Path(clip)) != sha256:
        return False
    truth = demo.load_truth(clip)
    if truth.swap_frames is None:
        return False  # a clip too short to reach the swapped segment: nothing to draw
    store.audit(DEMO_TRUTH_ACTOR, DEMO_TRUTH_ACTION, f"evidence:{sha256}", {
        "swap_frames": list(truth.swap_frames), "frames": truth.frames, "fps": truth.fps,
        "swap_target": truth.swap_target, "swap_donor": truth.swap_donor, "generator": truth.generator,
        "truth_sha256": _file_sha256(demo.truth_path(clip)),
    })
    return True


def demo_truth(store: Store, sha256: str) -> tuple[int, int] | None:
    """The known swapped frame range (inclusive) of a demo evidence file, None for any other file."""
    details = first_audit_details(store, f"evidence:{sha256}", DEMO_TRUTH_ACTION, DEMO_TRUTH_ACTOR)
    if details is None:
        return None
    first, last = details["swap_frames"]
    return int(first), int(last)


# -- pre-analysing the demo (`make run`) ------------------------------------------------------------
DEMO_SETUP_ACTOR = "workbench demo setup"
DEMO_SAMPLING = Sampling(sample_fps=2.0)  # the Review page's triage rate


def analyse_demo(store: Store, case_id: int, detectors: list[str] | None = None,
                 sampling: Sampling = DEMO_SAMPLING, actor: str = DEMO_SETUP_ACTOR,
                 announce: Callable[[str], None] | None = None) -> list[dict]:
    """Analyse each evidence file of the demo case once, so the first screen shows results.

    Idempotent: a file with any stored analysis, or with a job queued or running, is left alone.

    Args:
        detectors: registry names (default: the default detectors, i.e. the reference detector).
        actor: who the stored analysis is recorded under.
        announce: called with the evidence sha256 just before a file is analysed (it takes a while).

    Returns:
        One {"sha256", "done", "detail", "seconds"} per file; done is "analysed", "already analysed",
        "queued elsewhere", "not installed" or "failed".
    """
    # Looked up only when a file needs analysing: listing the registry imports every detector module.
    installed: list[str] | None = None
    out = []
    for evidence in store.case_evidence(case_id):
        sha = evidence["sha256"]
        item = {"sha256": sha, "detail": "", "seconds": 0.0}
        if store.analyses(sha):
            out.append(dict(item, done="already analysed"))
            continue
        if store.jobs(sha, states=ACTIVE):
            out.append(dict(item, done="queued elsewhere"))
            continue
        if installed is None:
            names = list(detectors) if detectors is not None else default_detectors()
            installed = [n for n in names if get_detector(n).weights_status().installed]
        if not installed:
            out.append(dict(item, done="not installed", detail=f"no weights for {', '.join(names)}"))
            continue
        if announce is not None:
            announce(sha)
        started = time.perf_counter()
        result = analyse_evidence(store, sha, installed, sampling, actor=actor, device=config.device())
        seconds = time.perf_counter() - started
        if result.error is not None:
            out.append(dict(item, done="failed", detail=result.error, seconds=seconds))
        else:
            said = ", ".join(f"{n} {o.status}" for n, o in result.detectors.items())
            out.append(dict(item, done="analysed", detail=said, seconds=seconds))
    return out


def listed_cases(store: Store, include_archived: bool = False, keep: int | None = None) -> list[dict]:
    """The cases a list shows: archived cases left out unless asked for (or the one being looked at).

    Args:
        keep: a case id listed even when archived (the open case stays visible in its own picker).

    Returns:
        Case rows, oldest first, each with "archived" (the archive record, or None).
    """
    hidden = store.archived()["cases"]
    return [dict(c, archived=hidden.get(c["id"])) for c in store.cases()
            if include_archived or c["id"] not in hidden or c["id"] == keep]


def listed_evidence(store: Store, case_id: int, include_archived: bool = False, keep: str | None = None) -> list[dict]:
    """The files of a case a list shows: archived files left out unless asked for (or kept).

    Args:
        keep: a sha256 listed even when archived (the file being looked at stays in its picker).

    Returns:
        Evidence rows in the order they were added, each with "archived" (the record, or None).
    """
    hidden = store.archived()["evidence"]
    return [dict(e, archived=hidden.get((case_id, e["sha256"]))) for e in store.case_evidence(case_id)
            if include_archived or (case_id, e["sha256"]) not in hidden or e["sha256"] == keep]
