"""The analysis pipeline end to end on generated clips, with the test-only tiny detectors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import shared
from detectors.base import Detector
from detectors.registry import register, unregister
from helpers import default_rule_by_hand, IMAGENET, rgb_tensor
from tiny_detector import TinyDetector, TinyNet
from workbench.evidence import ingest
from workbench.pipeline import Sampling, analyze
from workbench.service import analyse_evidence
from workbench.geometry import crop_face, iou
from workbench.video import frame as read_frame


def test_two_faces_tracked_with_stable_ids(two_face_clip, tiny_detectors):
    path, truth = two_face_clip
    result = analyze(path, ["tiny-test"], Sampling(sample_fps=None, detect_every=2))
    assert len(result.tracks) == 2, [t.frames for t in result.tracks]
    for track in result.tracks:
        # Every box of a track (detected or interpolated) lies on one and the same person.
        best = max(truth.face_boxes, key=lambda s: sum(
            1 for f, b in zip(track.frames, track.boxes) if truth.face_boxes[s][f] and iou(b, truth.face_boxes[s][f]) > 0.5))
        for f, box in zip(track.frames, track.boxes):
            assert truth.face_boxes[best][f] is not None, f"track {track.id} has a box on frame {f} where {best} is absent"
            assert iou(box, truth.face_boxes[best][f]) > 0.5, f"track {track.id} frame {f}"
    astronaut = next(t for t in result.tracks if t.frames[0] > 0)
    assert 10 <= astronaut.frames[0] <= 12 and 22 <= astronaut.frames[-1] <= 24
    grace = next(t for t in result.tracks if t.frames[0] == 0)
    assert len(grace.frames) >= 33  # every analysed frame, interpolated between detections
    assert any(not d for d in grace.detected) and any(grace.detected)
    outcome = result.detectors["tiny-test"]
    assert set(outcome.track_scores) == {1, 2}
    # The video score is the default rule over the frame scores, written out by hand ...
    assert outcome.status == "ok" and outcome.score == pytest.approx(default_rule_by_hand(outcome.frame_scores))
    # ... and a frame score is the tiny model's own probability for that face, cut from the decoded frame.
    f, tid, score = next(row for row in outcome.frame_scores if row[1] == astronaut.id)
    box = astronaut.boxes[astronaut.frames.index(f)]
    crop = crop_face(read_frame(path, f), box, TinyDetector.crop)
    torch.manual_seed(0)
    with torch.no_grad():
        ref = torch.sigmoid(TinyNet().eval()(rgb_tensor(crop[None], *IMAGENET))).item()
    assert score == pytest.approx(ref, abs=1e-5)


def test_detector_sampling_policy_decides_frames_used(two_face_clip, tiny_detectors):
    path, _ = two_face_clip
    result = analyze(path, ["tiny-test", "tiny-even"], Sampling(sample_fps=2.0))
    even = result.detectors["tiny-even"]
    assert set(even.frames_used) <= {0, 8, 17, 25, 34}
    assert len(even.frames_used) >= 4
    per_frame = result.detectors["tiny-test"]
    assert set(per_frame.frames_used) <= set(Sampling(sample_fps=2.0).analysed_frames(result.video))
    assert even.frames_used and all(f in result.frames_analysed for f in even.frames_used)


def test_no_face_is_inconclusive_never_a_score(no_face_clip, tiny_detectors):
    result = analyze(no_face_clip, ["tiny-test"], Sampling(sample_fps=5))
    outcome = result.detectors["tiny-test"]
    assert outcome.status == "inconclusive" and outcome.score is None
    assert "no face found" in outcome.reason
    assert result.ensemble["score"] is None and result.ensemble["status"] == "inconclusive"


def test_faces_too_small_are_inconclusive(two_face_clip, tiny_detectors):
    path, _ = two_face_clip
    result = analyze(path, ["tiny-test"], Sampling(sample_fps=2, min_face_px=400))
    outcome = result.detectors["tiny-test"]
    assert outcome.status == "inconclusive" and outcome.score is None
    assert "too small" in outcome.reason


def test_too_few_frames_is_inconclusive(two_face_clip, tiny_detectors):
    from workbench.aggregate import Rule

    path, _ = two_face_clip
    result = analyze(path, ["tiny-test"], Sampling(sample_fps=1, rule=Rule(min_frames=50)))
    outcome = result.detectors["tiny-test"]
    assert outcome.status == "inconclusive" and outcome.score is None and "too few frames" in outcome.reason


def test_unavailable_and_error_detectors_have_no_score(two_face_clip, tiny_detectors, broken_detectors):
    path, _ = two_face_clip
    result = analyze(path, ["tiny-test", "tiny-missing", "tiny-crash"], Sampling(sample_fps=2))
    missing, crash = result.detectors["tiny-missing"], result.detectors["tiny-crash"]
    assert missing.status == "unavailable" and missing.score is None
    assert "python -m workbench weights install tiny-missing" in missing.reason
    assert crash.status == "error" and crash.score is None and "simulated model failure" in crash.reason
    assert result.ensemble["members"] == ["tiny-test"]
    assert result.ensemble["left_out"] == {"tiny-missing": "unavailable", "tiny-crash": "error"}
    assert result.ensemble["score"] == pytest.approx(result.detectors["tiny-test"].score)


def test_results_are_stored_and_reused(two_face_clip, tiny_detectors, fresh_store, tmp_path):
    path, _ = two_face_clip
    ev = ingest(fresh_store, path, "two faces.mp4", tmp_path / "evidence")
    first = analyse_evidence(fresh_store, ev["sha256"], ["tiny-test", "tiny-even"], Sampling(sample_fps=2))
    assert fresh_store.db["analyses"].count == 2 and fresh_store.db["face_runs"].count == 1
    second = analyse_evidence(fresh_store, ev["sha256"], ["tiny-test", "tiny-even"], Sampling(sample_fps=2))
    assert all(o.reused for o in second.detectors.values())
    assert fresh_store.db["analyses"].count == 2
    for name in ("tiny-test", "tiny-even"):
        a, b = first.detectors[name], second.detectors[name]
        assert a.score == pytest.approx(b.score) and a.frames_used == b.frames_used
        assert sorted(a.frame_scores) == sorted(b.frame_scores)
    assert [t.frames for t in first.tracks] == [t.frames for t in second.tracks]
    # Different parameters: a new analysis, but the face run is shared when frames match.
    analyse_evidence(fresh_store, ev["sha256"], ["tiny-test"], Sampling(sample_fps=2, min_face_px=40))
    assert fresh_store.db["analyses"].count == 3
    audit = [e["action"] for e in fresh_store.audit_log()]
    assert audit.count("analysis.run") == 3


def test_json_contract(two_face_clip, tiny_detectors, broken_detectors):
    path, _ = two_face_clip
    doc = analyze(path, ["tiny-test", "tiny-missing"], Sampling(sample_fps=2)).to_json()
    video = doc["video"]
    assert {"path", "sha256", "frames", "fps", "width", "height", "duration_s"} <= set(video)
    assert doc["detectors"]["tiny-test"]["score"] is not None  # so the score check below runs
    for name, d in doc["detectors"].items():
        assert d["status"] in {"ok", "inconclusive", "unavailable", "error"}
        assert (d["score"] is None) == (d["status"] != "ok")
        if d["score"] is not None:  # the default rule over the per-track series the document carries
            rows = [(f, t["id"], s) for t in doc["tracks"] for f, s in zip(t["frames"], t["scores"][name])
                    if s is not None]
            assert d["score"] == pytest.approx(default_rule_by_hand(rows))
        assert isinstance(d["frames_used"], list) and all(isinstance(f, int) for f in d["frames_used"])
        assert d["reason"] is None or isinstance(d["reason"], str)
        assert "weights_sha256" in d
    for t in doc["tracks"]:
        assert isinstance(t["id"], int)
        assert len(t["frames"]) == len(t["boxes"])
        assert all(len(b) == 4 for b in t["boxes"])
        for name, scores in t["scores"].items():
            assert name in doc["detectors"] and len(scores) == len(t["frames"])
            assert all(s is None or (isinstance(s, float) and math.isfinite(s)) for s in scores)
        assert all(s is None for s in t["scores"]["tiny-missing"])
    ens = doc["ensemble"]
    assert {"rule", "score", "status"} <= set(ens)
    assert "face-swap" in doc["caveat"].lower()


def test_decoding_holds_few_frames(two_face_clip, tiny_detectors, monkeypatch):
    """Streaming: frames are released as they are scored, not collected for the whole video."""
    import weakref

    from workbench import pipeline

    alive = []
    real_iter = pipeline.isolated_frames

    def tracking_iter(*args, **kwargs):
        for n, rgb in real_iter(*args, **kwargs):
            holder = np.asarray(rgb).view()
            alive.append(weakref.ref(holder.base if holder.base is not None else holder))
            yield n, rgb

    monkeypatch.setattr(pipeline, "isolated_frames", tracking_iter)
    path, _ = two_face_clip
    peak = 0
    real_cut = Detector.cut

    def counting_cut(self, *args, **kwargs):
        nonlocal peak
        peak = max(peak, sum(1 for ref in alive if ref() is not None))
        return real_cut(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "cut", counting_cut)
    analyze(path, ["tiny-test"], Sampling(sample_fps=None, detect_every=2))
    assert len(alive) == 35
    assert 0 < peak <= 20, f"{peak} decoded frames alive at once"


@pytest.mark.shared_data
def test_multiface_real_video(tiny_detectors):
    path = shared("multiface", "pedestrians_1080p.mp4")
    result = analyze(path, ["tiny-test"], Sampling(sample_fps=5))
    long_tracks = [t for t in result.tracks if len(t.frames) >= 5]
    assert len(long_tracks) >= 2
    assert result.detectors["tiny-test"].status == "ok"


def test_largest_face_policy_and_upstream_rule(two_face_clip, tiny_detectors, fresh_store, tmp_path):
    from detectors.base import SamplingPolicy

    class TwoMembers(TinyDetector):
        name = "tiny-upstream"
        sampling = SamplingPolicy("analysed", faces="largest")
        upstream_rule = "mean over faces of member 0, then max with member 1's mean"

        def predict_members(self, crops):
            p = self.predict(crops)
            return np.stack([p, 1.0 - p])

        def upstream_aggregate(self, member_scores):
            return float(max(member_scores[0].mean(), member_scores[1].mean()))

    register(TwoMembers)
    try:
        path, _ = two_face_clip
        ev = ingest(fresh_store, path, "two.mp4", tmp_path / "evidence")
        result = analyse_evidence(fresh_store, ev["sha256"], ["tiny-upstream"], Sampling(sample_fps=None, detect_every=2))
        outcome = result.detectors["tiny-upstream"]
        per_frame = {}
        for frame, tid, _ in outcome.frame_scores:
            per_frame.setdefault(frame, []).append(tid)
        assert all(len(tids) == 1 for tids in per_frame.values())  # only the largest face
        assert {tid for tids in per_frame.values() for tid in tids} == {1}  # Grace Hopper's face is larger
        scores = np.array([s for _, _, s in outcome.frame_scores])
        # Members: p and 1 - p; their mean is 0.5 per crop, and the upstream rule is max of member means.
        assert all(s == pytest.approx(0.5) for s in scores)
        assert outcome.upstream["rule"] == TwoMembers.upstream_rule
        # The authors' rule (max of the members' means) makes the headline; ours (0.5 throughout) explains it.
        assert outcome.score == outcome.upstream["score"] >= 0.5
        assert outcome.upstream["track_score"] == pytest.approx(0.5)
        again = analyse_evidence(fresh_store, ev["sha256"], ["tiny-upstream"], Sampling(sample_fps=None, detect_every=2))
        assert again.detectors["tiny-upstream"].reused
        assert again.detectors["tiny-upstream"].upstream == pytest.approx(outcome.upstream)
        assert result.to_json()["detectors"]["tiny-upstream"]["upstream"]["score"] == outcome.upstream["score"]
    finally:
        unregister("tiny-upstream")


def test_landmark_detectors_get_detections_on_their_frames(two_face_clip, tiny_detectors):
    from detectors.base import SamplingPolicy

    seen = []

    class NeedsLandmarks(TinyDetector):
        name = "tiny-landmarks"
        sampling = SamplingPolicy("every_nth", step=10, start=9, faces="largest")
        needs_landmarks = True

        def cut(self, frame, box, landmarks):
            seen.append(landmarks)
            return None if landmarks is None else super().cut(frame, box, landmarks)

    register(NeedsLandmarks)
    try:
        path, _ = two_face_clip
        result = analyze(path, ["tiny-landmarks"], Sampling(sample_fps=1.0))
        assert set(result.detection_frames) >= {9, 19, 29}
        assert seen and all(m is not None and np.asarray(m).shape == (5, 2) for m in seen)
        assert result.detectors["tiny-landmarks"].frames_used == [9, 19, 29]
    finally:
        unregister("tiny-landmarks")


def test_strong_disagreement_between_detectors_is_reported(two_face_clip, tiny_detectors, fresh_store, tmp_path):
    from workbench import review

    class AlwaysHigh(TinyDetector):
        name = "tiny-high"

        def predict(self, crops):
            return np.full(len(crops), 0.95)

    class AlwaysLow(TinyDetector):
        name = "tiny-low"

        def predict(self, crops):
            return np.full(len(crops), 0.05)

    for cls in (AlwaysHigh, AlwaysLow):
        register(cls)
    try:
        path, _ = two_face_clip
        ev = ingest(fresh_store, path, "two.mp4", tmp_path / "evidence")
        analyse_evidence(fresh_store, ev["sha256"], ["tiny-high", "tiny-low", "tiny-test"], Sampling(sample_fps=2))
        found = review.disagreements(review.load_review(fresh_store, ev["sha256"]))
        assert {d["track"] for d in found} == {1, 2}
        assert all(d["spread"] == pytest.approx(0.9) and set(d["scores"]) >= {"tiny-high", "tiny-low"} for d in found)
    finally:
        for cls in (AlwaysHigh, AlwaysLow):
            unregister(cls.name)


def test_unstable_detections_are_inconclusive(tiny_detectors):
    from workbench.aggregate import Rule
    from workbench.pipeline import DetectorOutcome, TrackData, _summarise, detection_rate

    detection_frames = list(range(0, 100, 5))  # 20 detection frames
    steady = TrackData(1, list(range(0, 50)), [(0, 0, 50, 50)] * 50, [f % 5 == 0 for f in range(0, 50)])
    # Found on 3 of the 10 detection frames it spans; the rest of its boxes are interpolated guesses.
    flicker_frames = list(range(50, 100))
    flicker = TrackData(2, flicker_frames, [(0, 0, 50, 50)] * 50, [f in (50, 75, 95) for f in flicker_frames])
    assert detection_rate(steady, detection_frames) == (10, 10)
    assert detection_rate(flicker, detection_frames) == (3, 10)

    det = TinyDetector()
    scores = [(f, 1, 0.2) for f in range(0, 50, 5)] + [(f, 2, 0.9) for f in range(50, 100, 5)]
    outcome = DetectorOutcome("tiny-test", "1", "ok", frame_scores=scores)
    _summarise(det, outcome, [steady, flicker], Rule(), 100, None, 32.0, detection_frames)
    assert outcome.status == "ok" and outcome.score == pytest.approx(0.2)  # the unstable track is left out
    assert outcome.track_scores[2]["status"] == "inconclusive" and "3 of the 10" in outcome.track_scores[2]["reason"]

    only_flicker = DetectorOutcome("tiny-test", "1", "ok", frame_scores=[s for s in scores if s[1] == 2])
    _summarise(det, only_flicker, [steady, flicker], Rule(), 100, None, 32.0, detection_frames)
    assert only_flicker.status == "inconclusive" and only_flicker.score is None
    assert "too unstable" in only_flicker.reason
