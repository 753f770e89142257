"""FakeFinder's detectors scored as their authors scored them: crops at frame edges, interpolation, the 127-face cap, fp16 on a GPU."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from detectors import boken, selimsef


def gradient_frame(h: int, w: int) -> np.ndarray:
    """Every pixel different: column index in red, row index in green, a checker in blue."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs % 256, ys % 256, ((xs // 7 + ys // 5) % 2) * 255], axis=-1).astype(np.uint8)


def test_selimsef_clips_a_face_at_the_frame_edge_and_centres_what_is_left():
    frame = gradient_frame(360, 640)
    box = (5.7, 50.2, 95.9, 170.4)  # near the left edge: the padded box would start at x = -25
    assert selimsef.upstream_rect(frame.shape, box) == (0, 10, 125, 210)  # ints, +w//3 and +h//3, clipped
    crop = selimsef.Selimsef().cut(frame, box, None)
    assert crop.shape == (380, 380, 3)
    # 125 x 200 grows by 380/200 = 1.9: 237 x 380 (cubic), centred: 71 black columns on each side.
    expected = cv2.resize(frame[10:210, 0:125], (237, 380), interpolation=cv2.INTER_CUBIC)
    assert not crop[:, :71].any() and not crop[:, 71 + 237:].any()
    assert np.array_equal(crop[:, 71:71 + 237], expected)
    # Our generic cut keeps the face centred by padding outside the frame instead: a different input.
    generic = selimsef.Selimsef.__mro__[2].cut(selimsef.Selimsef(), frame, box, None)
    assert not np.array_equal(generic, crop)


def test_boken_clamps_the_square_into_the_frame_and_resizes_bilinearly():
    frame = gradient_frame(480, 640)
    box = (600.0, 300.0, 700.0, 420.0)  # runs off the right edge
    # side int(120 * 1.2) = 144 around (650, 360); left 578, top 288; shrunk to the 62 px left.
    assert boken.upstream_square(frame.shape, box) == (578, 288, 640, 350)
    crop = boken.Boken().cut(frame, box, None)
    region = frame[288:350, 578:640]
    assert np.array_equal(crop, cv2.resize(region, (224, 224), interpolation=cv2.INTER_LINEAR))
    big = frame[0:400, 0:400]
    shrunk = boken.Boken().cut(big, (50.0, 50.0, 300.0, 300.0), None)  # 300 px square down to 224
    assert np.array_equal(shrunk, cv2.resize(big[25:325, 25:325], (224, 224), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(shrunk, cv2.resize(big[25:325, 25:325], (224, 224), interpolation=cv2.INTER_AREA))


def test_heatmaps_go_back_where_the_upstream_crops_came_from():
    frame = np.zeros((360, 640, 3), np.uint8)
    heat = np.ones((380, 380), np.float32)
    placed = selimsef.Selimsef().place_heatmap(frame, (5.7, 50.2, 95.9, 170.4), None, heat)
    changed = np.argwhere(placed.any(axis=-1))
    assert changed[:, 0].min() == 10 and changed[:, 0].max() == 209
    assert changed[:, 1].min() == 0 and changed[:, 1].max() == 124
    placed = boken.Boken().place_heatmap(np.zeros((480, 640, 3), np.uint8), (600.0, 300.0, 700.0, 420.0), None,
                                         np.ones((224, 224), np.float32))
    changed = np.argwhere(placed.any(axis=-1))
    assert (changed[:, 1].min(), changed[:, 1].max(), changed[:, 0].min(), changed[:, 0].max()) == (578, 639, 288, 349)


def test_selimsef_scores_at_most_127_faces_per_video_as_upstream():
    low = np.full(127, 0.1)
    high = np.full(90, 0.95)
    scores = np.concatenate([low, high])[None]  # one member, 217 faces in frame order
    assert selimsef.aggregate_selimsef(scores) == pytest.approx(selimsef.confident_strategy(low))
    # Without the cap the 90 confident fakes would decide (more than 11 and more than 217 // 2.5).
    assert selimsef.confident_strategy(scores[0]) == pytest.approx(0.95)


def test_fp16_only_where_the_authors_ran_it_and_only_on_a_gpu():
    import torch

    assert selimsef.Selimsef("cuda").compute_dtype() == torch.float16
    assert selimsef.Selimsef("cpu").compute_dtype() == torch.float32
    assert boken.Boken("cuda").compute_dtype() == torch.float32
    x = selimsef.Selimsef("cpu").preprocess(np.zeros((1, 380, 380, 3), np.uint8))
    assert x.dtype == torch.float32
