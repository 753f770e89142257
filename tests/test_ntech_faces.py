"""NTechLab video geometry: sampling, torchvision-0.5 detector resize, IoU tracker, crops, frame-model transforms (hand-computed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors import ntech_faces as nf


# -- frames ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fps, step", [(29.97, 2), (30, 2), (25, 2), (24, 2), (22, 1), (23, 2), (60, 4),
                                       (59.94, 4), (10, 1), (8, 1), (7.9, 0), (7, 0)])
def test_sampling_step_is_round_of_truncated_fps_over_15(fps, step):
    assert nf.sampling_step(fps) == step


def test_sampled_frames_and_detector_frames():
    assert nf.sampled_frame_indices(10, 29.97) == [0, 2, 4, 6, 8]
    assert nf.sampled_frame_indices(9, 60) == [0, 4, 8]
    assert nf.sampled_frame_indices(100, 7) == []  # step 0: upstream samples nothing
    assert nf.sampled_frame_indices(0, 30) == []
    assert nf.detector_positions(10) == [0, 3, 6, 9]
    assert nf.detector_positions(3) == [0]
    assert nf.detector_positions(0) == []


# -- detector input -------------------------------------------------------------------------------
@pytest.mark.parametrize("hw, resized, padded", [
    ((1080, 1920), (288, 512), (288, 512)),
    ((720, 1280), (288, 512), (288, 512)),
    ((480, 640), (384, 512), (384, 512)),
    ((1088, 1920), (290, 512), (320, 512)),  # 1088 * 512 / 1920 = 290.13
    ((1920, 1080), (512, 288), (512, 288)),  # portrait: the long side is still the one set to 512
    ((100, 180), (284, 512), (288, 512)),  # upscaled: 100 * 512 / 180 = 284.4
    ((720, 1000), (368, 512), (384, 512)),  # 368.64 is floored, not rounded
    ((512, 512), (512, 512), (512, 512)),
])
def test_detector_resize_sets_the_long_side_to_512_then_pads_to_32(hw, resized, padded):
    assert nf.detector_resize(*hw) == resized
    assert nf.padded_size(*resized) == padded


def test_detector_input_subtracts_bgr_mean_then_zero_pads_bottom_right():
    frame = np.empty((100, 180, 3), np.uint8)
    frame[:] = (110, 120, 130)  # BGR
    batch, sizes = nf.detector_input([frame, frame])
    assert sizes == [(284, 512), (284, 512)]
    assert batch.shape == (2, 3, 288, 512)
    assert torch.allclose(batch[:, :, :284, :], torch.tensor([6.0, 3.0, 7.0]).view(1, 3, 1, 1).expand(2, 3, 284, 512))
    assert torch.all(batch[:, :, 284:, :] == 0)


def test_detector_input_is_bilinear_without_antialias():
    # a 2 x 4 frame becomes 256 x 512 (x128); output column x samples input (x + 0.5) / 128 - 0.5
    frame = np.zeros((2, 4, 3), np.uint8)
    frame[:, :, 0] = np.array([104, 114, 124, 134], np.uint8)  # B channel: 0, 10, 20, 30 after the mean
    batch, sizes = nf.detector_input([frame])
    assert sizes == [(256, 512)]
    row = batch[0, 0, 0]
    assert row[0].item() == pytest.approx(0.0)  # clamped to the first pixel
    assert row[255].item() == pytest.approx(10 + (255.5 / 128 - 0.5 - 1) * 10, abs=1e-4)  # 14.9609
    assert row[511].item() == pytest.approx(30.0)


def test_detector_input_resamples_with_in_over_out_not_one_over_scale():
    # 100 rows -> 284: torch 1.4's kernel maps output row y to (y + 0.5) * 100 / 284 - 0.5;
    # interpolate(scale_factor=512/180) today would use 180 / 512 instead (69.988 at row 200)
    frame = np.zeros((100, 180, 3), np.uint8)
    frame[:, :, 0] = (104 + np.arange(100, dtype=np.uint8))[:, None]  # B channel = row index after the mean
    batch, _ = nf.detector_input([frame])
    assert batch[0, 0, 200, 7].item() == pytest.approx(200.5 * 100 / 284 - 0.5, abs=1e-4)  # 69.5986


def test_detector_input_rejects_no_frames_and_grey_frames():
    with pytest.raises(ValueError, match="no frames"):
        nf.detector_input([])
    with pytest.raises(ValueError, match="BGR frame"):
        nf.detector_input([np.zeros((10, 10), np.uint8)])


def test_detections_scale_with_the_unpadded_size_upstream_quirk():
    # 1920 x 1088: resized 512 x 290, padded to 512 x 320; DSFD rows are fractions of the padded tensor
    rows = np.array([[0.9, 0.25, 0.5, 0.5, 0.75],
                     [0.3, 0.1, 0.1, 0.2, 0.2],  # not strictly above 0.3: dropped
                     [0.31, 0.0, 0.0, 1.0, 1.0]], np.float32)
    boxes, scores = nf.detections_to_frame(rows, (290, 512), (1088, 1920))
    assert scores.tolist() == pytest.approx([0.9, 0.31])
    assert boxes.dtype == np.float32
    # x: 0.25 * 512 = 128 -> * 1920 / 512 = 480; y: 0.5 * 290 = 145 -> * 1088 / 290 = 544
    # (with the padded height it would be 0.5 * 320 * 1088 / 290 = 600.3)
    assert boxes[0].tolist() == pytest.approx([480.0, 544.0, 960.0, 816.0], abs=1e-3)
    assert boxes[1].tolist() == pytest.approx([0.0, 0.0, 1920.0, 1088.0], abs=1e-3)


def test_detections_without_padding_map_to_the_frame_exactly():
    rows = np.array([[0.95, 0.5, 0.25, 0.75, 0.5]], np.float32)
    boxes, _ = nf.detections_to_frame(rows, (288, 512), (1080, 1920))
    assert boxes[0].tolist() == pytest.approx([960.0, 270.0, 1440.0, 540.0], abs=1e-3)
    empty_boxes, empty_scores = nf.detections_to_frame(np.zeros((0, 5), np.float32), (288, 512), (1080, 1920))
    assert empty_boxes.shape == (0, 4) and empty_scores.shape == (0,)


# -- tracker --------------------------------------------------------------------------------------
def frame(*faces):
    """One detector frame's detections from (box, score) pairs."""
    boxes = np.array([box for box, _ in faces], np.float32).reshape(-1, 4)
    return boxes, np.array([score for _, score in faces], np.float32)


def walking(n, x0=0.0, dx=1.0, score=0.95, y=0.0):
    """n frames of one 10 x 10 face moving dx pixels right per frame."""
    return [frame(((x0 + k * dx, y, x0 + k * dx + 10, y + 10), score)) for k in range(n)]


def test_iou_is_plain_continuous():
    assert nf.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert nf.iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching boxes do not overlap (no +1)
    assert nf.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0


def test_tracker_keeps_a_long_confident_track():
    tracks = nf.track_iou(walking(8))
    assert len(tracks) == 1
    assert tracks[0].start == 0 and len(tracks[0].boxes) == 8
    assert tracks[0].boxes[-1] == (7.0, 0.0, 17.0, 10.0)
    assert tracks[0].max_score == pytest.approx(0.95)


def test_tracker_drops_short_or_unconfident_tracks():
    assert nf.track_iou(walking(6)) == []  # < 7 detections
    assert len(nf.track_iou(walking(7))) == 1
    assert nf.track_iou(walking(8, score=0.85)) == []  # best score < 0.9
    # one confident detection is enough
    dets = walking(8, score=0.5)
    dets[4] = frame(((4.0, 0.0, 14.0, 10.0), 0.91))
    assert len(nf.track_iou(dets)) == 1


def test_a_float32_score_of_0_9_is_below_sigma_h():
    # upstream compares a float32 score scalar with the Python 0.9: numpy 1.21 promotes both to float64,
    # and float32(0.9) = 0.89999998
    dets = walking(8, score=0.9)
    assert dets[0][1].dtype == np.float32
    assert nf.track_iou(dets) == []
    assert len(nf.track_iou(walking(8, score=0.9000001))) == 1


def test_a_missed_frame_ends_a_track_and_low_scores_are_misses():
    dets = walking(7) + [frame()] + walking(3, x0=8)
    tracks = nf.track_iou(dets)
    assert [(t.start, len(t.boxes)) for t in tracks] == [(0, 7)]  # the 3 after the gap are too few
    dets = walking(16)
    dets[8] = frame(((8.0, 0.0, 18.0, 10.0), 0.29))  # below sigma_l 0.3: ignored
    assert [(t.start, len(t.boxes)) for t in nf.track_iou(dets)] == [(0, 8), (9, 7)]


def test_a_jump_below_iou_03_starts_a_new_track():
    # the IoU of 10-wide boxes moved by 5 is 1/3 (kept), by 6 is 4/16 = 0.25 (a new track)
    assert [len(t.boxes) for t in nf.track_iou(walking(8, dx=5))] == [8]
    assert nf.track_iou(walking(8, dx=6)) == []


def test_two_faces_each_take_their_best_match():
    left = walking(8)
    right = walking(8, x0=100)
    dets = [frame(((l[0][0]).tolist(), 0.95), ((r[0][0]).tolist(), 0.92)) for l, r in zip(left, right)]
    tracks = nf.track_iou(dets)
    assert [t.boxes[0][0] for t in tracks] == [0.0, 100.0]
    assert [t.max_score for t in tracks] == pytest.approx([0.95, 0.92])
    # the order is: tracks that ended first, then those still active at the end
    dets = [frame(((l[0][0]).tolist(), 0.95), ((r[0][0]).tolist(), 0.92)) for l, r in zip(walking(12), walking(12, x0=100))]
    dets[9:] = [frame(((r[0][0]).tolist(), 0.92)) for r in walking(12, x0=100)[9:]]
    assert [(t.boxes[0][0], len(t.boxes)) for t in nf.track_iou(dets)] == [(0.0, 9), (100.0, 12)]


def test_a_detection_taken_by_an_earlier_track_is_gone_for_later_ones():
    # two tracks overlap one detection; the first (older) track takes it, the second ends
    dets = [frame(((0.0, 0.0, 10.0, 10.0), 0.95), ((2.0, 0.0, 12.0, 10.0), 0.95)) for _ in range(7)]
    dets.append(frame(((1.0, 0.0, 11.0, 10.0), 0.95)))
    tracks = nf.track_iou(dets)
    assert [(t.boxes[0][0], len(t.boxes)) for t in tracks] == [(2.0, 7), (0.0, 8)]
    assert tracks[1].boxes[-1] == (1.0, 0.0, 11.0, 10.0)


def test_equal_ious_go_to_the_first_detection():
    dets = walking(7)
    # 5 right and 5 left of the last box (6, 0, 16, 10) overlap it equally (IoU 1/3)
    dets.append(frame(((11.0, 0.0, 21.0, 10.0), 0.95), ((1.0, 0.0, 11.0, 10.0), 0.95)))
    tracks = nf.track_iou(dets)
    long_track = [t for t in tracks if len(t.boxes) == 8]
    assert long_track and long_track[0].boxes[-1] == (11.0, 0.0, 21.0, 10.0)


# -- interpolation --------------------------------------------------------------------------------
def test_interpolation_fills_every_sampled_frame_between_detections():
    track = nf.Track(start=2, boxes=[(0.0, 0.0, 10.0, 10.0), (30.0, 3.0, 40.0, 13.0)], max_score=0.95)
    frames, boxes = nf.interpolate_track(track)
    assert frames.tolist() == [6, 7, 8, 9]  # detector positions 2 and 3 are sampled frames 6 and 9
    assert boxes.dtype == np.float32
    assert boxes.tolist() == [[0, 0, 10, 10], [10, 1, 20, 11], [20, 2, 30, 12], [30, 3, 40, 13]]


def test_a_seven_detection_track_covers_19_sampled_frames():
    (frames, boxes), = nf.face_tracks(walking(7))
    assert frames.tolist() == list(range(19))
    assert boxes[1].tolist() == pytest.approx([1 / 3, 0, 10 + 1 / 3, 10])
    assert boxes[18].tolist() == [6, 0, 16, 10]


# -- crops ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("box, bounds", [
    ((100, 200, 140, 260), (90, 185, 150, 275)),  # 40 x 60 -> 60 x 90 about (120, 230)
    ((4, 4, 13, 13), (1, 1, 15, 15)),  # 1.75 and 15.25 truncate to 1 and 15 (rounding would give 2)
    ((-3, 2, 3, 8), (0, 0, 4, 9)),  # -4.5 truncates to -4, then 0; 4.5 -> 4; 0.5 -> 0; 9.5 -> 9
    ((1850, 1000, 1910, 1070), (1835, 982, 1920, 1080)),
    # numpy 1.21: float32 width 114.39999, then float64: right = 482.99999 -> 482 (all-float32 gives 483.0)
    ((340, 0, 454.4, 10), (311, 0, 482, 12)),  # 1925 and 1087.5 clipped to the 1920 x 1080 frame
])
def test_crop_bounds_are_box_times_1_5_truncated_and_clipped(box, bounds):
    assert nf.crop_bounds(np.array(box, np.float32), 1920, 1080) == bounds


def test_extract_face_is_rgb_and_mirrored_on_request():
    frame_bgr = np.zeros((20, 20, 3), np.uint8)
    frame_bgr[:, :, 0] = np.arange(20, dtype=np.uint8)[None, :]  # blue = column
    face = nf.extract_face(frame_bgr, np.array([4, 4, 12, 12], np.float32), flip=False)
    assert face.shape == (12, 12, 3)  # 8 x 8 -> 12 x 12 about (8, 8): columns 2..13
    assert face[0, :, 2].tolist() == list(range(2, 14)) and not face[:, :, 0].any()
    mirrored = nf.extract_face(frame_bgr, np.array([4, 4, 12, 12], np.float32), flip=True)
    assert mirrored[0, :, 2].tolist() == list(range(13, 1, -1))
    with pytest.raises(ValueError, match="empty face crop"):
        nf.extract_face(frame_bgr, np.array([30, 30, 40, 40], np.float32), flip=False)


def test_frame_models_see_every_other_entry_alternately_flipped_in_pairs():
    entries = nf.frame_model_entries(9)
    assert [e.entry for e in entries] == [0, 2, 4, 6, 8]
    assert [e.flip for e in entries] == [True, False, True, False, True]
    assert [e.model for e in entries] == [0, 0, 1, 1, 0]


@pytest.mark.parametrize("length, windows", [
    (3, []), (6, []), (7, [(0, 3, True)]), (19, [(0, 3, True)]), (20, [(0, 3, True)]),
    (21, [(0, 3, True), (14, 17, False)]), (35, [(0, 3, True), (14, 17, False), (28, 31, True)]),
])
def test_sequence_windows_follow_track_slice_minus_6_step_14(length, windows):
    assert [(w.start, w.box_entry, w.flip) for w in nf.sequence_windows(length)] == windows
    # the slice upstream enumerates
    assert [w.start for w in nf.sequence_windows(length)] == list(range(length))[:-6:14]


# -- frame-model transforms -----------------------------------------------------------------------
@pytest.mark.parametrize("hw, size, out", [
    ((300, 200), 192, (288, 192)),
    ((100, 150), 192, (192, 288)),
    ((128, 215), 192, (192, 322)),  # 322.5 rounds half to even
    ((128, 217), 192, (192, 326)),  # 325.5 rounds half to even
    ((100, 150), 224, (224, 336)),
    ((192, 250), 192, (192, 250)),  # already there: untouched
])
def test_smallest_max_size(hw, size, out):
    assert nf.smallest_max_size(np.zeros((*hw, 3), np.uint8), size).shape == (*out, 3)


def test_pad_if_needed_reflects_101_with_the_smaller_half_on_top():
    image = np.arange(201, dtype=np.uint8)[:, None, None].repeat(192, axis=1).repeat(3, axis=2)
    padded = nf.pad_if_needed(image, 224, 192)
    assert padded.shape == (224, 192, 3)
    # 23 rows missing: int(11.5) = 11 on top, 12 below; reflect-101 does not repeat the edge row
    assert padded[:12, 0, 0].tolist() == list(range(11, -1, -1))
    assert padded[-13, 0, 0] == 200
    assert padded[-12:, 0, 0].tolist() == list(range(199, 187, -1))


def test_large_crop_transform_pads_landscape_faces_with_reflected_rows():
    face = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    crop = nf.frame_model_crop(face, 0)
    assert crop.shape == (224, 192, 3)
    resized = nf.smallest_max_size(face, 192)  # 192 x 288; 16 reflected rows top and bottom, then columns 48..239
    assert np.array_equal(crop[16:208], resized[:, 48:240])
    assert np.array_equal(crop[0], resized[16, 48:240]) and np.array_equal(crop[15], resized[1, 48:240])
    assert np.array_equal(crop[223], resized[190 - 15, 48:240])


def test_large_crop_transform_centre_crops_portrait_faces():
    face = np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    crop = nf.frame_model_crop(face, 0)
    resized = nf.smallest_max_size(face, 192)  # 288 x 192, rows 32..255
    assert np.array_equal(crop, resized[32:256])


@pytest.mark.parametrize("hw, top, left", [((100, 150), 0, 72), ((300, 200), 56, 16), ((224, 224), 0, 16)])
def test_re_transform_is_shorter_side_224_and_a_centre_crop(hw, top, left):
    face = np.random.default_rng(2).integers(0, 256, (*hw, 3), dtype=np.uint8)
    crop = nf.frame_model_crop(face, 1)
    resized = nf.smallest_max_size(face, 224)
    assert crop.shape == (224, 192, 3)
    assert np.array_equal(crop, resized[top:top + 224, left:left + 192])


def test_centre_crop_rejects_small_images_and_unknown_models():
    with pytest.raises(ValueError, match="cannot centre-crop"):
        nf.center_crop(np.zeros((100, 300, 3), np.uint8), 224, 192)
    with pytest.raises(ValueError, match="frame model"):
        nf.frame_model_crop(np.zeros((100, 100, 3), np.uint8), 2)


def test_normalise_is_imagenet_over_255_channels_first():
    crop = np.zeros((2, 3, 3), np.uint8)
    crop[..., 0] = 255
    tensor = nf.normalise(crop)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, abs=1e-5)
    assert tensor[1, 0, 0].item() == pytest.approx(-0.456 / 0.224, abs=1e-5)
