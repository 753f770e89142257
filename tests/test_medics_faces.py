"""The Medics' face geometry and preprocessing on synthetic boxes and clips, with hand-computed values (upstream quirks included)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detectors import medics_faces as mf
from helpers import FIXTURES
from tools.fixtures.medics_geometry import CASES, synthetic_detections
from tools.fixtures.medics_geometry import row as region_row


@pytest.mark.parametrize("frame_count, want", [
    (300, list(range(0, 100, 10))), (95, list(range(0, 100, 10))), (91, list(range(0, 100, 10))),
    (90, list(range(0, 90, 10))), (1, [0]), (0, []),
])
def test_only_every_tenth_of_the_first_100_frames_is_searched(frame_count, want):
    assert mf.face_finding_frames(frame_count) == want


@pytest.mark.parametrize("w, h, factor, scale, size", [
    (1920, 1080, 0.25, 0.25, (480, 270)),
    (1280, 720, 0.25, 0.375, (480, 270)),
    (1080, 1920, 0.25, 0.25, (270, 480)),   # portrait: the long side is the height
    (1920, 1080, 0.5, 0.5, (960, 540)),     # the retry
    (1000, 562, 0.25, 0.48, (480, 269)),    # 562 x 0.48 = 269.76, truncated
])
def test_detection_frame_size(w, h, factor, scale, size):
    got = mf.detection_scale(w, h, factor)
    assert got == pytest.approx(scale)
    assert mf.detection_size(w, h, got) == size


def test_detection_scale_refuses_an_empty_frame():
    with pytest.raises(ValueError, match="positive"):
        mf.detection_scale(0, 720)


def test_mask_truncates_box_edges_with_int():
    mask, prob = mf.face_mask([[(2.9, 3.9, 8.2, 9.7)]], [[0.9]], (1, 20, 20))
    want = np.zeros((20, 20), bool)
    want[3:9, 2:8] = True
    assert np.array_equal(mask[0], want)
    assert prob[0, 3, 2] == np.float32(0.9) and prob[0, 9, 8] == 0


def test_a_top_just_above_the_frame_truncates_to_row_zero():
    mask, _ = mf.face_mask([[(2.0, -0.7, 8.0, 6.0)]], [[0.9]], (1, 20, 20))
    assert mask[0, 0:6, 2:8].all() and mask[0].sum() == 36


@pytest.mark.parametrize("box", [(2.0, -3.2, 8.0, 6.0), (-2.5, 4.0, 8.0, 9.0)])
def test_a_face_over_the_top_or_left_edge_marks_nothing(box):
    # int(-3.2) = -3: the slice -3:6 starts at row 17 and is empty; the same for a left edge at -2.5.
    mask, prob = mf.face_mask([[box]], [[0.9]], (1, 20, 20))
    assert not mask.any() and not prob.any()


def test_a_negative_top_slices_from_the_bottom_when_the_box_reaches_it():
    mask, _ = mf.face_mask([[(2.0, -3.2, 8.0, 19.5)]], [[0.9]], (1, 20, 20))
    rows = np.flatnonzero(mask[0].any(axis=1))
    assert rows.tolist() == [17, 18]


def test_a_later_box_overwrites_the_probability():
    _, prob = mf.face_mask([[(0, 0, 10, 10), (5, 5, 15, 15)], None], [[0.8, 0.95], None], (2, 20, 20))
    assert prob[0, 2, 2] == np.float32(0.8) and prob[0, 7, 7] == np.float32(0.95)
    assert not prob[1].any()


def test_mask_needs_one_box_list_per_sampled_frame():
    with pytest.raises(ValueError, match="2 box lists for 3"):
        mf.face_mask([None, None], [None, None], (3, 10, 10))


def test_empty_interior_frames_become_the_and_of_their_neighbours():
    mask = np.zeros((5, 4, 4), bool)
    mask[0, :2, :2] = True            # first frame
    mask[2, :3, :3] = True
    mask[4, 1:, 1:] = True            # last frame
    filled = mf.fill_gaps(mask)
    assert np.array_equal(filled[1], mask[0] & mask[2])
    assert np.array_equal(filled[3], mask[2] & mask[4])
    assert filled[1].sum() == 4 and filled[3].sum() == 4
    edges = np.zeros((3, 2, 2), bool)
    edges[1] = True
    assert np.array_equal(mf.fill_gaps(edges), edges)  # first and last frames are never filled


def moving_face(frames=range(10), prob=0.99, x0=10, size=20, step=1, n=10):
    """Per-sampled-frame box lists for one face sliding right by `step` px per sampled frame."""
    boxes = [None] * n
    probs = [None] * n
    for f in frames:
        boxes[f] = [(x0 + step * f, 20, x0 + step * f + size, 40)]
        probs[f] = [prob]
    return boxes, probs


def test_one_face_through_all_sampled_frames():
    boxes, probs = moving_face()
    (face,) = mf.face_regions(boxes, probs, (10, 60, 80), scale=0.25)
    # cols 10 .. 29 + 9 = 38 and rows 20 .. 39 in the shrunk frame, x 4 back to full size.
    assert (face.frame_from, face.frame_to) == (0, 99)
    assert face.rows == (80, 156) and face.cols == (40, 152)
    assert face.mask.shape == (10, 60, 80)


@pytest.mark.parametrize("frames, kept, span", [
    (range(3), False, None),          # frames 0..29: 29 < 30
    (range(4), True, (0, 39)),
    (range(2, 10), True, (20, 99)),
    (range(6, 10), True, (60, 99)),
])
def test_a_face_must_span_thirty_frames(frames, kept, span):
    boxes, probs = moving_face(frames)
    faces = mf.face_regions(boxes, probs, (10, 60, 80), scale=0.25)
    assert len(faces) == int(kept)
    if kept:
        assert (faces[0].frame_from, faces[0].frame_to) == span


def test_faces_are_ordered_by_mean_probability_not_size():
    big, big_p = moving_face(prob=0.85, x0=0, size=30)
    small, small_p = moving_face(prob=0.99, x0=50, size=10)
    boxes = [b + s for b, s in zip(big, small)]
    probs = [b + s for b, s in zip(big_p, small_p)]
    first, second = mf.face_regions(boxes, probs, (10, 60, 80), scale=1.0)
    assert first.cols == (50 + 0, 50 + 9 + 9) and second.cols == (0, 29 + 9)


def test_tied_faces_come_in_reversed_label_order():
    # equal mean probabilities: upstream's argsort keeps label order and reverses it, so the face
    # labelled last (the right one, in raster order) comes first
    left, left_p = moving_face(prob=0.9, x0=0, size=10)
    right, right_p = moving_face(prob=0.9, x0=50, size=10)
    boxes = [a + b for a, b in zip(left, right)]
    first, second = mf.face_regions(boxes, [a + b for a, b in zip(left_p, right_p)], (10, 60, 80), scale=1.0)
    assert first.cols[0] == 50 and second.cols[0] == 0


def test_a_missed_detection_between_overlapping_boxes_keeps_one_face():
    boxes, probs = moving_face()
    boxes[4] = probs[4] = None
    faces = mf.face_regions(boxes, probs, (10, 60, 80), scale=1.0)
    assert len(faces) == 1 and faces[0].mask[4].any()


def test_a_face_over_the_top_edge_in_every_frame_is_not_found():
    boxes = [[(10.0, -3.2, 30.0, 20.0)] for _ in range(10)]
    probs = [[0.99] for _ in range(10)]
    assert mf.face_regions(boxes, probs, (10, 60, 80), scale=1.0) == []


def test_a_face_over_the_top_edge_in_one_frame_is_bridged_by_its_neighbours():
    boxes, probs = moving_face()
    boxes[5] = [(15.0, -3.2, 35.0, 40.0)]
    (face,) = mf.face_regions(boxes, probs, (10, 60, 80), scale=1.0)
    assert face.frame_to == 99
    # frame 5 is the AND of frames 4 and 6 (cols 16..33), not its own box
    assert np.flatnonzero(face.mask[5].any(axis=0)).tolist() == list(range(16, 34))


def test_diagonal_neighbours_in_time_are_one_face():
    boxes = [[(0, 0, 5, 5)], [(5, 5, 10, 10)], [(10, 10, 15, 15)], [(15, 15, 20, 20)]]
    faces = mf.face_regions(boxes, [[0.9]] * 4, (4, 30, 30), scale=1.0)
    assert len(faces) == 1 and faces[0].rows == (0, 19)


def region(masks_boxes, shape=(20, 40), frame_from=0, frame_to=39):
    """A FaceRegion whose sampled-frame mask holds one filled rectangle (r0, r1, c0, c1 inclusive) per frame."""
    mask = np.zeros((len(masks_boxes), *shape), bool)
    for i, (r0, r1, c0, c1) in enumerate(masks_boxes):
        mask[i, r0:r1 + 1, c0:c1 + 1] = True
    return mf.FaceRegion(frame_from, frame_to, (0, 0), (0, 0), mask)


def test_2d_boxes_follow_the_interpolated_centre():
    boxes = mf.face_boxes_2d(region([(10, 19, 20, 29), (10, 19, 30, 39)]), scale=0.5)
    # side int(9 x 1.2) = 10; centres x 24.5 -> 34.5 in 10 steps, truncated; y 14; then x 2.
    xs = np.array([24, 25, 26, 27, 28, 30, 31, 32, 33, 34])
    want = np.stack([xs - 5, np.full(10, 9), xs + 5, np.full(10, 19)], axis=1) * 2
    assert np.array_equal(boxes, want)


def test_2d_interpolation_repeats_each_inner_centre():
    boxes = mf.face_boxes_2d(region([(0, 9, 0, 9), (0, 9, 10, 19), (0, 9, 20, 29)]), scale=1.0)
    assert len(boxes) == 20
    assert np.array_equal(boxes[9], boxes[10])


def test_2d_boxes_shift_inside_the_frame_in_upstream_order():
    # cols 0..19 x rows 10..17 of an 18 x 30 frame: side int(19 x 1.2) = 22, centre (9, 13).
    boxes = mf.face_boxes_2d(region([(10, 17, 0, 19), (10, 17, 0, 19)], shape=(18, 30)), scale=1.0)
    # x: -2 -> 0 and 20 -> 22; y: 24 > 18 moves the top up by 6 to -4 (left negative, as upstream).
    assert boxes.tolist() == [[0, -4, 22, 18]] * 10


def test_2d_boxes_copy_an_empty_first_or_last_frame_from_its_neighbour():
    reg = region([(0, 9, 0, 9), (0, 9, 10, 19), (0, 9, 20, 29)])
    reg.mask[0] = False
    boxes = mf.face_boxes_2d(reg, scale=1.0)
    assert np.array_equal(boxes[:10], np.repeat(boxes[:1], 10, axis=0))  # frames 0 and 1 share a centre


def test_2d_boxes_refuse_an_empty_interior_frame():
    reg = region([(0, 9, 0, 9), (0, 9, 10, 19), (0, 9, 20, 29)])
    reg.mask[1] = False
    with pytest.raises(ValueError, match="empty interior"):
        mf.face_boxes_2d(reg, scale=1.0)


@pytest.mark.parametrize("frame_from, frame_to, n_boxes, want", [
    (20, 99, 70, list(range(20, 52))),   # 32 frames
    (0, 39, 30, list(range(0, 30))),     # range(0, 38) cut at the 30 boxes
    (60, 99, 30, list(range(60, 90))),
    (0, 33, 30, list(range(0, 30))),
    (0, 31, 30, list(range(0, 30))),     # frame_to - 1 = 30
])
def test_2d_frames(frame_from, frame_to, n_boxes, want):
    reg = mf.FaceRegion(frame_from, frame_to, (0, 0), (0, 0), np.zeros((1, 1, 1), bool))
    assert mf.frames_2d(reg, n_boxes) == want


def test_last_frame_needed():
    regs = [mf.FaceRegion(0, 39, (0, 0), (0, 0), None), mf.FaceRegion(20, 99, (0, 0), (0, 0), None)]
    assert mf.last_frame_needed(regs) == 99 and mf.last_frame_needed([]) == 0


def test_square_pads_at_the_top_left():
    crop = np.full((1, 2, 4, 3), 200, np.uint8)
    out = mf.square_top_left(crop, size=4)
    assert (out[0, :2] == 200).all() and (out[0, 2:] == 0).all()


def test_square_resize_truncates_to_uint8():
    crop = np.zeros((1, 2, 2, 3), np.uint8)
    crop[:, :, 1] = 255
    out = mf.square_top_left(crop, size=4)
    # INTER_LINEAR at 2x: 0, 0.25 x 255 = 63.75, 191.25, 255 -> truncated, not rounded (64)
    assert out[0, 0, :, 0].tolist() == [0, 63, 191, 255]


def test_centre_crop_takes_offset_16_of_256():
    frames = np.arange(256 * 256 * 3, dtype=np.float64).reshape(1, 256, 256, 3) % 251
    out = mf.centre_crop(frames.astype(np.uint8))
    assert out.dtype == np.float64 and out.shape == (1, 224, 224, 3)
    assert np.array_equal(out, frames[:, 16:240, 16:240])


def test_3d_crop_uses_the_static_box_over_the_region_frames():
    video = np.zeros((100, 40, 60, 3), np.uint8)
    video[:, 5:15, 20:40] = 255                       # exactly the box, inclusive bounds
    reg = mf.FaceRegion(10, 49, (5, 14), (20, 39), None)
    clip = mf.crop_3d(video, reg)
    assert clip.shape == (39, 224, 224, 3)
    # a 10 x 20 crop in a 20 x 20 square: the top half is face, the bottom half the zero padding
    assert clip[:, :100].min() == 255 and clip[:, 130:].max() == 0


def test_3d_crop_refuses_an_empty_box():
    with pytest.raises(ValueError, match="empty 3-D crop"):
        mf.crop_3d(np.zeros((10, 40, 60, 3), np.uint8), mf.FaceRegion(20, 49, (5, 14), (20, 39), None))


def rgb_clip(t=2, size=224, rgb=(255, 0, 128)):
    clip = np.zeros((t, size, size, 3), np.float64)
    clip[...] = rgb
    return clip


def test_3d_inputs_per_normalisation():
    i3d = mf.model_input_3d(rgb_clip(), "i3d")
    assert i3d.shape == (3, 2, 224, 224) and i3d.dtype == torch.float32
    assert i3d[:, 0, 0, 0].tolist() == pytest.approx([1.0, -1.0, 128 / 255 * 2 - 1], abs=1e-6)
    raw = mf.model_input_3d(rgb_clip(), "nil")
    assert raw[:, 0, 0, 0].tolist() == [255.0, 0.0, 128.0]
    want = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), mf.IMAGENET_MEAN, mf.IMAGENET_STD)]
    at224 = mf.model_input_3d(rgb_clip(), "224_imagenet")
    assert at224.shape == (3, 2, 224, 224) and at224[:, 1, 5, 7].tolist() == pytest.approx(want, abs=1e-5)
    at112 = mf.model_input_3d(rgb_clip(), "112_imagenet")
    assert at112.shape == (3, 2, 112, 112) and at112[:, 0, 50, 60].tolist() == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="unknown Medics normalisation"):
        mf.model_input_3d(rgb_clip(), "kinetics")


def test_every_3d_architecture_has_a_normalisation():
    from detectors.medics_models import MEMBERS_3D

    assert {kind for _, _, kind in MEMBERS_3D} == set(mf.NORM_OF_3D)


def test_2d_input_is_bgr_with_rgb_order_statistics_and_mirrors_even_frames():
    crop = np.zeros((40, 30, 3), np.uint8)
    crop[..., 0] = 255                                   # pure red
    crop[:, :10, 1] = 255                                # a green left edge, to see the mirror
    x = mf.model_input_2d([crop, crop, crop])
    assert x.shape == (1, 3, 3, 256, 256) and x.dtype == torch.float32
    # channel 0 holds BLUE (0) normalised with the RED mean/std, channel 2 RED (1) with the blue ones
    assert x[0, 0, 1, 128, 128].item() == pytest.approx((0 - 0.485) / 0.229, abs=1e-5)
    assert x[0, 2, 1, 128, 128].item() == pytest.approx((1 - 0.406) / 0.225, abs=1e-5)
    assert x[0, 1, 1, 128, 5] > x[0, 1, 1, 128, 250]           # frame 1 as is: green on the left
    assert torch.equal(x[0, :, 0], torch.flip(x[0, :, 1], dims=(-1,)))
    assert torch.equal(x[0, :, 2], x[0, :, 0])


def test_2d_input_needs_crops():
    with pytest.raises(ValueError, match="no 2-D face crops"):
        mf.model_input_2d([])
    with pytest.raises(ValueError, match=r"empty 2-D face crop\(s\) at \[1\]"):
        mf.model_input_2d([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4, 3), np.uint8)])


def test_2d_crops_slice_the_full_frame_with_box_k_on_frame_k():
    video = np.arange(40)[:, None, None, None] * np.ones((40, 20, 30, 3), np.uint8)
    reg = mf.FaceRegion(3, 39, (0, 0), (0, 0), None)
    boxes = np.array([[0, 0, 10, 5], [2, 1, 12, 6]])
    crops = mf.crops_2d(video, reg, boxes)
    assert [c.shape for c in crops] == [(5, 10, 3), (5, 10, 3)]
    assert crops[0][0, 0, 0] == 3 and crops[1][0, 0, 0] == 4


def test_2d_crop_sizes_are_the_slices_crops_2d_cuts():
    video = np.zeros((40, 20, 30, 3), np.uint8)
    reg = mf.FaceRegion(3, 39, (0, 0), (0, 0), None)
    # inside, past the right/bottom edge, and a negative start that slices from the far edge
    boxes = np.array([[0, 0, 10, 5], [25, 15, 40, 26], [-4, -3, 12, 6], [-4, 2, 2, 6]])
    crops = mf.crops_2d(video, reg, boxes)
    assert mf.crop_sizes_2d(reg, boxes, (20, 30)) == [c.shape[:2] for c in crops] == [(5, 10), (5, 5), (0, 0), (4, 0)]


# What np.asarray did with such crops under numpy 1.21.1 (FakeFinder's pin), run in a throwaway
# Python 3.9 venv: equal heights with a differing width raised "ValueError: could not broadcast
# input array from shape (10,20,3) into shape (10,)"; differing heights gave an object array.
@pytest.mark.parametrize("sizes, stacked", [
    ([(10, 20), (10, 20)], True),              # uint8 (2, 10, 20, 3)
    ([(10, 20), (10, 21), (10, 20)], False),   # ValueError
    ([(10, 20), (11, 20), (10, 20)], True),    # object (3,)
    ([(10, 20), (11, 21)], True),              # object (2,)
])
def test_fakefinder_could_stack_2d_crops_unless_only_widths_differ(sizes, stacked):
    assert mf.fakefinder_stacks_2d(sizes) is stacked


def test_shrink_frame_matches_the_detection_size():
    frame = np.zeros((1080, 1920, 3), np.uint8)
    frame[:, 960:] = (255, 0, 0)
    small = mf.shrink_frame(frame, mf.detection_scale(1920, 1080))
    assert small.shape == (270, 480, 3)
    assert small[0, 0].tolist() == [0, 0, 0] and small[0, -1].tolist() == [255, 0, 0]


class ScriptedDetector:
    """A stand-in for MTCNN: per call, either raises or returns the boxes of one face in `frames` (at any scale)."""

    def __init__(self, *script):
        self.script, self.scales = list(script), []

    def __call__(self, scale):
        self.scales.append(scale)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        boxes, probs = moving_face(step)
        return boxes, probs, (10, 60, 80)


def test_face_search_stops_at_the_first_scale_that_finds_a_face():
    detect = ScriptedDetector(range(10))
    found = mf.search_faces(detect, 1920, 1080)
    assert detect.scales == [0.25] and len(found.regions) == 1 and found.scale == 0.25


def test_face_search_retries_at_twice_the_size_when_no_face_is_kept():
    detect = ScriptedDetector(range(3), range(10))       # first: a 29-frame face only
    found = mf.search_faces(detect, 1280, 720)
    assert detect.scales == pytest.approx([0.375, 0.75])
    assert found.scale == pytest.approx(0.75) and found.regions[0].cols == (13, 50)  # 10..38 / 0.75
    assert [a[0] for a in found.attempts] == [0.25, 0.5]


def test_face_search_retries_smaller_after_running_out_of_memory_then_bigger():
    detect = ScriptedDetector(RuntimeError("CUDA out of memory"), [], range(10))
    found = mf.search_faces(detect, 1920, 1080)
    assert detect.scales == [0.25, 0.125, 0.5]
    assert found.attempts[0] == (0.25, "failed: CUDA out of memory") and len(found.regions) == 1


def test_face_search_names_a_failed_retry_and_finds_nothing():
    detect = ScriptedDetector([], RuntimeError("CUDA out of memory"))
    found = mf.search_faces(detect, 1920, 1080)
    assert found.regions == [] and found.attempts == [(0.25, "0 face region(s)"), (0.5, "failed: CUDA out of memory")]


def test_face_search_does_not_hide_other_errors():
    with pytest.raises(ValueError, match="bad boxes"):
        mf.search_faces(ScriptedDetector(ValueError("bad boxes")), 1920, 1080)


def upstream_region_rows() -> dict[int, list]:
    """case -> FakeFinder's regions for it (tests/fixtures/medics-regions.tsv)."""
    rows = [l for l in (FIXTURES / "medics-regions.tsv").read_text().splitlines() if l and not l.startswith("#")]
    assert rows[0] == "case\tregions"
    return {int(case): json.loads(regions) for case, regions in (r.split("\t") for r in rows[1:])}


def test_regions_and_2d_boxes_match_fakefinders_own_functions_on_seeded_boxes():
    want = upstream_region_rows()
    assert len(want) == CASES
    over_edge = several = 0
    for case in range(CASES):
        boxes, probs, shape, scale = synthetic_detections(case)
        found = mf.face_regions(boxes, probs, shape, scale)
        got = region_row([((r.frame_from, r.frame_to), r.rows, r.cols) for r in found], [r.mask for r in found],
                         [mf.face_boxes_2d(r, scale) for r in found])
        assert got == want[case], f"case {case}"
        over_edge += any(b is not None and (b[:, :2] <= -1).any() for b in boxes)
        several += len(found) >= 2
    # the seeded cases exercise the negative-slice quirk and the order of several faces
    assert over_edge >= 20 and several >= 10
