"""Video-level detectors through the pipeline, the store and the outputs: a test-only detector that finds
its faces from the clip's truth boxes, with members that can fail, beside an ordinary crop detector."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from detectors.base import Status
from detectors.registry import get_detector, register, unregister
from detectors.video import Member, MemberStatus, VideoDetector, VideoFace, VideoRun, VideoVerdict
from tiny_detector import TEST_CARD
from workbench.aggregate import score_rules, video_lines
from workbench import jobs
from workbench.cases import ensure_demo_case
from workbench.demo import DemoTruth, truth_path
from workbench.evidence import ingest
from workbench.pipeline import Sampling, analyze, plan
from workbench.report import _Explainers
from workbench.review import DetectorView, load_review
from workbench.sandbox import probe_isolated
from workbench.service import analyse_evidence
from workbench.store import Store

NAME = "fake-video"
STEP = 3


class FakeVideoRun(VideoRun):
    """Faces from the truth boxes; member "bright" = mean of the crop / 255, "dark" = 1 - bright."""

    def __init__(self, det: "FakeVideo", progress=None):
        self.det = det
        self.progress = progress
        self.frames: list[int] = []
        self.values: dict[str, dict[int, float]] = {}  # face -> {frame: bright}
        self.boxes: dict[str, dict[int, list[float]]] = {}

    def add(self, n: int, rgb: np.ndarray) -> None:
        if n in self.det.fail_at_frames:
            raise RuntimeError(f"simulated decode-side failure on frame {n}")
        self.frames.append(n)
        for face, boxes in self.det.truth.face_boxes.items():
            box = boxes[n] if n < len(boxes) else None
            if box is None:
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            self.values.setdefault(face, {})[n] = float(rgb[y1:y2, x1:x2].mean() / 255.0)
            self.boxes.setdefault(face, {})[n] = list(box)

    def finish(self) -> VideoVerdict:
        faces, frame_scores = [], []
        failing = self.det.failing_member
        members_ok = [m for m in ("bright", "dark") if m != failing]
        for k, member in enumerate(("bright", "dark")):
            try:  # as the real detectors do: a member's error (its progress call included) is that member's
                if self.progress:
                    self.progress(k + 1, 2, f"{NAME}: {member}")
            except Exception:
                pass
        for fid, face in enumerate(sorted(self.values)):
            frames = sorted(self.values[face])
            bright = float(np.mean([self.values[face][f] for f in frames]))
            per_member = {"bright": bright, "dark": 1.0 - bright}
            used = {m: v for m, v in per_member.items() if m in members_ok}
            faces.append(VideoFace(fid, frames, [self.boxes[face][f] for f in frames],
                                   score=float(np.mean(list(used.values()))), members=used))
            frame_scores += [(f, fid, self.values[face][f]) for f in frames]
        if not faces:
            return VideoVerdict(Status.INCONCLUSIVE.value, reason="no face in the truth boxes",
                                frames_analysed=self.frames)
        members = [Member(m, MemberStatus.OK, value=float(np.mean([f.members[m] for f in faces])))
                   for m in members_ok]
        if failing:
            members.append(Member(failing, MemberStatus.FAILED, reason="RuntimeError: simulated member failure"))
        return VideoVerdict(Status.OK.value, score=max(f.score for f in faces), members=members, faces=faces,
                            frame_scores=frame_scores if "bright" in members_ok else [],
                            frames_analysed=self.frames, notes=["test detector: faces from the clip's truth"])


class FakeVideo(VideoDetector):
    name = NAME
    version = "1"
    card = TEST_CARD
    upstream_rule = "per face the mean of the members; video score = the highest face"
    truth = None
    failing_member: str | None = None
    fail_at_frames: tuple[int, ...] = ()

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Conv3d(3, 2, 1)  # 5-D weights: loading must keep torch's own layout

    def load_weights(self, model: nn.Module) -> str:
        return "f" * 64

    def wanted_frames(self, info) -> list[int]:
        return list(range(1, info.frames, STEP))

    def start(self, info, progress=None) -> VideoRun:
        self.model()
        return FakeVideoRun(self, progress)


@pytest.fixture
def fake_video(two_face_clip):
    _, truth = two_face_clip
    cls = type("FakeVideoT", (FakeVideo,), {"truth": truth})
    unregister(NAME)
    register(cls)
    yield cls
    unregister(NAME)


def test_a_video_detector_runs_beside_a_crop_detector_and_its_faces_land_on_our_tracks(
        two_face_clip, fake_video, tiny_detectors):
    path, truth = two_face_clip
    result = analyze(path, ["tiny-test", NAME], Sampling(sample_fps=5))
    tiny, video = result.detectors["tiny-test"], result.detectors[NAME]
    assert tiny.status == "ok" and tiny.score is not None  # the crop detector is untouched
    assert video.status == "ok", video.reason
    wanted = list(range(1, truth.frames, STEP))
    assert video.frames_used == wanted  # every frame it asked for, decoded in the one pass
    # The authors' rule by hand from the faces' members: the mean per face, the highest face.
    faces = video.upstream["faces"]
    assert len(faces) == 2
    by_hand = max(np.mean(list(f["members"].values())) for f in faces)
    assert video.score == pytest.approx(by_hand)
    assert video.rule == f"authors:{NAME}"
    # Each face is filed under the track that follows the same person.
    tracks = {t.id: t for t in result.tracks}
    for f in faces:
        assert f["track"] in tracks
        assert video.track_scores[f["track"]]["score"] == pytest.approx(f["score"])
    assert len({f["track"] for f in faces}) == 2
    # Per-frame values keep their frames and are filed under the same tracks.
    assert video.frame_scores and {t for _, t, _ in video.frame_scores} == {f["track"] for f in faces}
    assert {f for f, _, _ in video.frame_scores} <= set(wanted)
    assert video.upstream["faces_without_track"] == 0
    assert [m["name"] for m in video.upstream["members"]] == ["bright", "dark"]
    said = score_rules(video.status, video.rule, video.upstream)
    assert said["headline"].startswith("authors' rule: per face the mean")
    lines = video_lines(video.upstream)
    assert any(f"Read {len(wanted)} frame(s)" in line for line in lines)
    assert "test detector: faces from the clip's truth" in lines


def test_its_frames_are_decoded_but_get_no_face_detection_of_ours(two_face_clip, fake_video, tiny_detectors):
    path, _ = two_face_clip

    info = probe_isolated(str(path))
    alone = plan(info, Sampling(sample_fps=2), {"tiny-test": get_detector("tiny-test")})
    both = plan(info, Sampling(sample_fps=2), {"tiny-test": get_detector("tiny-test"), NAME: fake_video()})
    assert set(both.frames) > set(alone.frames)  # its frames are decoded…
    assert both.detection_frames == alone.detection_frames  # …without adding face detection
    assert both.face_key == alone.face_key  # and the face run stays reusable by both


def test_a_failing_member_is_named_and_left_out(two_face_clip, fake_video):
    path, _ = two_face_clip
    fake_video.failing_member = "dark"
    result = analyze(path, [NAME], Sampling(sample_fps=5))
    video = result.detectors[NAME]
    assert video.status == "ok"
    members = {m["name"]: m for m in video.upstream["members"]}
    assert members["dark"]["status"] == "failed" and "simulated member failure" in members["dark"]["reason"]
    assert members["dark"]["value"] is None
    # The rule used "bright" alone: the score is the brightest face's bright value.
    assert video.score == pytest.approx(max(f["members"]["bright"] for f in video.upstream["faces"]))
    assert any("Member dark failed, left out of the rule: RuntimeError" in line for line in video_lines(video.upstream))


def test_a_detector_that_raises_is_an_error_never_a_score(two_face_clip, fake_video, tiny_detectors):
    path, _ = two_face_clip
    fake_video.fail_at_frames = (7,)
    result = analyze(path, ["tiny-test", NAME], Sampling(sample_fps=5))
    video = result.detectors[NAME]
    assert video.status == "error" and video.score is None
    assert "simulated decode-side failure on frame 7" in video.reason
    assert result.detectors["tiny-test"].status == "ok"
    assert result.ensemble["members"] == ["tiny-test"]


class Cancelled(Exception):
    pass


def test_a_cancel_raised_by_progress_inside_its_run_stops_the_analysis(two_face_clip, fake_video):
    """A job's cancel arrives through the progress callback; a detector that catches its members'
    errors must not turn it into a failed member and carry on."""
    path, _ = two_face_clip
    stages = []

    def progress(done, total, stage):
        stages.append(stage)
        if stage.startswith(NAME):
            raise Cancelled()

    with pytest.raises(Cancelled):
        analyze(path, [NAME], Sampling(sample_fps=5), progress=progress)
    assert stages[-1] == f"{NAME}: bright"  # the first call raised; nothing ran on after it


def test_it_runs_as_a_job_and_reports_its_stages(two_face_clip, fake_video, fresh_store, tmp_path):
    path, _ = two_face_clip
    store = Store(tmp_path / "workbench.db")
    try:
        sha = ingest(store, path, "clip.mp4", tmp_path / "evidence", actor="alice")["sha256"]
        job_id = jobs.submit(store, sha, [NAME], Sampling(sample_fps=5), actor="alice")
        assert jobs.run_queued(store.path) == [job_id]
        job = store.job(job_id)
        assert job["state"] == "done", job
        (analysis,) = store.analyses(sha)
        assert job["result"] == {NAME: analysis["id"]} and analysis["actor"] == "alice"
        assert analysis["status"] == "ok" and analysis["upstream"]["kind"] == "video"
    finally:
        store.close()


def test_a_verdict_cannot_carry_a_score_it_has_no_right_to():
    with pytest.raises(ValueError, match="only an ok result"):
        VideoVerdict("inconclusive", score=0.5, reason="no face")
    with pytest.raises(ValueError, match="finite score"):
        VideoVerdict("ok", score=None)
    with pytest.raises(ValueError, match="finite score"):
        VideoVerdict("ok", score=float("nan"))
    with pytest.raises(ValueError, match="must say why"):
        VideoVerdict("error")
    with pytest.raises(ValueError, match="must say why"):
        Member("b0", MemberStatus.UNAVAILABLE)
    with pytest.raises(ValueError, match="only an ok member"):
        Member("b0", MemberStatus.FAILED, reason="boom", value=0.5)
    with pytest.raises(ValueError, match="frames but"):
        VideoFace(0, [1, 2], [(0, 0, 1, 1)])


def test_stored_reused_and_shown_the_same(two_face_clip, fake_video, fresh_store, tmp_path):
    path, _ = two_face_clip
    fake_video.failing_member = "dark"
    sha = ingest(fresh_store, path, "clip.mp4", tmp_path / "evidence", actor="tester")["sha256"]
    first = analyse_evidence(fresh_store, sha, [NAME], Sampling(sample_fps=5), actor="tester")
    again = analyse_evidence(fresh_store, sha, [NAME], Sampling(sample_fps=5), actor="tester")
    a, b = first.detectors[NAME], again.detectors[NAME]
    assert not a.reused and b.reused
    assert b.score == a.score and b.upstream == a.upstream and b.frames_used == a.frames_used
    view = load_review(fresh_store, sha).detectors[NAME]
    assert view.upstream["members"][1]["status"] == "failed"
    assert view.score == pytest.approx(a.score)


def test_the_report_offers_no_gradcam_for_a_video_detector(fake_video):
    view = DetectorView(NAME, "1", "ok", 0.5, None, 0.5, f"authors:{NAME}", [1], None, "", 1)
    with pytest.raises(LookupError, match="judges whole videos"):
        _Explainers().get(view)


def test_review_names_its_members_and_offers_no_gradcam_for_it(app_home, monkeypatch, tiny_detectors):
    for var in ("WORKBENCH_DB", "WORKBENCH_EVIDENCE", "WORKBENCH_IMPORT_DIR"):
        monkeypatch.delenv(var, raising=False)
    clip = app_home / "demo" / "demo.mp4"
    truth = DemoTruth.from_dict(json.loads(truth_path(clip).read_text()))
    cls = type("FakeVideoDemo", (FakeVideo,), {"truth": truth, "failing_member": "dark"})
    unregister(NAME)
    register(cls)
    store = Store(app_home / "workbench.db")
    try:
        case = ensure_demo_case(store, app_home / "evidence", clip)
        sha = store.case_evidence(case)[0]["sha256"]
        result = analyse_evidence(store, sha, ["tiny-test", NAME], Sampling(sample_fps=2), actor="tester")
    finally:
        store.close()
        unregister(NAME)
    register(cls)  # the page reads the registry too
    try:
        assert result.detectors[NAME].status == "ok"
        app = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
        at = AppTest.from_file(app, default_timeout=180).run()
        assert not at.exception, at.exception
        captions = "\n".join(c.value for c in at.caption)
        assert "Member dark failed, left out of the rule: RuntimeError: simulated member failure." in captions
        assert f"Scored by authors' rule: {FakeVideo.upstream_rule}" in captions
        assert f"No Grad-CAM for {NAME}" in captions
    finally:
        unregister(NAME)


def test_a_gpu_load_turns_tf32_off_as_the_authors_ran(monkeypatch):
    """No GPU here: the load is run with a CUDA device whose move is a no-op, to see the switch."""
    from detectors import base  # lazy: the flags are process-wide, restored below

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    det = FakeVideo("cuda")
    monkeypatch.setattr(nn.Module, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(det, "_weights_key", lambda: ("tf32-test",))
    try:
        det.model()
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        base._LOADED.pop((type(det), "cuda", ("tf32-test",)), None)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
