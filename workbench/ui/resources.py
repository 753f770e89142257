"""Every cache of the app: st.cache_resource for shared objects, st.cache_data keyed by evidence sha256."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import streamlit as st

from detectors.registry import get_detector
from explain.gradcam import explain
from explain.heatmap_view import context_square
from workbench import config, review
from workbench.cases import demo_truth as stored_demo_truth, ensure_demo_case
from workbench.framecache import FrameCache
from workbench.pipeline import face_as_scored
from workbench.store import Store
from workbench.video import FrameReader


def store() -> Store:
    """The case store of the configured database (created with the demo case on first use)."""
    return _store(str(config.db_path()), str(config.evidence_dir()))


@st.cache_resource
def _store(db_path: str, evidence_dir: str) -> Store:
    s = Store(db_path)
    ensure_demo_case(s, Path(evidence_dir))
    return s


def _release_frame_cache(cache: FrameCache) -> None:
    cache.close()  # stops its prefetch thread and frees its frames


# Two evidence files at a time (the one on screen and the one before it, or a comparison); a third
# releases the least recently used one: its thread stops and its frames are freed.
@st.cache_resource(max_entries=2, on_release=_release_frame_cache, show_spinner=False)
def frame_cache(sha256: str, path: str) -> FrameCache:
    """The scrubbing cache of one evidence file (keyed by its hash): exact frames, prefetch, proxies."""
    cache = FrameCache(path)
    cache.start_proxies()
    return cache


def detector(name: str):
    """A detector instance for this call, on the configured device; its loaded model is shared by
    every session (the registry loads each model once per process)."""
    det = get_detector(name, config.device())
    det.model()
    return det


@st.cache_data(max_entries=16, show_spinner=False)
def review_data(sha256: str, face_run_id: int | None, results_key: str) -> review.ReviewData:
    """Stored results of one evidence file; results_key changes whenever new results are stored."""
    return review.load_review(store(), sha256, face_run_id)


def frame_with_boxes(sha256: str, path: str, frame: int, face_run_id: int | None, detector_name: str | None,
                     results_key: str) -> tuple[np.ndarray, list, list]:
    """The frame with every face box drawn, its faces, and their crops.

    The decoded frame comes from the evidence's frame cache (byte-bounded, prefetched in the
    scrub direction); drawing the boxes costs a few milliseconds, so the drawn image is not cached.
    """
    data = review_data(sha256, face_run_id, results_key)
    rgb = frame_cache(sha256, path).read(frame)
    faces = review.faces_at(data, frame, detector_name)
    return review.draw_faces(rgb, faces), faces, [crop for _, crop in review.face_gallery(rgb, faces)]


@st.cache_data(max_entries=256, show_spinner=False)
def gradcam(sha256: str, path: str, frame: int, track_id: int, detector_name: str, face_run_id: int | None,
            results_key: str):
    """Grad-CAM for one face on one frame with one detector, computed once per (evidence, frame, track, detector).

    Returns:
        None when the face is not on that frame or the detector cuts no crop from it; else
        {"model_input", "heatmap", "score", "context" (x1, y1, x2, y2 of a square around the face),
        "frame_region" and "placed_region" (that square before and after the heatmap was put in place)}.
    """
    data = review_data(sha256, face_run_id, results_key)
    face = next((f for f in review.faces_at(data, frame) if f.track_id == track_id), None)
    if face is None:
        return None
    det = detector(detector_name)
    rgb = frame_cache(sha256, path).read(frame)
    marks = None if face.landmarks is None else np.asarray(face.landmarks, np.float32)
    as_scored = face_as_scored(det, rgb, face.box, marks)  # the box this detector itself cut from
    if as_scored is None:
        return None
    box, marks = as_scored
    crop = det.cut(rgb, box, marks)
    if crop is None:
        return None
    explanation = explain(det, crop)
    placed = det.place_heatmap(rgb, box, marks, explanation.heatmap)
    # Only a square around the face is kept (before and after blending), so the panel can re-blend
    # it at any opacity and show it at the model input's size without holding whole frames.
    x1, y1, x2, y2 = context_square(rgb, face.box)
    return {"model_input": explanation.model_input, "heatmap": explanation.heatmap, "score": explanation.score,
            "context": (x1, y1, x2, y2), "frame_region": rgb[y1:y2, x1:x2].copy(),
            "placed_region": placed[y1:y2, x1:x2].copy()}


def results_key(sha256: str) -> str:
    """Changes whenever an analysis of this evidence is stored (cache invalidation)."""
    return store().results_key(sha256)


HISTORY_RECHECK_S = 30


def history_status(s: Store) -> dict:
    """The audit history's verification (Store.verify_history), re-checked when the log grows or
    every HISTORY_RECHECK_S seconds, not on every rerun."""
    latest = s.audit_log(limit=1)
    return _history_status(s, s.path, latest[0]["id"] if latest else None)


@st.cache_data(ttl=HISTORY_RECHECK_S, max_entries=8, show_spinner=False)
def _history_status(_s: Store, db_path: str, last_entry: int | None) -> dict:
    return _s.verify_history()


def demo_truth(sha256: str) -> tuple[int, int] | None:
    """The demo's known swapped frames for this evidence (recorded by sha256 when the demo was made), else None.
    Not cached: one small read of the audit log (by subject, action and actor), and a cache keyed by sha256
    would outlive the store it was read from."""
    return stored_demo_truth(store(), sha256)


THUMBNAIL_WIDTH = 128


@st.cache_data(max_entries=1024, show_spinner=False)
def thumbnail(sha256: str, path: str, frame: int, width: int = THUMBNAIL_WIDTH) -> np.ndarray:
    """One frame decoded once and kept small (width pixels wide) for the filmstrip."""
    import cv2  # lazy: only the filmstrip resizes here

    # Its own short-lived reader: reading through the scrubbing cache would move its cursor and
    # send its prefetch after the filmstrip's frames. Each thumbnail is decoded once (cached).
    with FrameReader(path) as reader:
        rgb = reader.read(frame)
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (width, max(1, int(round(h * width / w)))), interpolation=cv2.INTER_AREA)


@contextmanager
def proxy_while_loading(sha256: str, path: str, frame: int, where=None):
    """The place of the frame image, showing at once, while the exact frame is fetched inside the
    block, the nearest low-res proxy captioned "low-res preview, exact frame loading" when the
    exact frame is not in memory.

    Args:
        where: the container to put the slot in (default: the page, where this is called).

    Yields:
        The st.empty slot; the page draws the exact frame into it, replacing the proxy. If the
        block fails, the proxy is removed (it must not stay on screen as if it were the frame).
    """
    # always there, so the elements after it keep their places between reruns; `where` is the
    # container the frame belongs in (the Review page's left column), else the page at this point
    slot = (where if where is not None else st).empty()
    preview = frame_cache(sha256, path).preview(frame)
    if preview is not None and not preview.exact:
        slot.image(preview.image, caption=preview.label, width="stretch")
    try:
        yield slot
    except BaseException:
        slot.empty()
        raise
