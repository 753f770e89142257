"""Linking detections into tracks."""
from __future__ import annotations

import pytest

from workbench.faces import Face
from workbench.geometry import interpolate, iou
from workbench.tracking import Tracker, fill_between


def face(x, y, s=50):
    return Face(box=(x, y, x + s, y + s), prob=0.99)


def test_iou_and_interpolate():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert interpolate((0, 0, 10, 10), (10, 20, 30, 40), 0.5) == (5, 10, 20, 25)


def test_two_faces_keep_their_ids_while_moving():
    tracker = Tracker()
    for i in range(10):
        # Listed in changing order: ids must follow geometry, not list position.
        faces = [face(100 + 10 * i, 100), face(400 - 10 * i, 120)]
        tracker.update(i * 5, faces if i % 2 else faces[::-1])
    assert len(tracker.tracks) == 2
    left = next(t for t in tracker.tracks if t.points[0].box[0] == 100)
    assert [left.points[f].box[0] for f in left.frames] == [100 + 10 * i for i in range(10)]


def test_fast_motion_at_low_sample_rate_still_links():
    tracker = Tracker()
    tracker.update(0, [face(100, 100, 80)])
    tracker.update(12, [face(150, 150, 80)])  # no overlap left to speak of: IoU ~0.14
    tracker.update(24, [face(210, 160, 80)])  # centre moved 0.76 of the face size
    assert len(tracker.tracks) == 1 and tracker.tracks[0].frames == [0, 12, 24]


def test_far_jump_starts_a_new_track():
    tracker = Tracker()
    tracker.update(0, [face(100, 100, 80)])
    tracker.update(12, [face(400, 100, 80)])
    assert len(tracker.tracks) == 2


def test_face_that_leaves_and_a_new_face_gets_a_new_id():
    tracker = Tracker(max_missed=1)
    tracker.update(0, [face(100, 100)])
    tracker.update(1, [])
    tracker.update(2, [])
    tracker.update(3, [face(100, 100)])
    assert [t.id for t in tracker.tracks] == [1, 2]


def test_brief_miss_keeps_the_id():
    tracker = Tracker(max_missed=2)
    tracker.update(0, [face(100, 100)])
    tracker.update(1, [])
    tracker.update(2, [face(104, 100)])
    assert len(tracker.tracks) == 1 and tracker.tracks[0].frames == [0, 2]


def test_fill_between_interpolates_only_inside():
    tracker = Tracker()
    (track, _, _), = tracker.update(0, [face(0, 0, 10)])
    tracker.update(10, [face(10, 0, 10)])
    points = fill_between(track, 0, 10, [0, 5, 10, 12])
    assert [p.frame for p in points] == [5]
    assert points[0].box == (5, 0, 15, 10) and not points[0].detected


def doubtful(x, y, s=50, prob=0.8):
    return Face(box=(x, y, x + s, y + s), prob=prob)


def test_low_confidence_track_is_confirmed_after_consecutive_detections():
    tracker = Tracker(confirm_hits=3)
    tracker.update(0, [doubtful(100, 100)])
    tracker.update(5, [doubtful(104, 100)])
    assert tracker.tracks == [] and tracker.tentative_since() == 0
    tracker.update(10, [doubtful(108, 100)])
    assert [t.id for t in tracker.tracks] == [1]
    assert tracker.tracks[0].frames == [0, 5, 10] and tracker.tentative_since() is None


def test_isolated_low_confidence_detection_is_dropped():
    tracker = Tracker(confirm_hits=3)
    tracker.update(0, [face(300, 100)])
    tracker.update(5, [face(300, 100), doubtful(100, 100)])
    tracker.update(10, [face(300, 100)])
    tracker.update(15, [face(300, 100)])
    assert [t.id for t in tracker.tracks] == [1] and tracker.tracks[0].points[0].box[0] == 300
    assert tracker.unconfirmed() == 1 and tracker.tentative_since() is None


def test_low_confidence_detections_with_a_gap_are_not_confirmed():
    tracker = Tracker(confirm_hits=3, max_missed=2)
    for frame, faces in [(0, [doubtful(100, 100)]), (5, [doubtful(100, 100)]), (10, []),
                         (15, [doubtful(100, 100)]), (20, [doubtful(100, 100)])]:
        tracker.update(frame, faces)
    assert tracker.tracks == [] and tracker.unconfirmed() == 2


def test_one_confident_detection_confirms_a_track_at_once():
    tracker = Tracker(confirm_hits=3)
    tracker.update(0, [doubtful(100, 100)])
    tracker.update(5, [doubtful(100, 100, prob=0.95)])
    assert [t.frames for t in tracker.tracks] == [[0, 5]]
