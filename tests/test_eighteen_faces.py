"""Eighteen Years Old face geometry: sampling, detection resize, tubes, nearest entries, crop squares (hand-computed)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from detectors import eighteen_faces as ef
from detectors import retinaface as rf
from helpers import FIXTURES
from tools.fixtures.eighteen_detect import detection_state, frames_for


# -- frames ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("count, step", [(0, 1), (1, 1), (160, 1), (161, 2), (250, 2), (300, 2), (480, 3), (481, 4)])
def test_sampling_interval_is_ceil_of_count_over_160(count, step):
    assert ef.sampling_interval(count) == step


def test_sampled_frames_stop_at_what_decodes():
    assert ef.sampled_frames(300) == list(range(0, 300, 2)) and len(ef.sampled_frames(300)) == 150
    assert len(ef.sampled_frames(250)) == 125  # 10 s at 25 fps
    # the stride comes from the declared count, the end from the frames that really decode
    assert ef.sampled_frames(300, decoded=297) == list(range(0, 297, 2))
    assert ef.sampled_frames(300, decoded=0) == []


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_sampling_refuses_a_nonsense_count(bad):
    with pytest.raises(ValueError, match="frame count"):
        ef.sampling_interval(bad)


# -- detection settings and resize ----------------------------------------------------------------
def test_eighteen_detection_settings_are_the_authors():
    s = ef.EIGHTEEN_DETECTION
    assert (s.target_size, s.max_size, s.confidence, s.nms_iou, s.keep_score, s.batch) == (400, 2150, 0.02, 0.4, 0.8, 8)
    assert s.bgr_mean == (104.0, 117.0, 123.0) and s.body == "mobilenet0.25"
    with pytest.raises(AttributeError):
        s.keep_score = 0.5  # frozen: a mode is a fact, not a knob someone flips by accident


@pytest.mark.parametrize("hw, scale, prior_hw, image_hw", [
    ((1080, 1920), 400 / 1080, (400, 711), (400, 711)),
    ((1920, 1080), 400 / 1080, (711, 400), (711, 400)),  # portrait: the short side is the width
    ((720, 1280), 400 / 720, (400, 711), (400, 711)),
    ((800, 4301), 0.5, (400, 2150), (400, 2150)),  # 2150.5 rounds half to even: not above the cap
    ((800, 4302), 2150 / 4302, (399, 2150), (400, 2150)),  # 2151 > 2150: the long side is capped
    ((400, 12000), 2150 / 12000, (71, 2150), (72, 2150)),  # truncation (priors) vs cv2's rounding (image)
])
def test_detection_resize_short_side_400_long_side_capped(hw, scale, prior_hw, image_hw):
    r = ef.detection_resize(*hw)
    assert r.scale == pytest.approx(scale, rel=1e-15)
    assert (r.prior_hw, r.image_hw) == (prior_hw, image_hw)
    resized = cv2.resize(np.zeros((*hw, 3), np.uint8), None, None, fx=r.scale, fy=r.scale,
                         interpolation=cv2.INTER_LINEAR)
    assert resized.shape[:2] == image_hw


def test_detection_resize_refuses_an_empty_frame():
    with pytest.raises(ValueError, match="positive"):
        ef.detection_resize(0, 640)


def test_priors_match_says_when_upstream_decode_would_break():
    """333x500 -> priors for 400x600 but a 400x601 image: 75 vs 76 columns at stride 8."""
    model = rf.RetinaFace(body="mobilenet0.25").eval()
    for hw, fits in [((333, 500), False), ((400, 12000), True), ((1080, 1920), True)]:
        r = ef.detection_resize(*hw)
        assert ef.priors_match(r) is fits
        with torch.inference_mode():
            cells = model(torch.zeros(1, 3, *r.image_hw))[0].shape[1]
        assert (cells == len(rf.prior_boxes(*r.prior_hw))) is fits


def test_confident_boxes_keep_score_at_least_0_8_and_truncate():
    dets = np.array([[10.7, 20.2, 50.9, 80.99, 0.95],
                     [-3.7, 5.5, 30.2, 40.0, 0.8],
                     [1.0, 1.0, 2.0, 2.0, 0.79]])
    out = ef.confident_boxes(dets)
    assert out.dtype == np.int64
    assert out.tolist() == [[10, 20, 50, 80], [-3, 5, 30, 40]]  # toward zero, not floor
    assert ef.confident_boxes(np.zeros((0, 5))).shape == (0, 4)


# -- IoU, face count, tubes -----------------------------------------------------------------------
def test_box_iou_uses_the_plus_one_pixel_convention():
    a = [[0, 0, 9, 9]]
    assert ef.box_iou(a, [[5, 0, 14, 9]])[0, 0] == pytest.approx(50 / 150)  # without +1 it would be 36/126
    assert ef.box_iou(a, [[0, 0, 9, 4]])[0, 0] == 0.5
    assert ef.box_iou(a, [[20, 20, 30, 30]])[0, 0] == 0.0
    assert ef.box_iou(a, a)[0, 0] == 1.0


def _faces(*frames):
    return [np.array(f, dtype=np.int64).reshape(-1, 4) for f in frames]


A, A1, D = [0, 0, 9, 9], [1, 0, 10, 9], [2, 0, 11, 9]
B, C = [100, 100, 119, 119], [300, 300, 309, 309]


@pytest.mark.parametrize("counts, mode", [([1, 2, 2, 1, 0], 1),  # 1 and 2 tie: the count seen first wins
                                          ([2, 1, 2], 2), ([0, 0, 1], 0), ([0, 1, 1, 0, 0], 0)])
def test_modal_face_count(counts, mode):
    assert ef.modal_face_count(_faces(*[[A] * n for n in counts])) == mode


def test_tubes_join_by_iou_one_face_per_tube_per_frame():
    faces = _faces([A, B], [], [A1, C], [A1, D])
    # A1 joins A (IoU 90/110); C starts a tube; in frame 3 D's best tube was taken by A1, so D is dropped
    assert ef.face_tubes(faces) == [[(0, 0), (2, 0), (3, 0)], [(0, 1)], [(2, 1)]]


def test_tubes_follow_the_last_box_not_the_first():
    drift = _faces([[0, 0, 9, 9]], [[2, 0, 11, 9]], [[4, 0, 13, 9]], [[6, 0, 15, 9]])
    # frame 2 vs frame 0 would be IoU 60/140 < 0.5; vs frame 1 it is 80/120
    assert ef.face_tubes(drift) == [[(0, 0), (1, 0), (2, 0), (3, 0)]]
    assert ef.face_tubes(_faces([[0, 0, 9, 9]], [[4, 0, 13, 9]])) == [[(0, 0)], [(1, 0)]]
    assert ef.face_tubes(_faces([A], [[0, 0, 9, 4]])) == [[(0, 0), (1, 0)]]  # IoU exactly 0.5 joins


def test_first_frame_faces_all_start_tubes_and_ties_go_to_the_first_tube():
    assert ef.face_tubes(_faces([A, A], [A])) == [[(0, 0), (1, 0)], [(0, 1)]]


def test_chosen_tubes_longest_modal_count_at_most_two():
    faces = _faces([A, B], [], [A1, C], [A1, D])  # counts 2, 0, 2, 2 -> mode 2
    # tubes of length 3, 1, 1: the equal ones keep creation order
    assert ef.chosen_tubes(faces) == [[(0, 0), (2, 0), (3, 0)], [(0, 1)]]
    three = _faces([A, B, C], [A, B, C], [A])
    assert len(ef.chosen_tubes(three)) == 2


def test_chosen_tubes_mode_zero_means_no_face_even_with_some_faces():
    assert ef.chosen_tubes(_faces([], [A], [], [A1], [])) == []


def test_chosen_tubes_fewer_tubes_than_the_modal_count():
    # two faces per frame from frame 1 on, but the second always loses its tube to the first: one tube
    faces = _faces([A], [A, A], [A, A])
    assert ef.modal_face_count(faces) == 2
    assert ef.chosen_tubes(faces) == [[(0, 0), (1, 0), (2, 0)]]


def test_chosen_tubes_refuse_an_empty_video():
    with pytest.raises(ValueError, match="no frames"):
        ef.chosen_tubes([])


# -- nearest entries and squares ------------------------------------------------------------------
def test_nearest_entries_walk():
    tube = [(2, 0), (5, 1), (9, 0)]
    got = [f for f, _ in ef.nearest_entries(tube, 12)]
    # frame 7 is 2 from both 5 and 9: only a strictly nearer entry moves the pointer
    assert got == [2, 2, 2, 2, 5, 5, 5, 5, 9, 9, 9, 9]
    assert ef.nearest_entries(tube, 12)[4] == (5, 1)
    with pytest.raises(ValueError, match="empty tube"):
        ef.nearest_entries([], 3)


@pytest.mark.parametrize("box, square", [
    ([100, 50, 140, 110], (81, 41, 78)),  # side int(1.3 * 60), centre (120, 80)
    ([0, 0, 30, 20], (0, 0, 39)),  # top-left clamped at 0, side kept
    ([620, 400, 640, 470], (585, 390, 55)),  # side 91 cut to the right edge (55), then to the bottom (90)
    ([-3, 5, 30, 40], (0, 0, 45)),  # negative coordinates from the detector
])
def test_clamped_square(box, square):
    assert ef.clamped_square(np.array(box), 640, 480) == square


@pytest.mark.parametrize("box, origin", [([100, 50, 140, 110], (70, 30)), ([620, 400, 640, 470], (540, 380)),
                                         ([0, 0, 10, 10], (0, 0))])
def test_square_origin_keeps_a_fixed_square_inside(box, origin):
    assert ef.square_origin(np.array(box), 640, 480, 100) == origin


def test_tube_crops_fixed_even_side_nearest_detection_and_its_frame():
    faces = _faces([], [[100, 50, 140, 110]], [], [[110, 50, 150, 110]], [])
    tube = ef.face_tubes(faces)[0]
    assert tube == [(1, 0), (3, 0)]  # IoU 1891/3111
    crops = ef.tube_crops(faces, tube, 640, 480)
    assert [(c.source_frame, c.x, c.y, c.side) for c in crops] == [
        (1, 81, 41, 78), (1, 81, 41, 78), (1, 81, 41, 78), (3, 91, 41, 78), (3, 91, 41, 78)]


def test_tube_crops_side_made_even_and_inside_the_frame():
    odd = _faces([[100, 50, 140, 111]])  # int(1.3 * 61) = 79 -> 78
    assert ef.tube_crops(odd, [(0, 0)], 640, 480)[0] == ef.TubeCrop(0, 81, 41, 78)
    big = _faces([[10, 10, 90, 50]])  # side 104, cut to the 60-pixel height, then centred and kept inside
    assert ef.tube_crops(big, [(0, 0)], 100, 60)[0] == ef.TubeCrop(0, 20, 0, 60)


# -- detection run and crops ------------------------------------------------------------------------
class ScriptedDetector(torch.nn.Module):
    """Stands in for RetinaFace: fixed per-prior outputs for 400x400 inputs; records the batches it was given."""

    def __init__(self, loc: torch.Tensor, score: torch.Tensor):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so the runner can find a device
        self.loc, self.score, self.inputs = loc, score, []

    def forward(self, x):
        self.inputs.append(x.clone())
        n = len(x)
        conf = torch.stack([1 - self.score, self.score], dim=-1)
        return self.loc.expand(n, -1, -1), conf.expand(n, -1, -1), torch.zeros(n, len(self.score), 10)


def _scripted():
    cells = len(rf.prior_boxes(400, 400))
    loc, score = torch.zeros(1, cells, 4), torch.full((cells,), 0.01)
    score[0], score[1] = 0.9, 0.5  # prior 0: 16 px at cell (0, 0); prior 1: 32 px, same centre
    score[2], loc[0, 2, 0] = 0.7, -5.0  # cell (0, 1) moved back onto prior 0: NMS removes it
    score[-1] = 0.02  # the last (512-px) prior: not above the 0.02 confidence, so gone before NMS
    return ScriptedDetector(loc, score)


def test_detect_frames_resizes_subtracts_the_bgr_mean_batches_by_8_and_decodes():
    model = _scripted()
    frames = [np.broadcast_to(np.array([104, 117, 123], np.uint8), (40, 40, 3)).copy() for _ in range(10)]
    dets = ef.detect_frames(model, frames)
    assert [tuple(x.shape) for x in model.inputs] == [(8, 3, 400, 400), (2, 3, 400, 400)]  # scale 10
    assert all(float(x.abs().max()) == 0.0 for x in model.inputs)  # the BGR mean, channel for channel
    assert len(dets) == 10
    # prior 0: centre 4/400, side 16/400 of the 400-px image -> /10 back to the 40-px frame
    np.testing.assert_allclose(dets[0], [[-0.4, -0.4, 1.2, 1.2, 0.9], [-1.2, -1.2, 2.0, 2.0, 0.5]], atol=1e-5)
    assert ef.confident_boxes(dets[0]).tolist() == [[0, 0, 1, 1]]


def test_decode_forms_the_far_corner_in_upstreams_order():
    # upstream decode_batch (FF eighteen/face_detect_lib/utils/box_utils.py): (centre, size), then in place
    # x1y1 = centre - size/2 and x2y2 = x1y1 + size; centre + size/2 differs in the last float32 bit now and
    # then, which after the x pixels / scale and int64 truncation can move a box edge by one pixel
    priors = rf.prior_boxes(*ef.detection_resize(1080, 1920).prior_hw)
    loc = torch.randn(len(priors), 4, generator=torch.Generator().manual_seed(18)) * 0.5
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:], priors[:, 2:] * torch.exp(loc[:, 2:] * 0.2)), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    assert torch.equal(rf.decode_boxes(loc, priors), boxes)


def test_detect_frames_refuses_a_size_upstream_cannot_decode():
    with pytest.raises(ef.PriorMismatch, match="333x500"):
        ef.detect_frames(_scripted(), [np.zeros((333, 500, 3), np.uint8)])
    assert ef.detect_frames(_scripted(), []) == []


def test_detect_frames_refuses_frames_of_another_size():
    with pytest.raises(ValueError, match="frame 1 is"):
        ef.detect_frames(_scripted(), [np.zeros((40, 40, 3), np.uint8), np.zeros((40, 48, 3), np.uint8)])


def test_cut_crops_take_each_square_from_its_source_frame():
    frames = [np.full((60, 80, 3), 10 * i, np.uint8) for i in range(3)]
    frames[2][5:25, 30:50] = 255  # a white square exactly where the crop lies
    crops = [ef.TubeCrop(1, 0, 0, 20), ef.TubeCrop(1, 0, 0, 20), ef.TubeCrop(2, 30, 5, 20)]
    out = ef.cut_crops(frames, crops)
    assert sorted(out) == [256, 299]
    assert out[256].shape == (3, 256, 256, 3) and out[299].shape == (3, 299, 299, 3)
    assert (out[299][0] == 10).all() and (out[256][1] == 10).all()  # frame 1's pixels, not frame 0's
    assert (out[256][2] == 255).all()
    with pytest.raises(ValueError, match="does not fit"):
        ef.cut_crops(frames, [ef.TubeCrop(0, 70, 0, 20)])


def test_face_crops_from_detection_to_squares():
    model = _scripted()
    model.score[:] = 0.01
    model.score[1] = 0.95  # one face per frame: the 32-px prior at (4, 4)
    frames = [np.full((400, 400, 3), 255, np.uint8) for i in range(3)]  # short side 400: no resize
    for i, f in enumerate(frames):
        f[:40, :40] = 20 * i  # exactly the square the crops must cover
    faces = ef.face_crops(model, frames)
    # box (-12, -12, 20, 20): side int(1.3 * 32) = 41 at the clamped corner (0, 0), made even: 40
    assert len(faces) == 1 and sorted(faces[0]) == [256, 299]
    assert faces[0][256].shape == (3, 256, 256, 3)
    for i in range(3):  # each frame's own pixels, and nothing outside the 40-px square
        assert (faces[0][299][i] == 20 * i).all() and (faces[0][256][i] == 20 * i).all()
    model.score[1] = 0.79  # below 0.8 everywhere: the modal count is 0, no face
    assert ef.face_crops(model, frames) == []


# -- the same geometry as FakeFinder's own detect_video_face (tests/fixtures/eighteen-geometry.tsv) ---------
def _geometry_cases():
    rows = [l for l in (FIXTURES / "eighteen-geometry.tsv").read_text().splitlines() if l and not l.startswith("#")]
    assert rows[0] == "case\twidth\theight\tdetections\tcuts"
    return [(int(w), int(h), json.loads(d), json.loads(c)) for _, w, h, d, c in (r.split("\t") for r in rows[1:])]


def test_tubes_and_squares_equal_fakefinder_s_on_seeded_box_lists():
    cases = _geometry_cases()
    assert len(cases) == 80
    assert {c[3] is None for c in cases} == {True, False}  # both "no face" and faces are exercised
    assert any(c[3] is not None and len(c[3]) == 2 for c in cases)
    for n, (width, height, dets, want) in enumerate(cases):
        faces = [ef.confident_boxes(np.array(d, np.float32).reshape(-1, 5)) for d in dets]
        tubes = ef.chosen_tubes(faces)
        if want is None:
            assert tubes == [], f"case {n}: upstream found no face"
            continue
        got = [[[c.source_frame, c.y, c.x, c.side, c.side] for c in ef.tube_crops(faces, t, width, height)]
               for t in tubes]
        assert got == want, f"case {n}"


def test_detect_frames_equal_fakefinder_s_detect_face():
    """Upstream's detect_face with its own PriorBox/decode/NMS and RetinaFace on the same seeded weights and frames:
    no resize (400 x 240), x3.33 (120 x 160, 9 frames: two batches), x0.83 (480 x 640 -> 400 x 533)."""
    rows = [l for l in (FIXTURES / "eighteen-detect.tsv").read_text().splitlines() if l and not l.startswith("#")]
    assert rows[0] == "height\twidth\tframes\tseed\tdetections" and len(rows) == 4
    model = rf.RetinaFace(body="mobilenet0.25")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in detection_state().items()}, strict=True)
    model.eval()
    for row in rows[1:]:
        height, width, count, seed, want = row.split("\t")
        got = ef.detect_frames(model, frames_for(int(height), int(width), int(count), int(seed)))
        want = json.loads(want)
        assert [len(g) for g in got] == [len(w) for w in want], f"{height}x{width}"
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, np.array(w).reshape(-1, 5), atol=2e-3, rtol=0)
