"""What the analyst is looking at (case, evidence, frame, track): plain session keys mirrored into the URL.

Streamlit drops a widget's state when the next page does not draw that widget, so the selection
never lives in a widget key. Widgets get their own keys, are set from these plain keys before they
are drawn, and copy their value back in an on_change callback. The URL's query parameters
(case, evidence, frame) mirror the selection, so a link or a reload opens the same place.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import streamlit as st

from workbench.store import Store

CASE, EVIDENCE, FRAME, TRACK, PLAYING = "sel_case", "sel_evidence", "sel_frame", "sel_track", "sel_playing"
_RESTORED = "_sel_restored_from_url"
_MESSAGES = "_sel_messages"
URL_KEYS = ("case", "evidence", "frame")
_INT = re.compile(r"\d{1,9}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# -- reading a link (pure) -------------------------------------------------------------------
def parse_link(params: Mapping[str, str], case_ids: list[int],
               evidence_of: Callable[[int], list[str]]) -> tuple[dict, list[str]]:
    """Validate a link's case, evidence and frame against the store.

    Args:
        params: the query parameters (values as strings).
        case_ids: the ids of every case.
        evidence_of: a case id -> the sha256 of its evidence files.

    Returns:
        (selection, messages): the valid parts as {"case", "evidence", "frame"} (absent when not
        given or not valid) and one plain-text message per part that was ignored. Messages never
        repeat the link's text.

    >>> parse_link({"case": "2", "frame": "40"}, [1, 2], lambda case_id: [])
    ({'case': 2, 'frame': 40}, [])
    """
    chosen: dict = {}
    messages: list[str] = []
    raw_case, raw_sha, raw_frame = (params.get(k) for k in URL_KEYS)
    if raw_case is not None:
        if _INT.fullmatch(raw_case) and int(raw_case) in case_ids:
            chosen["case"] = int(raw_case)
        else:
            messages.append("The link's case is not a known case: ignored.")
    if raw_sha is not None:
        sha = raw_sha.lower()
        holders = [chosen["case"]] if "case" in chosen else case_ids
        holder = next((c for c in holders if _SHA256.fullmatch(sha) and sha in evidence_of(c)), None)
        if holder is None:
            messages.append("The link's evidence is not a file of that case: ignored.")
        else:
            chosen["case"], chosen["evidence"] = holder, sha
    if raw_frame is not None:
        if not _INT.fullmatch(raw_frame):
            messages.append("The link's frame is not a frame number: ignored.")
        elif "case" in chosen:
            chosen["frame"] = int(raw_frame)
    return chosen, messages


def restore_from_url(store: Store) -> None:
    """Once per session, before any page: take the selection from the URL (a link or a reload)."""
    if st.session_state.get(_RESTORED):
        return
    st.session_state[_RESTORED] = True
    params = {k: st.query_params[k] for k in URL_KEYS if k in st.query_params}
    if not params:
        return
    chosen, messages = parse_link(params, [c["id"] for c in store.cases()],
                                  lambda case_id: [e["sha256"] for e in store.case_evidence(case_id)])
    if "case" in chosen:
        select_case(chosen["case"])
    if "evidence" in chosen:
        select_evidence(chosen["evidence"])
    if "frame" in chosen:
        select_frame(chosen["frame"])
    st.session_state[_MESSAGES] = messages


def pop_messages() -> list[str]:
    """Messages about a link's ignored parts, shown once."""
    return st.session_state.pop(_MESSAGES, [])


def sync_url() -> None:
    """Mirror the selection into the URL's query parameters (only what changed)."""
    wanted = {"case": st.session_state.get(CASE), "evidence": st.session_state.get(EVIDENCE),
              "frame": st.session_state.get(FRAME)}
    for key, value in wanted.items():
        if value is None:
            if key in st.query_params:
                del st.query_params[key]
        elif st.query_params.get(key) != str(value):
            st.query_params[key] = str(value)


# -- changing the selection ------------------------------------------------------------------
def select_case(case_id: int) -> None:
    """Open another case: its evidence, frame and track start afresh."""
    if st.session_state.get(CASE) != case_id:
        st.session_state[CASE] = int(case_id)
        st.session_state[EVIDENCE] = None
        st.session_state[FRAME] = 0
        st.session_state[TRACK] = None
        st.session_state[PLAYING] = False


def select_evidence(sha256: str) -> None:
    """Open another evidence file of the current case, at its first frame."""
    previous = st.session_state.get(EVIDENCE)
    if previous != sha256:
        st.session_state[EVIDENCE] = sha256
        if previous is None:
            return  # the case's default file named at last: a frame from a link stays
        st.session_state[FRAME] = 0
        st.session_state[TRACK] = None
        st.session_state[PLAYING] = False


def select_frame(frame: int, track_id: int | None = None) -> None:
    st.session_state[FRAME] = max(0, int(frame))
    if track_id is not None:
        st.session_state[TRACK] = int(track_id)


def select_track(track_id: int | None) -> None:
    st.session_state[TRACK] = None if track_id is None else int(track_id)


# -- reading the selection -------------------------------------------------------------------
def current_case(store: Store) -> dict | None:
    """The selected case (the first case not archived when none is selected or it no longer exists).

    A case selected explicitly (a link, the picker with Show archived on) stays open even when archived.
    """
    cases = store.cases()
    if not cases:
        return None
    ids = [c["id"] for c in cases]
    if st.session_state.get(CASE) not in ids:
        hidden = store.archived()["cases"]
        select_case(next((i for i in ids if i not in hidden), ids[0]))
    return next(c for c in cases if c["id"] == st.session_state[CASE])


def current_evidence(store: Store, case: dict) -> dict | None:
    """The selected evidence file of the case (its first file not archived when none of the case's is selected)."""
    items = store.case_evidence(case["id"])
    if not items:
        return None
    shas = [e["sha256"] for e in items]
    if st.session_state.get(EVIDENCE) not in shas:
        hidden = store.archived()["evidence"]
        select_evidence(next((s for s in shas if (case["id"], s) not in hidden), shas[0]))
    return next(e for e in items if e["sha256"] == st.session_state[EVIDENCE])


def current_frame(evidence: dict | None = None) -> int:
    """The selected frame, within the evidence file's frames when one is given."""
    frame = int(st.session_state.get(FRAME) or 0)
    frames = ((evidence or {}).get("probe") or {}).get("frames")
    if frames:
        frame = max(0, min(int(frames) - 1, frame))
        st.session_state[FRAME] = frame
    return frame


def current_track() -> int | None:
    return st.session_state.get(TRACK)


def playing() -> bool:
    return bool(st.session_state.get(PLAYING))


def set_playing(on: bool) -> None:
    st.session_state[PLAYING] = bool(on)


# -- a marked time range (in/out points) on one evidence file --------------------------------
RANGE = "sel_range"  # {"sha256", "in", "out"}: UI state until a note pins it


def mark(sha256: str, end: str, frame: int) -> None:
    """Set the in or out point of the range on this file (marks on another file are dropped)."""
    if end not in ("in", "out"):
        raise ValueError(f"a range has an 'in' and an 'out' point, not {end!r}")
    marks = st.session_state.get(RANGE) or {}
    if marks.get("sha256") != sha256:
        marks = {"sha256": sha256, "in": None, "out": None}
    st.session_state[RANGE] = dict(marks, **{end: max(0, int(frame))})


def clear_range() -> None:
    st.session_state.pop(RANGE, None)


def range_marks(sha256: str) -> tuple[int | None, int | None]:
    """The (in, out) points marked on this file, each None until marked."""
    marks = st.session_state.get(RANGE) or {}
    return (marks.get("in"), marks.get("out")) if marks.get("sha256") == sha256 else (None, None)


def marked_range(sha256: str) -> tuple[int, int] | None:
    """The marked range on this file as (first, last) frames, in order; None until both ends are marked."""
    a, b = range_marks(sha256)
    return None if a is None or b is None else (min(a, b), max(a, b))
