"""How a Grad-CAM heatmap is shown: opacity, the in-place re-weighting, the colour bar, equal-size panels; and the
timeline's shaded ranges and the filmstrip's frames and colours (workbench/review.py)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from explain.heatmap_view import PLACED_OPACITY, blend_at, colour_bar, context_square, fit_square, reweight
from workbench import review
from workbench.geometry import blend_heatmap


def _image(seed: int = 0, shape=(32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _heat(seed: int = 1, shape=(32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_opacity_moves_the_overlay_from_the_image_to_the_colour():
    image, heat = _image(), _heat()
    assert np.array_equal(blend_at(image, heat, 0.0), image)
    colour = blend_at(np.zeros_like(image), heat, 1.0)
    assert np.array_equal(blend_at(image, heat, 1.0), colour)
    half = blend_at(image, heat, 0.5).astype(int)
    assert np.abs(half - (image.astype(int) + colour) / 2).max() <= 1
    with pytest.raises(ValueError, match="opacity"):
        blend_at(image, heat, 1.5)


def test_reweight_recovers_a_placed_heatmap_at_any_opacity():
    frame, heat = _image(2, (40, 60, 3)), _heat(3, (20, 30))
    placed = frame.copy()
    placed[10:30, 15:45] = blend_heatmap(frame[10:30, 15:45], heat)  # as place_heatmap does, at its default
    for opacity in (0.0, 0.2, 0.8, 1.0):
        expected = frame.copy()
        expected[10:30, 15:45] = blend_heatmap(frame[10:30, 15:45], heat, opacity)
        got = reweight(frame, placed, opacity)
        # 8-bit rounding of `placed`, scaled by opacity / PLACED_OPACITY, is the only error.
        assert np.abs(got.astype(int) - expected).max() <= int(np.ceil(0.5 * opacity / PLACED_OPACITY)) + 1
        assert np.array_equal(got[:10], frame[:10])  # outside the face: untouched
    assert not np.array_equal(reweight(frame, placed, 0.9), reweight(frame, placed, 0.2))


def test_colour_bar_runs_blue_to_red_with_labels():
    bar = colour_bar(256, 18, 16)
    assert bar.shape == (34, 256, 3)
    left, right = bar[5, 0].astype(int), bar[5, -1].astype(int)
    assert left[2] > left[0] and right[0] > right[2]  # jet: blue at 0, red at 1
    labels = bar[18:]
    for a, b in ((0, 20), (118, 138), (236, 256)):  # "0", "0.5" and "1" are drawn under each end and the middle
        assert (labels[:, a:b] < 128).any(), (a, b)


def test_panels_are_the_same_size_and_keep_real_pixels():
    small, wide = _image(4, (8, 8, 3)), _image(5, (30, 60, 3))
    big = fit_square(small, 64)
    assert big.shape == (64, 64, 3) and fit_square(wide, 64).shape == (64, 64, 3)
    assert set(map(tuple, big.reshape(-1, 3))) <= set(map(tuple, small.reshape(-1, 3)))  # nearest: no new colours
    assert context_square(np.zeros((100, 200, 3), np.uint8), (90, 40, 110, 60)) == (80, 30, 120, 70)
    assert context_square(np.zeros((100, 200, 3), np.uint8), (0, 0, 20, 20)) == (0, 0, 40, 40)  # slid inside
    assert context_square(np.zeros((30, 200, 3), np.uint8), (90, 0, 110, 20)) == (80, 0, 120, 30)  # cut: frame too low


def _data(frames_analysed, scores, threshold=0.5):
    det = review.DetectorView("d", "1", "ok", 0.5, None, threshold, "max", frames_analysed, None, "t", 1,
                              frame_scores=scores)
    return review.ReviewData("ab" * 32, {"fps": 25.0, "frames": 100}, 1, frames_analysed, {}, {"d": det})


def test_filmstrip_picks_evenly_and_bands_each_frame_by_its_highest_face():
    data = _data(list(range(0, 100, 5)), {(0, 1): 0.9, (0, 2): 0.1, (5, 1): 0.45, (10, 1): 0.1})
    strip = review.filmstrip(data, "d", 0.5, limit=4)
    assert [s["frame"] for s in strip] == [0, 30, 65, 95]
    assert strip[0] == {"frame": 0, "score": 0.9, "band": "flagged", "colour": review.BAND_COLOURS["flagged"]}
    assert strip[1]["score"] is None and strip[1]["colour"] == review.BAND_COLOURS[None]
    full = review.filmstrip(data, "d", 0.5, limit=50)
    assert [s["band"] for s in full[:3]] == ["flagged", "uncertain", "not flagged"]
    assert all(s["score"] is None for s in review.filmstrip(data, None, 0.5))


def test_bordered_thumbnail_is_small_and_framed_in_its_colour():
    thumb = review.bordered_thumbnail(_image(6, (360, 640, 3)), "#d62728", width=128, border=4)
    assert thumb.shape == (int(round(360 * 120 / 640)) + 8, 128, 3)
    assert tuple(thumb[0, 0]) == (0xD6, 0x27, 0x28) and tuple(thumb[-1, -1]) == (0xD6, 0x27, 0x28)


def test_shaded_ranges_cover_their_frames_and_say_when():
    fig = review.shade_ranges(go.Figure(), [(30, 10, "note 2")], fps=25.0)
    (shape,) = fig.layout.shapes
    assert (shape.x0, shape.x1) == (9.5, 30.5)
    assert fig.layout.annotations[0].text == "note 2: frames 10–30 (0.40–1.20 s)"
