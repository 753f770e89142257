"""FakeFinder's detectors find faces as their authors did: each declared finder's settings, a real detection on every frame scored, and our tracks left alone."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detectors import boken, selimsef, wm
from detectors.base import FaceFinder, SamplingPolicy
from detectors.registry import get_detector
from tiny_detector import TinyDetector
from workbench.faces import Face
from workbench.pipeline import Sampling, Scorer, analyze, face_finders, match_to_tracks, plan
from workbench.video import VideoInfo, frame as read_frame

facenet = pytest.importorskip("facenet_pytorch")


def finder_of(det) -> object:
    """The MTCNNFinder the pipeline builds for one detector's declaration."""
    return face_finders({det.name: det}, "cpu")[det.name].__self__


def spy_on_detect(finder) -> list[tuple[int, ...]]:
    """Record the shape of every image MTCNN is given."""
    shapes, detect = [], finder.mtcnn.detect

    def recording(img, landmarks=False):
        shapes.append(np.asarray(img).shape)
        return detect(img, landmarks=landmarks)

    finder.mtcnn.detect = recording
    return shapes


@pytest.fixture(scope="module")
def two_faces(two_face_clip):
    """A 640x360 frame with both people on it (Grace Hopper and the astronaut, at 1.5 s)."""
    path, _ = two_face_clip
    return read_frame(str(path), 15)


def test_selimsef_finder_keeps_every_box_of_mtcnn_0708_08_on_the_half_size_frame(two_faces):
    spec = selimsef.Selimsef.face_finder
    assert (spec.kind, spec.thresholds, spec.scale, spec.keep) == ("mtcnn", (0.7, 0.8, 0.8), 0.5, "all")
    finder = finder_of(selimsef.Selimsef())
    assert (finder.mtcnn.thresholds, finder.mtcnn.factor, finder.mtcnn.min_face_size) == ([0.7, 0.8, 0.8], 0.709, 20)
    shapes = spy_on_detect(finder)
    faces = finder.find(two_faces)
    assert shapes == [(180, 320, 3)]  # 640x360 halved, as upstream's `img.resize([s // 2 for s in img.size])`
    # Upstream by hand: PIL halves the frame, MTCNN(thresholds=[0.7, 0.8, 0.8]) finds, every box times 2.
    img = Image.fromarray(two_faces)
    ref, _ = facenet.MTCNN(thresholds=[0.7, 0.8, 0.8]).detect(img.resize([s // 2 for s in img.size]))
    assert len(ref) >= 2 and len(faces) == len(ref)
    np.testing.assert_allclose([f.box for f in faces], np.asarray(ref, np.float64) * 2, atol=1e-3)


def test_boken_finder_runs_mtcnn_factor_06_at_full_resolution_and_keeps_the_largest(two_faces):
    spec = boken.Boken.face_finder
    assert (spec.kind, spec.factor, spec.scale, spec.keep) == ("mtcnn", 0.6, 1.0, "largest")
    finder = finder_of(boken.Boken())
    assert (finder.mtcnn.thresholds, finder.mtcnn.factor, finder.mtcnn.min_face_size) == ([0.6, 0.7, 0.7], 0.6, 20)
    shapes = spy_on_detect(finder)
    faces = finder.find(two_faces)
    assert shapes == [two_faces.shape]
    # Upstream by hand: MTCNN(factor=0.6) on the full RGB frame, boxes[0] (facenet-pytorch puts the largest first).
    ref, _ = facenet.MTCNN(margin=14, keep_all=True, factor=0.6).detect(Image.fromarray(two_faces))
    assert len(ref) >= 2 and len(faces) == 1
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in ref]
    np.testing.assert_allclose(faces[0].box, np.asarray(ref[int(np.argmax(areas))], np.float64), atol=1e-3)


def test_one_mtcnn_per_configuration():
    first, second = selimsef.Selimsef(), selimsef.Selimsef()
    second.name = "selimsef-again"
    finders = face_finders({"selimsef": first, "selimsef-again": second, "boken": boken.Boken()}, "cpu")
    assert finders["selimsef"].__self__ is finders["selimsef-again"].__self__
    assert finders["boken"].__self__ is not finders["selimsef"].__self__


def test_the_finder_is_part_of_the_reuse_key():
    described = selimsef.Selimsef().describe()
    assert described["face_finder"] == selimsef.FACE_FINDER.to_dict()
    assert "kernel_utils.py" in described["face_finder"]["source"]

    class TrackedFaces(selimsef.Selimsef):
        face_finder = None

    info = VideoInfo("x.mp4", 100, 25.0, 640, 360, 4.0, "h264", "mp4", 0, 1)
    keys = [plan(info, Sampling(), {"selimsef": d}).params_keys["selimsef"] for d in (selimsef.Selimsef(), TrackedFaces())]
    assert keys[0] != keys[1]


def test_wm_finds_faces_with_retinaface_only_when_its_weights_are_in_use(monkeypatch):
    monkeypatch.setattr(wm.WM, "alignment_source", property(lambda self: wm.ALIGN_MTCNN))
    assert wm.WM().face_finder is None and "face_finder" not in wm.WM().describe()
    monkeypatch.setattr(wm.WM, "alignment_source", property(lambda self: wm.ALIGN_RETINAFACE))
    spec = wm.WM().face_finder
    assert (spec.kind, spec.keep, spec.thresholds, spec.scale) == ("retinaface", "largest", (0.8,), 1.0)
    assert wm.WM().describe()["face_finder"]["kind"] == "retinaface"


def test_a_face_is_filed_under_the_track_it_overlaps_and_one_on_no_track_is_counted_not_filed():
    assert match_to_tracks([(0, 0, 10, 10), (50, 50, 60, 60), (100, 0, 110, 10)],
                           [(7, (1, 1, 11, 11)), (3, (52, 50, 62, 60)), (9, (0, 0, 9, 10))]) == {0: 9, 1: 3}
    seen = []

    class OwnFaces(TinyDetector):
        name = "tiny-own-faces"
        sampling = SamplingPolicy("analysed")
        face_finder = FaceFinder("retinaface", keep="all")
        upstream_rule = "test: every face the finder finds"

        def find_faces(self, frame):
            return [Face((100.0, 60.0, 180.0, 160.0), 0.99, ((1.0, 2.0),) * 5),
                    Face((400.0, 60.0, 470.0, 150.0), 0.95, ((3.0, 4.0),) * 5)]

        def cut(self, frame, box, landmarks):
            seen.append((tuple(box), np.asarray(landmarks).tolist()))
            return super().cut(frame, box, landmarks)

    det = OwnFaces()
    det.model("cpu")
    info = VideoInfo("x.mp4", 10, 10.0, 640, 360, 1.0, "h264", "mp4", 0, 1)
    scorer = Scorer({det.name: det}, plan(info, Sampling(sample_fps=None), {det.name: det}))
    rgb = np.random.default_rng(0).integers(0, 255, (360, 640, 3), dtype=np.uint8)
    # Our tracker saw only the first face (an interpolated box, slightly off) and a face the finder missed.
    scorer.add_frame(4, rgb, [(2, (104.0, 62.0, 184.0, 163.0), None), (5, (300.0, 200.0, 340.0, 250.0), None)])
    scorer.finish()
    assert seen == [((100.0, 60.0, 180.0, 160.0), [[1.0, 2.0]] * 5), ((400.0, 60.0, 470.0, 150.0), [[3.0, 4.0]] * 5)]
    assert [(f, tid) for f, tid, _ in scorer.frame_scores[det.name]] == [(4, 2)]
    assert scorer.untracked[det.name] == 1
    assert np.concatenate(scorer.member_scores[det.name], axis=1).shape == (1, 2)  # both enter the authors' rule


class BokenFaces(TinyDetector):
    """Boken's sampling, crop and face finder on the tiny random model; remembers what it cut."""

    name = "tiny-boken-faces"
    sampling = boken.SAMPLING
    face_finder = boken.FACE_FINDER
    upstream_rule = "test: boken's faces"
    cut_faces: list = []

    def cut(self, frame, box, landmarks):
        self.cut_faces.append((frame.copy(), tuple(box)))
        return boken.Boken.cut(self, frame, box, landmarks)


def test_every_frame_a_fakefinder_detector_scores_has_a_real_detection_on_that_frame(demo_clip):
    det = BokenFaces()
    det.cut_faces = []
    sbi = get_detector("sbi-mobilenetv2")
    # Every frame decoded whatever else runs (so our tracks cannot change), MTCNN on every 5th.
    sampling = Sampling(sample_fps=None, detect_every=5)
    result = analyze(demo_clip, {"sbi-mobilenetv2": sbi, det.name: det}, sampling)
    outcome = result.detectors[det.name]
    wanted = result.plan.detector_frames[det.name]
    assert len(wanted) == 15 and not set(wanted) <= set(result.detection_frames)  # our MTCNN skips most of them
    assert len(det.cut_faces) == 15, "one face on each of boken's 15 frames"
    reference = facenet.MTCNN(margin=14, keep_all=True, factor=0.6)
    for frame, box in det.cut_faces:
        # The box upstream would have used on this very frame: MTCNN(factor=0.6) at full size, boxes[0].
        ref, _ = reference.detect(Image.fromarray(frame))
        assert ref is not None
        np.testing.assert_allclose(box, np.asarray(ref[0], np.float64), atol=1e-3)
    # Each face is filed under one of our tracks, so the timeline still shows it per track.
    assert {tid for _, tid, _ in outcome.frame_scores} <= {t.id for t in result.tracks}
    assert outcome.frames_used == wanted
    assert outcome.timings["find_faces_s"] > 0 and outcome.upstream["faces_without_track"] == 0

    # The reference detector (our own faces and tracks) is unaffected by the FakeFinder detector running beside it.
    alone = analyze(demo_clip, {"sbi-mobilenetv2": get_detector("sbi-mobilenetv2")}, sampling)
    assert [(t.id, t.frames, t.boxes) for t in alone.tracks] == [(t.id, t.frames, t.boxes) for t in result.tracks]
    assert alone.detectors["sbi-mobilenetv2"].frame_scores == result.detectors["sbi-mobilenetv2"].frame_scores
    assert alone.plan.params_keys["sbi-mobilenetv2"] == result.plan.params_keys["sbi-mobilenetv2"]
    assert sbi.face_finder is None and "face_finder" not in sbi.describe()


def test_grad_cam_explains_the_face_as_the_detector_cut_it(two_faces):
    """Grad-CAM (Review page, report) cuts from the box the detector's own finder found, not the tracked box."""
    from workbench.pipeline import face_as_scored

    det = selimsef.Selimsef()
    faces = finder_of(det).find(two_faces)
    x1, y1, x2, y2 = faces[0].box
    tracked = (x1 + 6, y1 - 5, x2 + 4, y2 + 7)  # our tracker's box for the same face: close, not equal
    box, _ = face_as_scored(det, two_faces, tracked, None)
    np.testing.assert_allclose(box, faces[0].box, atol=1e-3)
    assert face_as_scored(det, two_faces, (0, 0, 12, 12), None) is None  # nothing of its own there
    tiny = TinyDetector()
    assert face_as_scored(tiny, two_faces, tracked, None) == (tracked, None)  # tracked-face detectors: as tracked
