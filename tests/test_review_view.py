"""The Review page laid out for looking: many faces on the timeline (filter, colours, labels), the loupe's
native pixels, the keys' moves and the frame's bounded size."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from workbench import review
from workbench.review import DetectorView, ReviewData
from workbench.ui import keys

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
BOX = (10.0, 10.0, 60.0, 60.0)


def many_faces(n_tracks: int = 15, frames: int = 100, step: int = 5) -> ReviewData:
    """n_tracks faces on every analysed frame; track t peaks at frame 5*t with score 0.3 + 0.04*t."""
    analysed = list(range(0, frames, step))
    tracks = {t: {f: (BOX, True) for f in analysed} for t in range(1, n_tracks + 1)}
    scores = {(f, t): (0.3 + 0.04 * t if f == 5 * t else 0.1) for f in analysed for t in tracks}
    view = DetectorView("tiny-test", "1", "ok", 0.5, None, 0.5, "rule", analysed, "0" * 64, "now", 1, scores)
    return ReviewData("0" * 64, {"fps": 25, "frames": frames}, 1, analysed, tracks, {"tiny-test": view})


# -- many faces: colours, filter, labels -------------------------------------------------------
def test_twenty_tracks_get_twenty_distinct_colours():
    colours = review.track_colours(range(1, 21))
    assert len(set(colours.values())) == 20
    # Box colours on the frame (by id) are distinct for the first twenty tracks too.
    assert len({review.track_colour(t) for t in range(1, 21)}) == 20
    # Ids whose box colours coincide still get distinct colours when shown together.
    clash = review.track_colours([1, 21, 41, 2])
    assert len(set(clash.values())) == 4 and clash[1] == review.track_colour(1)


def test_the_track_filter_keeps_the_top_five_by_peak_score_or_all_or_the_selected():
    data = many_faces()
    assert review.shown_tracks(data, "tiny-test") == [15, 14, 13, 12, 11]
    assert review.shown_tracks(data, "tiny-test", top=None) == list(range(15, 0, -1))
    assert review.shown_tracks(data, "tiny-test", selected=3) == [3]
    # Without a series to rank by, tracks come by id.
    assert review.shown_tracks(data, None, top=3) == [1, 2, 3]


def _score_traces(fig) -> list:
    return [t for t in fig.data if t.name and " · T" in t.name]


def test_the_timeline_draws_only_the_shown_tracks_each_in_its_own_colour():
    data = many_faces()
    every = review.timeline_figure(data)
    assert len(_score_traces(every)) == 15
    colours = [t.line.color for t in _score_traces(every)]
    assert len(set(colours)) == 15, colours
    top = review.shown_tracks(data, "tiny-test")
    fig = review.timeline_figure(data, tracks=top)
    assert sorted(t.name for t in _score_traces(fig)) == sorted(f"tiny-test · T{t}" for t in top)


def test_track_labels_sit_at_each_peak_and_never_overlap():
    data = many_faces(frames=80)  # peaks 5 frames apart: closer than a label is wide
    fig = review.timeline_figure(data)
    labels = {a.text: a for a in fig.layout.annotations if a.text.startswith("T")}
    assert sorted(labels) == sorted(f"T{t}" for t in range(1, 16))
    for t in range(1, 16):
        assert (labels[f"T{t}"].x, labels[f"T{t}"].y) == (5 * t, pytest.approx(0.3 + 0.04 * t))
    width = review.LABEL_WIDTH * data.total_frames
    placed = list(labels.values())
    for i, a in enumerate(placed):
        for b in placed[i + 1:]:
            if abs(a.x - b.x) < width and abs(a.y - b.y) < 0.05:  # near in x and in height
                assert abs(a.yshift - b.yshift) >= review.LABEL_ROW_PX, (a.text, b.text)


def test_label_shifts_lift_a_label_only_as_far_as_it_must():
    # Three labels side by side at one height: above, below, then a row up; a far one stays put.
    assert review.label_shifts([(0, 0.5), (1, 0.5), (2, 0.5), (50, 0.5)], width=5,
                               px_per_unit=100) == [10.0, -28.0, 28.0, 10.0]
    # Near in x but far apart in height: neither moves.
    assert review.label_shifts([(0, 0.1), (1, 0.9)], width=5, px_per_unit=100) == [10.0, 10.0]
    assert review.label_shifts([], width=5, px_per_unit=100) == []


# -- the loupe ----------------------------------------------------------------------------------
def test_the_loupe_shows_the_frame_pixels_unchanged_or_repeated():
    rgb = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    region = review.clamp_region(rgb.shape, 100, 80, 32, 32)
    assert region == (88, 58, 120, 90)  # moved inside the frame, not shrunk
    assert np.array_equal(review.loupe(rgb, region, 1), rgb[58:90, 88:120])
    big = review.loupe(rgb, region, 4)
    assert big.shape == (128, 128, 3)
    assert np.array_equal(big[::4, ::4], rgb[58:90, 88:120])
    assert np.array_equal(big[3::4, 3::4], rgb[58:90, 88:120])
    with pytest.raises(ValueError, match="zoom"):
        review.loupe(rgb, region, 3)


def test_a_loupe_never_grows_past_its_column():
    assert review.loupe_fit((0, 0, 64, 64), 4, 400) == ((0, 0, 64, 64), 4)
    assert review.loupe_fit((0, 0, 128, 128), 4, 400) == ((0, 0, 128, 128), 2)  # 512 px would spill
    assert review.loupe_fit((10, 10, 266, 266), 2, 400) == ((10, 10, 266, 266), 1)
    region, zoom = review.loupe_fit((0, 100, 600, 300), 1, 400)  # a 4K face: its centre at 1x
    assert (region, zoom) == ((100, 100, 500, 300), 1)


def test_a_face_region_holds_the_box_and_stays_in_the_frame():
    assert review.face_region((100, 100, 3), (10.0, 20.0, 50.0, 60.0)) == (6, 16, 54, 64)
    assert review.face_region((100, 100, 3), (-5.0, 90.0, 30.0, 130.0)) == (0, 86, 34, 100)


# -- keys ---------------------------------------------------------------------------------------
def test_each_moving_key_goes_where_the_help_says():
    crossings = [20, 40]
    assert keys.frame_after("ArrowRight", 30, 100, 25, crossings) == 31
    assert keys.frame_after("ArrowLeft", 0, 100, 25, crossings) == 0  # stays on the first frame
    assert keys.frame_after("Shift+ArrowRight", 90, 100, 25, crossings) == 99
    assert keys.frame_after("Shift+ArrowLeft", 30, 100, 25, crossings) == 5
    assert keys.frame_after("n", 30, 100, 25, crossings) == 40
    assert keys.frame_after("p", 30, 100, 25, crossings) == 20
    assert keys.frame_after("n", 40, 100, 25, crossings) is None
    assert keys.frame_after("k", 30, 100, 25, crossings) is None
    for _, shown, _, _, what in keys.KEYS:
        assert f"**{shown}**: {what}" in keys.help_text()


# -- the page (AppTest) -------------------------------------------------------------------------
@pytest.fixture
def media(monkeypatch):
    """Every file the app puts in AppTest's media store, by file id (the store drops them after a run)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import app_test

    seen: dict[str, bytes] = {}

    class Recording(MemoryMediaFileStorage):
        def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
            file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
            seen[file_id] = self.get_file(file_id).content
            return file_id

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)
    return seen


def _loupe_image(at, media) -> tuple[np.ndarray, str]:
    (image,) = [el for el in at.get("image") if el.captions and el.captions[0].startswith("loupe")]
    url = image.value[0]
    assert url.endswith(".png"), url  # lossless: a JPEG would change the pixels the loupe is for
    data = np.frombuffer(media[Path(url).stem], np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), image.captions[0]


def _decoded(home: Path, frame: int) -> np.ndarray:
    from workbench.store import Store
    from workbench.video import FrameReader

    store = Store(home / "workbench.db")
    try:
        path = store.case_evidence(store.cases()[0]["id"])[0]["stored_path"]
    finally:
        store.close()
    return FrameReader(path).read(frame)


def _analysed(home: Path) -> ReviewData:
    """The demo case scored by the tiny detector at 5 frames a second; its stored results."""
    from workbench.cases import ensure_demo_case
    from workbench.pipeline import Sampling
    from workbench.service import analyse_evidence
    from workbench.store import Store

    store = Store(home / "workbench.db")
    try:
        case_id = ensure_demo_case(store, home / "evidence", home / "demo" / "demo.mp4")
        sha = store.case_evidence(case_id)[0]["sha256"]
        analyse_evidence(store, sha, ["tiny-test"], Sampling(sample_fps=5))
        return review.load_review(store, sha)
    finally:
        store.close()


def test_the_loupe_shows_the_native_pixels_of_a_region(app_home, media):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.slider(key="frame_slider").set_value(7).run()
    at.toggle(key="loupe_on").set_value(True).run()
    assert not at.exception, at.exception
    at.number_input(key="loupe_x").set_value(300).run()
    at.number_input(key="loupe_y").set_value(100).run()
    at.selectbox(key="loupe_size").set_value(32).run()
    shown, caption = _loupe_image(at, media)
    frame = _decoded(app_home, 7)
    assert np.array_equal(shown, frame[100:132, 300:332]), caption
    assert caption.startswith("loupe · frame 7 · x 300-331, y 100-131 (32×32 px) · 1×")

    at.segmented_control(key="loupe_zoom").set_value(4).run()
    shown, _ = _loupe_image(at, media)
    assert shown.shape == (128, 128, 3)
    assert np.array_equal(shown, frame[100:132, 300:332].repeat(4, axis=0).repeat(4, axis=1))


def test_the_loupe_on_a_face_shows_its_box_at_native_pixels(app_home, tiny_detectors, media):
    data = _analysed(app_home)
    frame = data.frames_analysed[0]
    faces = review.faces_at(data, frame)
    assert faces, "the demo clip's first analysed frame has faces"
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.toggle(key="loupe_on").set_value(True).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="loupe_target").value == faces[0].track_id  # the first face by default
    shown, caption = _loupe_image(at, media)
    x1, y1, x2, y2 = review.face_region(_decoded(app_home, frame).shape, faces[0].box)
    assert np.array_equal(shown, _decoded(app_home, frame)[y1:y2, x1:x2]), caption


def test_the_timeline_shows_the_top_tracks_by_default(app_home, tiny_detectors):
    """Two faces on the demo: 'all' is the default below TOP_TRACKS; the filter can show the selected face only."""
    _analysed(app_home)
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert at.selectbox(key="track_filter").value == "all"
    assert at.selectbox(key="track_filter").options == ["all tracks (2)", "selected face only"]
    at.selectbox(key="track_filter").set_value("selected").run()
    at.selectbox(key="track_select").set_value(2).run()  # the face Grad-CAM and notes pin
    assert not at.exception, at.exception
    assert "showing the selected face T2 of 2 tracks" in [c.value for c in at.caption]


def test_a_portrait_frame_is_bounded_and_a_small_one_never_upscaled():
    from workbench.ui.views.review import FRAME_MAX_HEIGHT, frame_width

    assert frame_width((1920, 1080, 3)) == round(FRAME_MAX_HEIGHT * 1080 / 1920)
    assert frame_width((288, 360, 3)) == "content"  # its own 360 px at most: no blur
    assert frame_width((1080, 1920, 3)) == "content"  # the column narrows it; 16:9 stays under the bound
    assert frame_width((1000, 1000, 3)) == FRAME_MAX_HEIGHT


def test_the_play_toggle_echo_does_not_undo_a_key(app_home):
    """A rerun carrying the toggle as it was before a key switched Play off is not a click."""
    import time as clock

    at = AppTest.from_file(APP, default_timeout=120).run()
    at.session_state["_play_set"] = (False, clock.monotonic())  # as K leaves it, a moment ago
    at.toggle(key="play_toggle").set_value(True).run()
    assert not at.exception, at.exception
    assert at.session_state["sel_playing"] is False and at.toggle(key="play_toggle").value is False
    # Long after any key, the same change is the analyst's click.
    at.session_state["_play_set"] = (False, clock.monotonic() - 60)
    at.toggle(key="play_toggle").set_value(True).run()
    assert at.session_state["sel_playing"] is True
    at.toggle(key="play_toggle").set_value(False).run()  # stop the timer before the test ends
