"""The Compare page: two files on one time cursor, per-side offsets, the difference view; and its pure helpers."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from detectors.base import SCOPE_CAVEAT
from workbench import review
from workbench.cases import ensure_demo_case
from workbench.evidence import ingest
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.store import Store

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
CAPTION = re.compile(r"^([AB]) · frame (\d+) · ")


def test_compare_frame_follows_time_offset_and_bounds():
    assert review.compare_frame(1.0, 25, 0, 100) == 25
    assert review.compare_frame(1.0, 10, 0, 100) == 10  # synced by time, not by frame number
    assert review.compare_frame(1.0, 25, 7, 100) == 32
    assert review.compare_frame(1.0, 25, -30, 100) == 0
    assert review.compare_frame(9.0, 25, 0, 100) == 99


def test_frame_difference_is_absolute_and_resizes_when_sizes_differ():
    a = np.zeros((4, 6, 3), np.uint8)
    b = np.full((4, 6, 3), 10, np.uint8)
    a[0, 0] = 30
    diff, resized = review.frame_difference(a, b)
    assert not resized and diff[0, 0, 0] == 20 and diff[1, 1, 0] == 10  # |30-10|, |0-10|: no wrap-around
    diff, resized = review.frame_difference(a, np.full((8, 12, 3), 10, np.uint8))
    assert resized and diff.shape == a.shape and diff[1, 1, 0] == 10


@pytest.fixture
def two_files(app_home, h264_clip, tiny_detectors):
    """The demo case holding the demo clip (scored by the tiny detector) and a second, unscored clip."""
    store = Store(app_home / "workbench.db")
    try:
        case_id = ensure_demo_case(store, app_home / "evidence", app_home / "demo" / "demo.mp4")
        demo_sha = store.case_evidence(case_id)[0]["sha256"]
        analyse_evidence(store, demo_sha, ["tiny-test"], Sampling(sample_fps=5), actor="test")
        other = ingest(store, h264_clip, "suspect.mp4", app_home / "evidence", "test", case_id)
    finally:
        store.close()
    return {"case": case_id, "a": demo_sha, "b": other["sha256"]}


def frames_shown(at: AppTest) -> dict[str, int]:
    shown = {}
    for el in at.get("image"):
        for caption in el.captions:
            m = CAPTION.match(caption)
            if m:
                shown[m.group(1)] = int(m.group(2))
    return shown


def click(at: AppTest, label: str) -> AppTest:
    next(b for b in at.button if b.label == label).click().run()
    assert not at.exception, at.exception
    return at


def test_compare_steps_both_sides_and_offsets_one(two_files):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, at.exception
    assert any(w.value == SCOPE_CAVEAT for w in at.main.warning)
    assert at.selectbox(key="cmp_A_sha_w").value == two_files["a"]
    assert at.selectbox(key="cmp_B_sha_w").value == two_files["b"]  # two different files face each other
    assert frames_shown(at) == {"A": 0, "B": 0}
    # Each side's headline: the scored demo its band, the other file says it was not analysed.
    texts = [t.value for t in at.text]
    assert any(t.startswith("tiny-test: ") and "threshold" in t for t in texts), texts
    assert "not analysed yet — run detectors on the Review page" in texts

    click(at, "+1 frame")
    assert frames_shown(at) == {"A": 1, "B": 1}
    click(at, "+1 s")
    assert frames_shown(at) == {"A": 26, "B": 26}  # both clips are 25 fps
    at.number_input(key="cmp_B_offset_w").set_value(5).run()
    assert frames_shown(at) == {"A": 26, "B": 31}
    click(at, "−1 frame")
    assert frames_shown(at) == {"A": 25, "B": 30}  # the offset stays while the shared cursor moves
    at.number_input(key="cmp_A_offset_w").set_value(-25).run()
    assert frames_shown(at) == {"A": 0, "B": 30}

    at.toggle(key="cmp_difference").set_value(True).run()
    assert not at.exception, at.exception
    captions = [c for el in at.get("image") for c in el.captions]
    # The demo clip is 640x360 and the other 320x240: B is resized before the difference.
    assert "|A − B| per pixel (B resized to A's size: they differ)" in captions


def test_compare_keeps_its_files_and_time_across_a_page_change(two_files):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/compare.py").run()
    click(at, "+1 s")
    at.switch_page("views/review.py").run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, at.exception
    assert frames_shown(at) == {"A": 25, "B": 25}
    assert at.selectbox(key="cmp_B_sha_w").value == two_files["b"]
