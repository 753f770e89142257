"""The Medics detector end to end: upstream-format files installed from 127.0.0.1 and loaded strictly,
the authors' frame policy and rule through the pipeline, failing members named, bad files refused,
and our whole-video window policy.

Speed: the real 3-D members cost about 30 s per face clip on a 2-core CPU even at 9 frames, so the
pipeline tests build the detector with tiny, input-dependent stand-ins for the eight networks
(monkeypatched builders); the real networks' layouts, crops and TTA are tested in
tests/test_medics_models.py and tests/test_medics_faces.py, and their strict load here. MTCNN is the
real one (its weights ship with facenet-pytorch), on generated clips with a rendered face.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detectors import medics
from detectors import medics_faces as mf
from detectors.base import WeightStatus
from detectors.fakefinder_rules import MEDICS_2D, MEDICS_MEMBERS
from detectors.medics_faces import FaceRegion
from detectors.medics_models import face_score_3d
from detectors.registry import get_detector
from detectors.weights import WeightsError
from helpers import Server
from workbench import demo
from workbench.cli import main
from workbench.pipeline import Sampling, analyze
from workbench.video import VideoInfo

REPO = Path(__file__).resolve().parents[1]


# -- upstream files -------------------------------------------------------------------------------
def upstream_state(member: str, seed: int) -> dict[str, torch.Tensor]:
    """A layout-exact bare state dict as FakeFinder's files hold it. Every float tensor is a view of one
    seeded random buffer per file (the pickle stores that buffer once, keeping the archive small);
    the converter must still copy each key out on its own."""
    shapes = medics._expected_shapes(member)
    largest = max(int(np.prod(s)) for s in shapes.values())
    base = torch.randn(largest + len(shapes), generator=torch.Generator().manual_seed(seed))
    state = {}
    for i, (key, shape) in enumerate(shapes.items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(i, dtype=torch.int64)
        else:
            state[key] = base[i:i + int(np.prod(shape))].view(shape)
    return state


def pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def shipped_manifest_rows() -> tuple[list[dict], dict]:
    data = tomllib.loads((REPO / "weights" / "manifest.toml").read_text())
    rows = [r for r in data["weights"] if r["detector"] == "medics"]
    upstream = [u for u in data["upstream"] if u["detector"] == "medics"]
    assert len(upstream) == 1
    return rows, upstream[0]


@pytest.fixture(scope="module")
def medics_archive():
    """medics.tar.gz as FakeFinder ships it (members medics/<file>, bare state dicts), and the raw states."""
    out, states = io.BytesIO(), {}
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tf:
        for i, (member, (raw, _)) in enumerate(medics.FILES.items()):
            states[member] = upstream_state(member, seed=i)
            data = pickled(states[member])
            info = tarfile.TarInfo(f"medics/{raw}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue(), states


def test_the_shipped_manifest_names_every_member_file():
    rows, upstream = shipped_manifest_rows()
    assert sorted(r["file"] for r in rows) == sorted(to for _, to in medics.FILES.values())
    assert all(r["format"] == "safetensors" and r["licence"] and r["source"] and r["made"] for r in rows)
    assert upstream["name"] == "fakefinder" and upstream["format"] == "tar.gz"
    assert upstream["url"] == "https://github.com/IQTLabs/FakeFinder/releases/download/weights/medics.tar.gz"
    assert {c["raw"]: c["to"] for c in upstream["converts"]} == {f"medics/{raw}": to for raw, to in medics.FILES.values()}
    assert "sha256" not in upstream and upstream["max_bytes"] >= 2**31


def test_medics_installs_from_its_archive_and_loads_strictly(tmp_path, monkeypatch, medics_archive, capsys):
    archive, states = medics_archive
    server = Server()
    server.files["/weights/medics.tar.gz"] = archive
    try:
        rows, upstream = shipped_manifest_rows()
        text = []
        for row in rows:
            text += ["[[weights]]"] + [f"{k} = {json.dumps(v)}" for k, v in row.items()] + [""]
        converts = ", ".join(f"{{raw = {json.dumps(c['raw'])}, to = {json.dumps(c['to'])}}}" for c in upstream["converts"])
        text += ["[[upstream]]", 'detector = "medics"', 'name = "fakefinder"',
                 f'url = "{server.url("/weights/medics.tar.gz")}"', 'format = "tar.gz"',
                 f"max_bytes = {upstream['max_bytes']}", f"converts = [{converts}]", ""]
        weights = tmp_path / "weights"
        weights.mkdir()
        (weights / "manifest.toml").write_text("\n".join(text))
        monkeypatch.setenv("WORKBENCH_WEIGHTS_DIR", str(weights))
        monkeypatch.setenv("WORKBENCH_WEIGHTS_MANIFEST", str(weights / "manifest.toml"))
        assert get_detector("medics").weights_status().installed is False
        assert main(["weights", "install", "medics", "--quiet"]) == 0
        converted = sorted((weights / "medics").glob("*.safetensors"))
        assert len(converted) == 8

        det = get_detector("medics")
        assert det.weights_status().installed
        model = det.model("cpu")
        assert len(det.weights_sha256) == 64
        # Each member holds exactly its own upstream file's tensors (a mix-up of files would show here).
        for member, state in states.items():
            loaded = getattr(model, member).state_dict()
            assert loaded.keys() == state.keys()
            for key in (next(iter(state)), list(state)[-1]):
                assert torch.equal(loaded[key], state[key].float() if state[key].is_floating_point() else state[key])
        assert model.mtcnn.thresholds == list(medics.MTCNN_THRESHOLDS) and model.mtcnn.factor == medics.MTCNN_FACTOR
        assert model.mtcnn.select_largest is False

        # A converted file changed after install: loading refuses it (never a partial model).
        victim = next(p for p in converted if "res34" in p.name)
        os.chmod(victim, 0o644)
        blob = bytearray(victim.read_bytes())
        blob[-10] ^= 0xFF
        victim.write_bytes(bytes(blob))
        with pytest.raises(WeightsError, match="does not match"):
            get_detector("medics").model("cpu")
    finally:
        server.close()
        from detectors.base import _LOADED  # lazy: drop the 0.8 GB model this test loaded
        for key in [k for k in _LOADED if k[0] is medics.Medics]:
            del _LOADED[key]


class NotATensor:
    """Anything a safe loader must refuse to build."""


def test_bad_or_unsafe_checkpoints_are_refused(tmp_path):
    shapes = medics._expected_shapes("r2p1_112")
    good = {k: torch.zeros(s, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
            for k, s in shapes.items()}
    raw = medics.FILES["r2p1_cutmix"][0]

    unsafe = tmp_path / "unsafe" / raw
    unsafe.parent.mkdir()
    unsafe.write_bytes(pickle.dumps({"stem.0.weight": NotATensor()}))
    with pytest.raises(WeightsError, match="weights_only"):
        medics.convert_checkpoint(unsafe)

    wrong = tmp_path / "wrong" / raw
    wrong.parent.mkdir()
    state = dict(good, **{"fc.weight": torch.zeros(3, 512)})
    del state["stem.0.weight"]
    torch.save(state, wrong)
    with pytest.raises(WeightsError, match=r"missing 1 key\(s\): stem.0.weight.*wrong shape: fc.weight"):
        medics.convert_checkpoint(wrong)

    other = tmp_path / "other" / medics.FILES["i3d"][0]  # an r2plus1d file under an I3D name
    other.parent.mkdir()
    torch.save(good, other)
    with pytest.raises(WeightsError, match="not the Medics i3d checkpoint"):
        medics.convert_checkpoint(other)

    with pytest.raises(WeightsError, match="not a Medics weights file"):
        medics.convert_checkpoint(tmp_path / "wrong" / "model.pth")

    # DataParallel's prefix is undone; fp16 becomes fp32.
    prefixed = tmp_path / "prefixed" / raw
    prefixed.parent.mkdir()
    torch.save({f"module.{k}": v.half() if v.is_floating_point() else v for k, v in good.items()}, prefixed)
    out = medics.convert_checkpoint(prefixed)
    assert out.keys() == good.keys() and out["fc.weight"].dtype == torch.float32


# -- the pipeline, with stand-in networks ---------------------------------------------------------
class Tiny3d(nn.Module):
    """Logits (0, w x mean of the clip): cheap, input-dependent stand-in for a 3-D member."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return torch.stack([torch.zeros(len(x)), self.w * x.flatten(1).mean(1)], dim=1)


class Tiny2d(nn.Module):
    """Per frame sigmoid(w x mean), then the lower median over frames, like the 2-D member's video path."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0))

    def forward(self, x):
        return torch.median(torch.sigmoid(self.w * x.mean(dim=(1, 3, 4))), dim=1).values


class Broken3d(nn.Module):
    def forward(self, x):
        raise RuntimeError("simulated member failure")


class RandomMedics(medics.Medics):
    """The registered detector's code with the stand-in networks and no weight files (test only)."""

    def weights_status(self) -> WeightStatus:
        return WeightStatus(True, "stand-in networks (test)")


def stand_in(monkeypatch, broken: str | None = None):
    """Make medics build Tiny3d/Tiny2d members (one Broken3d for the member `broken`)."""
    built = iter(m for m, _, _ in medics.MEMBERS_3D)
    weights = {m: 0.5 + 0.25 * i for i, m in enumerate(MEDICS_MEMBERS)}

    def member_3d(kind):
        member = next(built)
        return Broken3d() if member == broken else Tiny3d(weights[member] / (100.0 if kind == "res34" else 1.0))

    monkeypatch.setattr(medics, "build_member_3d", member_3d)
    monkeypatch.setattr(medics, "build_member_2d", Tiny2d)


def detector(monkeypatch, policy="authors", broken=None):
    stand_in(monkeypatch, broken)
    det = RandomMedics(frame_policy=policy)
    det.use_random_weights(0)
    return det


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory):
    """320 x 180, 10 fps, 14 s (140 frames): one rendered face throughout."""
    path = tmp_path_factory.mktemp("medics") / "face.mp4"
    demo.make_clip(path, [demo.SceneFace("grace_hopper", x=0.45, y=0.45, height=0.4)],
                   seconds=14.0, fps=10, width=320, height=180, seed=3, gop=50)
    return path


def rule_by_hand(values: list[float]) -> float:
    return min(0.999, max(0.001, sum(values) / len(values)))


def members_of(outcome) -> dict[str, dict]:
    return {m["name"]: m for m in outcome.upstream["members"]}


def test_authors_policy_through_the_pipeline(monkeypatch, face_clip):
    det = detector(monkeypatch)
    outcome = analyze(face_clip, {"medics": det}, Sampling(sample_fps=1)).detectors["medics"]
    assert outcome.status == "ok" and outcome.rule == "authors:medics"
    # The authors' frames: 0 ... 98 of the 140 (frame 99 is read by no step of theirs).
    assert outcome.frames_used == list(range(99))
    assert outcome.upstream["first_frame"] == 0 and outcome.upstream["last_frame"] == 98
    assert any("first 100 frames (about 3.3 s) only" in n for n in outcome.upstream["notes"])
    members = members_of(outcome)
    assert list(members) == list(MEDICS_MEMBERS) and all(m["status"] == "ok" for m in members.values())
    # The headline is the authors' rule on the members' values the run reports.
    assert outcome.score == pytest.approx(rule_by_hand([m["value"] for m in members.values()]), abs=1e-12)
    assert outcome.upstream["score"] == outcome.score
    faces = outcome.upstream["faces"]
    assert len(faces) >= 1 and all(f["frames"][0] % 10 == 0 and f["frames"][-1] <= 98 for f in faces)
    assert len(faces[0]["frames"]) >= 30
    for member, m in members.items():  # each member's value is its mean over the faces
        assert m["value"] == pytest.approx(np.mean([f["members"][member] for f in faces]))
    assert len(set(round(m["value"], 9) for m in members.values())) > 2  # the members really differ
    assert outcome.track_scores  # the face was filed under our face track


def test_a_failing_member_is_named_and_the_rule_uses_the_others(monkeypatch, face_clip):
    det = detector(monkeypatch, broken="mc3_224")
    outcome = analyze(face_clip, {"medics": det}, Sampling(sample_fps=1)).detectors["medics"]
    members = members_of(outcome)
    assert members["mc3_224"]["status"] == "failed" and members["mc3_224"]["value"] is None
    assert "simulated member failure" in members["mc3_224"]["reason"]
    # Upstream's single try/except would have dropped r2p1_112, i3d_cutmix and r2p1_cutmix too.
    ok = [m["value"] for n, m in members.items() if n != "mc3_224"]
    assert all(members[n]["status"] == "ok" for n in ("r2p1_112", "i3d_cutmix", "r2p1_cutmix", MEDICS_2D))
    assert outcome.status == "ok" and outcome.score == pytest.approx(rule_by_hand(ok), abs=1e-12)
    assert any("a failed member is named" in n for n in outcome.upstream["notes"])


def test_no_face_is_inconclusive_not_a_score(monkeypatch, no_face_clip):
    det = detector(monkeypatch)
    outcome = analyze(no_face_clip, {"medics": det}, Sampling(sample_fps=1)).detectors["medics"]
    assert outcome.status == "inconclusive" and outcome.score is None
    assert "no face found" in outcome.reason and "0.5 x 1920" in outcome.reason  # the retry was tried
    assert outcome.frames_used == list(range(30))


def test_whole_video_policy_scores_every_window_and_headlines_the_highest(monkeypatch, face_clip):
    det = detector(monkeypatch, policy="whole")
    outcome = analyze(face_clip, {"medics": det}, Sampling(sample_fps=1)).detectors["medics"]
    assert outcome.frames_used == [n for n in range(140) if n % 100 != 99]
    faces = outcome.upstream["faces"]
    windows: dict[int, list[dict]] = {}
    for face in faces:
        windows.setdefault(face["frames"][0] // 100, []).append(face)
    assert sorted(windows) == [0, 1]  # frames 100-139 hold 40 frames: one more face region
    by_hand = {w: rule_by_hand([np.mean([f["members"][m] for f in fs]) for m in MEDICS_MEMBERS])
               for w, fs in windows.items()}
    assert by_hand[0] != pytest.approx(by_hand[1])
    best = max(by_hand, key=by_hand.get)
    assert outcome.status == "ok" and outcome.score == pytest.approx(by_hand[best], abs=1e-12)
    members = members_of(outcome)
    for member, m in members.items():  # the members shown are the headline window's
        assert m["value"] == pytest.approx(np.mean([f["members"][member] for f in windows[best]]))
    notes = " | ".join(outcome.upstream["notes"])
    assert "window frames 0-98" in notes and "window frames 100-139" in notes
    assert f"headline window: frames {100 * best}-" in notes and "(ours, not the authors')" in notes


# -- policies and face search, without the pipeline -----------------------------------------------
def info(frames: int) -> VideoInfo:
    return VideoInfo("x.mp4", frames, 30.0, 1920, 1080, frames / 30.0, "h264", "mp4", 0, 0)


def test_frame_policies():
    authors = medics.Medics()
    assert authors.frame_policy == "authors"
    assert authors.wanted_frames(info(300)) == list(range(99))
    assert authors.wanted_frames(info(40)) == list(range(40))
    whole = medics.Medics(frame_policy="whole")
    assert whole.wanted_frames(info(250)) == [n for n in range(250) if n % 100 != 99]
    assert authors.describe()["frame_policy"] == "authors" and whole.describe()["frame_policy"] == "whole"
    with pytest.raises(ValueError, match="unknown Medics frame policy"):
        medics.Medics(frame_policy="middle")


def test_our_whole_video_policy_is_offered_beside_the_authors_as_its_own_detector():
    """`medics-whole` is what an analyst picks (app, CLI, jobs) for the whole-video policy: same
    weights and card facts as `medics`, its own name, policy, summary and reuse key."""
    whole, authors = get_detector("medics-whole"), get_detector("medics")
    assert whole.frame_policy == "whole" and authors.frame_policy == "authors"
    assert whole.wanted_frames(info(250)) == [n for n in range(250) if n % 100 != 99]
    assert [w.file for w in whole.weights] == [w.file for w in authors.weights]
    assert whole.install_hint == authors.install_hint == "python -m workbench weights install medics"
    assert whole.describe()["frame_policy"] == "whole" and whole.describe()["name"] == "medics-whole"
    assert whole.card.summary.startswith("The Medics (DFDC 5th) with OUR frame policy")
    assert whole.card.training_data == authors.card.training_data  # the same models, the same data
    assert "Ours, not the authors'" in whole.upstream_rule


class RecordingMTCNN:
    """Records what the face search hands MTCNN and finds one 40 x 40 face on every frame."""

    def __init__(self):
        self.calls = []

    def detect(self, frames, landmarks=False):
        self.calls.append(frames.shape)
        boxes = [np.array([[10.0, 10.0, 50.0, 50.0]]) for _ in frames]
        return np.array(boxes, dtype=object), np.array([[0.99]] * len(frames), dtype=object)


def test_face_search_batches_the_tenth_frames_shrunk_as_upstream():
    frames = [np.zeros((360, 640, 3), np.uint8) for _ in range(99)]
    mtcnn = RecordingMTCNN()
    search = medics.find_faces(mtcnn, frames)
    # frames 0, 10, ..., 90 in one call, at 0.25 x 1920 / 640 = 0.75: 480 x 270
    assert mtcnn.calls == [(10, 270, 480, 3)]
    assert len(search.regions) == 1 and search.scale == pytest.approx(0.75)
    region = search.regions[0]
    assert (region.frame_from, region.frame_to) == (0, 99)
    assert region.rows == (int(10 / 0.75), int(49 / 0.75))


def test_frame_stack_indexes_like_the_video_array():
    video = np.arange(5 * 4 * 6 * 3, dtype=np.uint8).reshape(5, 4, 6, 3)
    stack = medics.FrameStack(list(video))
    assert stack.shape == video.shape
    assert np.array_equal(stack[1:4, 1:3, 2:5], video[1:4, 1:3, 2:5])
    assert np.array_equal(stack[2, -3:4, 0:2], video[2, -3:4, 0:2])
    assert stack[7:9, 0:1, 0:1].size == 0


def test_a_frame_the_decoder_could_not_give_ends_the_window_there(monkeypatch):
    stand_in(monkeypatch)
    monkeypatch.setattr(medics, "build_face_finder", RecordingMTCNN)
    model = medics.MedicsModels().eval()
    stages = []
    run = medics.MedicsRun(model, info(140), "authors", 100, lambda done, total, stage: stages.append(stage))
    frames = np.random.default_rng(0).integers(0, 256, (99, 64, 64, 3), dtype=np.uint8)
    for n in range(99):
        if n != 45:  # upstream stops reading at the first frame it cannot read
            run.add(n, frames[n])
    verdict = run.finish()
    assert verdict.frames_analysed == list(range(45))
    assert model.mtcnn.calls == [(5, 480, 480, 3)]  # frames 0, 10, ..., 40 at 0.25 x 1920 / 64
    assert verdict.status == "ok" and [f.frames for f in verdict.faces] == [list(range(45))]
    assert any("frame 45 could not be decoded" in n for n in verdict.notes)
    assert stages == [f"medics {m}" for m in MEDICS_MEMBERS]


class BatchSizes(nn.Module):
    """Records the batch size of every forward pass; logits (0, 0)."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x):
        self.batches.append(len(x))
        return torch.zeros(len(x), 2)


def test_the_two_mirror_passes_run_one_after_the_other():
    net = BatchSizes()
    video = np.zeros((40, 48, 48, 3), np.uint8)
    assert face_score_3d(net, "mc3_224", video, FaceRegion(0, 39, (0, 47), (0, 47), None)) == pytest.approx(0.5)
    assert net.batches == [1, 1]  # not one batch of two: half the peak activation memory (mc3_18 at 224 px)


class NotAProbability(Tiny3d):
    def forward(self, x):
        return torch.full((len(x), 2), float("nan"))


def test_a_member_giving_no_probability_is_failed_not_scored(monkeypatch):
    stand_in(monkeypatch)
    monkeypatch.setattr(medics, "build_face_finder", RecordingMTCNN)
    model = medics.MedicsModels().eval()
    model.res34 = NotAProbability(1.0)
    run = medics.MedicsRun(model, info(40), "authors", 100)
    for n, frame in enumerate(np.random.default_rng(1).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)):
        run.add(n, frame)
    verdict = run.finish()
    members = {m.name: m for m in verdict.members}
    assert members["res34"].status == "failed" and "not a probability" in members["res34"].reason
    ok = [m.value for m in verdict.members if m.status == "ok"]
    assert len(ok) == 7 and verdict.score == pytest.approx(min(0.999, max(0.001, float(np.mean(ok)))), abs=1e-12)


class DriftingMTCNN:
    """One 40 x 40 face on every shrunk frame, moving `dx` pixels sideways per sampled frame."""

    def __init__(self, dx: int):
        self.dx = dx

    def detect(self, frames, landmarks=False):
        boxes = [np.array([[10.0 + self.dx * i, 10.0, 50.0 + self.dx * i, 50.0]]) for i in range(len(frames))]
        return np.array(boxes, dtype=object), np.array([[0.99]] * len(frames), dtype=object)


@pytest.mark.parametrize("dx", [0, 1])
def test_a_face_whose_2d_crops_fakefinder_could_not_stack_is_named_with_fakefinders_value(monkeypatch, dx):
    """640 x 360 is found at scale 0.75 (boxes x 4/3 back), so sideways drift makes the 2-D crops'
    widths differ by a pixel while their heights stay equal: FakeFinder's numpy 1.21 could not stack
    them and its bare except dropped the 2-D model. Ours scores it and says what FakeFinder would have."""
    stand_in(monkeypatch)
    monkeypatch.setattr(medics, "build_face_finder", lambda: DriftingMTCNN(dx))
    model = medics.MedicsModels().eval()
    frames = list(np.random.default_rng(2).integers(0, 256, (40, 360, 640, 3), dtype=np.uint8))
    out = medics.score_window(model, frames, 0, 1, {})
    assert out.status == "ok" and set(out.scores) == set(MEDICS_MEMBERS)  # the 2-D model is scored here
    search = medics.find_faces(model.mtcnn, frames)
    crops = mf.crops_2d(np.stack(frames), search.regions[0], mf.face_boxes_2d(search.regions[0], search.scale))
    heights, widths = {c.shape[0] for c in crops}, {c.shape[1] for c in crops}
    if dx == 0:  # a still face: one crop size, FakeFinder stacked it
        assert len(heights) == len(widths) == 1 and out.notes == []
        return
    assert len(heights) == 1 and len(widths) > 1
    without = rule_by_hand([v for m, v in out.scores.items() if m != MEDICS_2D])
    assert len(out.notes) == 1 and "FakeFinder would have dropped the 2-D model (srxt50)" in out.notes[0]
    assert out.notes[0].endswith(f"The authors' rule without it: {without:.3f}")
    assert out.score == pytest.approx(rule_by_hand(list(out.scores.values())), abs=1e-12)
    run = medics.MedicsRun(model, info(40), "authors", 100)  # and the verdict carries it
    for n, frame in enumerate(frames):
        run.add(n, frame)
    assert out.notes[0] in run.finish().notes
