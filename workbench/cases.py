"""Case helpers above the store: the built-in demo case a fresh install opens on, and which cases and files a list shows (archived ones hidden)."""
from __future__ import annotations

from pathlib import Path

from workbench import config, demo
from workbench.evidence import ingest
from workbench.store import Store

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
    ingest(store, clip, "demo.mp4", evidence_dir or config.evidence_dir(), actor="workbench", case_id=case_id)
    return case_id


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
