"""NTechLab end to end: DSFD's test-time decode/NMS on hand-made tensors, the face-finding path, the install of
fp16 upstream files from 127.0.0.1, strict loading, the authors' method through the pipeline, member failures."""
from __future__ import annotations

import io
import json
import math
import pickle
import tarfile
import tomllib

import numpy as np
import pytest
import torch
from torch import nn

from detectors import ntech
from detectors.ntech_dsfd import DSFDOutput, decode, detect, nms
from detectors.registry import get_detector
from detectors.weights import MANIFEST, WeightsError
from helpers import FIXTURES, Server
from workbench import demo
from workbench.cli import main
from workbench.pipeline import Sampling, analyze
from workbench.video import VideoInfo, iter_frames, probe
from tools.fixtures.ntech_dsfd_detect import detect_cases

SQRT_15 = math.sqrt(1.5)


# -- DSFD's Detect, on hand-made tensors -------------------------------------------------------------
def test_decode_moves_the_centre_by_a_tenth_and_scales_the_size_by_exp_a_fifth():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    loc = torch.tensor([[1.0, -1.0, 0.0, 5 * math.log(2.0)]])
    # centre (0.5 + 0.1·0.2, 0.5 - 0.1·0.4) = (0.52, 0.46); size (0.2, 0.4·2) -> corners
    np.testing.assert_allclose(decode(loc, priors).numpy(), [[0.42, 0.06, 0.62, 0.86]], atol=1e-6)


def test_nms_keeps_the_best_and_drops_boxes_overlapping_it_by_more_than_0_3():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 5, 10, 15]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 3 is best; box 0 overlaps it by 50/150 = 0.333 (dropped), box 1 by 45/155 = 0.290 (kept)
    assert nms(boxes, scores) == [3, 1, 2]
    assert nms(boxes, scores, overlap=0.35) == [3, 0, 2]  # 0 stays, then suppresses 1 (IoU 90/110)
    assert nms(boxes, scores, top_k=3) == [3, 1]  # only the three best scores are candidates: box 2 is not one
    same = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float32)
    assert nms(same, torch.tensor([0.5, 0.5])) == [1]  # equal scores: the later box wins, the other is suppressed
    assert nms(torch.zeros((0, 4)), torch.zeros(0)) == []


def test_detect_keeps_face_scores_above_0_01_decodes_them_and_orders_them_best_first():
    # Image 64 x 64 with one cell on each of the six levels: level k has its prior centred at step_k / 2 / 64.
    sizes = ((1, 1),) * 6
    loc = torch.zeros((1, 6, 4))
    loc[0, 2] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    face = torch.tensor([0.01, 0.6, 0.9, 0.005, 0.0101, 0.02])
    scores = torch.stack((1 - face, face), -1)[None]
    rows = detect(DSFDOutput(loc, scores, sizes), (64, 64))[0]

    def corners(level, dx=0.0):
        step, size = (4, 8, 16, 32, 64, 128)[level], (16, 32, 64, 128, 256, 512)[level]
        c = step / 2 / 64
        w, h = min(size / 64 / SQRT_15, 1.0), min(size / 64 * SQRT_15, 1.0)  # priors are clamped to [0, 1]
        cx = c + dx * 0.1 * w
        return [cx - w / 2, c - h / 2, cx + w / 2, c + h / 2]

    # 0.01 is not above 0.01 and 0.005 is below. Level 1's box lies inside level 2's: IoU = area1 / area2 =
    # 0.25 / 0.8165 = 0.306 > 0.3, suppressed. Level 4 (0, 0, 1, 1) overlaps level 2 by 0.384 / 1.432 = 0.268 and
    # level 5 (0.5, 0.5, 1.5, 1.5) by 0.25 / 1.75: both kept, in score order.
    assert rows[:, 0].tolist() == pytest.approx([0.9, 0.02, 0.0101])
    np.testing.assert_allclose(rows[:, 1:].numpy(), [corners(2, dx=1.0), corners(5), corners(4)], atol=1e-6)
    empty = detect(DSFDOutput(loc, torch.stack((1 - face * 0, face * 0), -1)[None], sizes), (64, 64))[0]
    assert empty.shape == (0, 5)


@pytest.mark.parametrize("case", ["small", "large"])
def test_detect_equals_fakefinders_detect_on_seeded_head_outputs(case):
    """tools/fixtures/ntech_dsfd_detect.py ran FakeFinder's Detect on these inputs (the large one has 12,181
    candidates: the top-5000 cut acts); our decode + NMS must keep the same boxes in the same order."""
    text = (FIXTURES / "ntech-dsfd-detect.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")][1:]
    want = {name: json.loads(values) for name, values in rows}
    loc, scores, sizes, image = detect_cases()[case]
    assert int((scores[0, :, 1] > np.float32(0.01)).sum()) == want[case + "_candidates"][0]
    ours = detect(DSFDOutput(torch.from_numpy(loc), torch.from_numpy(scores), sizes), image)[0]
    expected = torch.tensor(want[case], dtype=torch.float32).view(-1, 5)
    assert ours.shape == expected.shape
    assert torch.allclose(ours, expected, rtol=0, atol=1e-6)


def test_detect_refuses_predictions_that_do_not_match_the_priors():
    with pytest.raises(ValueError, match="priors"):
        detect(DSFDOutput(torch.zeros((1, 5, 4)), torch.zeros((1, 5, 2)), ((1, 1),) * 6), (64, 64))


class StubDSFD(nn.Module):
    """Stands in for DSFD: records its input, answers one face on level 3 (score 0.95) and one at 0.25."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.seen = None

    def forward(self, x):
        self.seen = x.clone()
        n = x.shape[0]
        face = torch.tensor([0.0, 0.0, 0.25, 0.95, 0.0, 0.0]).repeat(n, 1)
        return DSFDOutput(torch.zeros((n, 6, 4)), torch.stack((1 - face, face), -1), ((1, 1),) * 6)


def test_find_faces_feeds_dsfd_bgr_minus_the_mean_and_maps_faces_above_0_3_back_to_frame_pixels():
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 200, 100, 50  # RGB
    stub = StubDSFD()
    (boxes, scores), = ntech.find_faces(stub, [frame])
    assert stub.seen.shape == (1, 3, 512, 512)  # long side 512, already a multiple of 32
    assert stub.seen[0, :, 100, 100].tolist() == pytest.approx([50 - 104, 100 - 117, 200 - 123])  # B, G, R
    # Only the 0.95 face (level 3: step 32, size 128, on the 512 input) passes 0.3; back to 64-px frame units.
    c, w, h = 16 / 512, 128 / 512 / SQRT_15, 128 / 512 * SQRT_15
    assert scores.tolist() == pytest.approx([0.95])
    np.testing.assert_allclose(boxes, [[(c - w / 2) * 64, (c - h / 2) * 64, (c + w / 2) * 64, (c + h / 2) * 64]],
                               atol=1e-4)


def test_frames_are_the_authors_sampling():
    det = get_detector("ntech")
    info = type("Info", (), {"frames": 20, "fps": 29.97})()
    assert det.wanted_frames(info) == list(range(0, 20, 2))  # int(29.97) = 29, round(29 / 15) = 2
    info.fps = 7.9
    assert det.wanted_frames(info) == []  # round(7 / 15) = 0: upstream reads nothing


def test_frames_past_a_faceless_detector_frame_are_released_unless_a_kept_track_uses_them(monkeypatch):
    # detector positions: 0-6 a face (a kept track), 7 none, 8-9 a face (too short), 10 none, 11-12 a face
    faces = [True] * 7 + [False] + [True] * 2 + [False] + [True] * 2
    box = np.array([[2.0, 2.0, 6.0, 6.0]], np.float32)
    seen = []

    def find(dsfd, frames):
        out = []
        for _ in frames:
            hit = faces[len(seen)]
            seen.append(hit)
            out.append((box.copy(), np.array([0.95], np.float32)) if hit
                       else (np.zeros((0, 4), np.float32), np.zeros(0, np.float32)))
        return out

    monkeypatch.setattr(ntech, "find_faces", find)
    run = ntech.NTechRun(type("Models", (), {"dsfd": None})(), type("Info", (), {"frames": 39, "fps": 15.0})())
    frame = np.zeros((8, 8, 3), np.uint8)
    for n in range(31):  # up to detector position 10
        run.add(n, frame)
    run._detect()
    # the kept track covers sampled positions 0-18; 19-30 hold no kept track and 31-32 are settled already
    assert [p for p, f in enumerate(run.frames) if f is not None] == list(range(19))
    for n in range(31, 39):
        run.add(n, frame)
    assert [p for p, f in enumerate(run.frames) if f is not None] == list(range(19)) + list(range(33, 39))
    run._detect()
    assert [(int(e[0]), int(e[-1])) for e, _ in ntech.face_tracks(run.detections)] == [(0, 18)]



@pytest.mark.parametrize("rotation", [0, 90])
def test_a_rotated_video_says_upstream_saw_it_sideways(monkeypatch, rotation):
    monkeypatch.setattr(ntech, "find_faces", lambda dsfd, frames: [
        (np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) for _ in frames])
    info = VideoInfo(path="clip.mp4", frames=6, fps=15.0, width=8, height=8, duration_s=0.4, codec="h264",
                     container="mp4", rotation=rotation, size_bytes=1)
    run = ntech.NTechRun(type("Models", (), {"dsfd": None})(), info)
    for n in range(6):
        run.add(n, np.zeros((8, 8, 3), np.uint8))
    verdict = run.finish()
    assert verdict.status == "inconclusive"
    sideways = [n for n in verdict.notes if "rotation metadata (90 degrees)" in n and "sideways" in n]
    assert len(sideways) == (1 if rotation else 0)

# -- upstream files, install, strict load ----------------------------------------------------------------
def upstream_state(member: str, seed: int) -> dict:
    """A random-init member as NTechLab's copy_weights.py saved it: a bare dict, every value .half()."""
    torch.manual_seed(seed)
    state = ntech.build_member(member).state_dict()
    out = {k: v.half() for k, v in state.items()}
    if member == "dsfd":  # an old (2019) dict may lack the BatchNorm counters
        out = {k: v for k, v in out.items() if not k.endswith("num_batches_tracked")}
    else:
        out["_bn0.num_batches_tracked"] = torch.tensor(100000).half()  # overflows fp16 to inf
    return out


def pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def ntech_manifest(url: str) -> str:
    """The shipped manifest's ntech rows, pointed at the test server."""
    data = tomllib.loads(MANIFEST.read_text())
    text = []
    for row in data["weights"]:
        if row["detector"] == "ntech":
            text += ["[[weights]]"] + [f"{k} = {json.dumps(v)}" for k, v in row.items()] + [""]
    (up,) = [u for u in data["upstream"] if u["detector"] == "ntech"]
    converts = ", ".join(f'{{raw = {json.dumps(c["raw"])}, to = {json.dumps(c["to"])}}}' for c in up["converts"])
    text += ["[[upstream]]", 'detector = "ntech"', f'name = "{up["name"]}"', f'url = "{url}"', 'format = "tar.gz"',
             f'max_bytes = {up["max_bytes"]}', f"converts = [{converts}]", ""]
    return "\n".join(text)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """ntech.tar.gz (the four fp16 files under their inferred names) installed from 127.0.0.1."""
    root = tmp_path_factory.mktemp("ntech")
    archive = io.BytesIO()
    kept = {}
    with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=0) as tf:
        for seed, (member, (raw, _)) in enumerate(ntech.UPSTREAM.items()):
            state = upstream_state(member, seed)
            if member == "re":
                kept = {k: state[k] for k in ("_fc.weight", "_blocks.0._bn1.num_batches_tracked", "_bn0.num_batches_tracked")}
            data = pickled(state)
            del state
            info = tarfile.TarInfo(raw)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            del data
    server = Server()
    server.files["/weights/ntech.tar.gz"] = archive.getvalue()
    del archive
    weights = root / "weights"
    weights.mkdir()
    (weights / "manifest.toml").write_text(ntech_manifest(server.url("/weights/ntech.tar.gz")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_WEIGHTS_DIR", str(weights))
        mp.setenv("WORKBENCH_WEIGHTS_MANIFEST", str(weights / "manifest.toml"))
        try:
            assert get_detector("ntech").weights_status().installed is False
            assert main(["weights", "install", "ntech", "--quiet"]) == 0
        finally:
            server.close()
        yield weights, kept


def test_install_converts_the_four_fp16_files_and_the_detector_loads_them_strictly(installed):
    weights, kept = installed
    from safetensors.torch import load_file

    files = sorted(p.name for p in (weights / "ntech").glob("*.safetensors"))
    assert files == ["b7_large_crop.safetensors", "b7_re.safetensors", "b7_seq.safetensors", "dsfd_res152.safetensors"]
    re = load_file(str(weights / "ntech" / "b7_re.safetensors"))
    assert re["_fc.weight"].dtype == torch.float32 and torch.equal(re["_fc.weight"], kept["_fc.weight"].float())
    # BatchNorm counters are int64 again; the one fp16 turned into inf is 0
    assert re["_blocks.0._bn1.num_batches_tracked"].dtype == torch.int64
    assert re["_blocks.0._bn1.num_batches_tracked"].item() == int(kept["_blocks.0._bn1.num_batches_tracked"].item())
    assert math.isinf(kept["_bn0.num_batches_tracked"].item()) and re["_bn0.num_batches_tracked"].item() == 0
    dsfd = load_file(str(weights / "ntech" / "dsfd_res152.safetensors"), device="cpu")
    assert dsfd["layer1.1.num_batches_tracked"].dtype == torch.int64  # added where the old dict had none
    det = get_detector("ntech")
    assert det.weights_status().installed
    model = det.model("cpu")
    assert len(det.weights_sha256) == 64
    assert set(dict(model.named_children())) == {"dsfd", "sequence", "large_crop", "re"}
    assert torch.equal(model.re._fc.weight, kept["_fc.weight"].float())


def test_unsafe_wrong_and_unknown_checkpoints_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    unsafe = tmp_path / "WIDERFace_DSFD_RES152.fp16.pth"
    unsafe.write_bytes(pickle.dumps({"layer1.0.weight": Payload()}, protocol=2))
    with pytest.raises(WeightsError, match="safe loader"):
        ntech.NTech.convert_checkpoint(unsafe)
    folder = tmp_path / "efficientnet-b7_ns_aa-original-mstd0.5_re_100k_v4_cad79a"
    folder.mkdir()
    wrapped = folder / "snapshot_100000.fp16.pth"
    torch.save({"module._fc.weight": torch.zeros(1, 2560).half()}, wrapped)  # a prefix upstream never had
    with pytest.raises(WeightsError, match=r"not the NTechLab EfficientNet-B7 \(re\) checkpoint; missing"):
        ntech.NTech.convert_checkpoint(wrapped)
    stray = tmp_path / "snapshot_100000.fp16.pth"  # the three B7s share this name: the folder says which
    torch.save({}, stray)
    with pytest.raises(WeightsError, match="not an NTechLab weights file"):
        ntech.NTech.convert_checkpoint(stray)


# -- the authors' method through the pipeline ---------------------------------------------------------------
@pytest.fixture(scope="module")
def face_clip(tmp_path_factory):
    """1.4 s at 30 fps (42 frames, 21 sampled), 320 x 240, one still face; and its box on frame 0."""
    path = tmp_path_factory.mktemp("ntech_clip") / "face.mp4"
    truth = demo.make_clip(path, [demo.SceneFace("grace_hopper", x=0.4, y=0.45, height=0.45)], seconds=1.4, fps=30,
                           width=320, height=240, seed=3, gop=30)
    return path, np.array([truth.face_boxes["grace_hopper"][0]], np.float32)


def fake_faces(box, calls):
    """DSFD stand-in: random weights find nothing, so the test's one face is 'found' on every detector frame."""
    def find(dsfd, frames):
        calls.append(len(frames))
        return [(box.copy(), np.array([0.95], np.float32)) for _ in frames]
    return find


def rule_by_hand(values) -> float:
    num = den = 0.0
    for p in values:
        d = p - 0.5
        moved = 0.5 if d == 0 else min(0.99, max(0.01, 0.5 + math.copysign(abs(d) ** 0.65, d)))
        num += moved * (abs(d) + 1e-4)
        den += abs(d) + 1e-4
    return num / den


def test_pipeline_runs_the_authors_method_and_headlines_their_rule(installed, face_clip, monkeypatch):
    path, box = face_clip
    calls = []
    monkeypatch.setattr(ntech, "find_faces", fake_faces(box, calls))
    result = analyze(path, ["ntech"], Sampling(sample_fps=2))
    outcome = result.detectors["ntech"]
    sampled = list(range(0, 42, 2))  # int(30) / 15 = 2
    assert outcome.status == "ok" and outcome.rule == "authors:ntech"
    assert outcome.frames_used == sampled and sum(calls) == 7  # DSFD on sampled positions 0, 3, ..., 18
    up = outcome.upstream
    assert [m["name"] for m in up["members"]] == ["sequence", "large_crop", "re"]
    assert all(m["status"] == "ok" for m in up["members"])
    # One track from the first to the last detection (sampled positions 0-18; 19 and 20 follow the last detector
    # frame): one 7-frame window (mirrored), 10 frame-model faces (every 2nd track frame) alternating in pairs
    # between the models, the even ones mirrored.
    track = sampled[:19]
    (window,) = up["windows"]
    assert window["frames"] == sampled[:7] and window["flipped"] is True and len(window["values"]) == 7
    faces = up["face_values"]
    assert sorted(r["frame"] for r in faces) == track[::2]
    by_frame = {r["frame"]: r for r in faces}
    for i, frame in enumerate(track[::2]):
        assert by_frame[frame]["model"] == (1 if i % 4 < 2 else 2) and by_frame[frame]["flipped"] == (i % 2 == 0)
    pooled = window["values"] + [r["values"][0] for r in faces]
    assert outcome.score == pytest.approx(rule_by_hand(pooled), abs=1e-12)
    # the frame models' values are the timeline's, filed under the face track they overlap
    assert sorted((f, v) for f, _, v in outcome.frame_scores) == sorted((r["frame"], r["values"][0]) for r in faces)
    assert len(up["faces"]) == 1 and up["faces"][0]["frames"] == track and up["faces"][0]["track"] is not None and up["faces_without_track"] == 0
    assert any("7-frame window" in n for n in up["notes"])


def test_members_that_raise_or_give_nan_are_named_failed_and_the_rule_pools_the_rest(installed, face_clip, monkeypatch):
    path, box = face_clip
    monkeypatch.setattr(ntech, "find_faces", fake_faces(box, []))
    det = get_detector("ntech")
    model = det.model("cpu")

    def broken(x):
        raise RuntimeError("simulated sequence failure")

    monkeypatch.setattr(model.sequence, "forward", broken)
    monkeypatch.setattr(model.large_crop, "forward", lambda x: torch.full((x.shape[0], 1), float("nan")))
    info = probe(str(path))
    run = det.start(info)
    for n, rgb in iter_frames(str(path), det.wanted_frames(info)):
        run.add(n, rgb)
    verdict = run.finish()
    members = {m.name: m for m in verdict.members}
    assert members["sequence"].status == "failed" and "simulated sequence failure" in members["sequence"].reason
    assert members["large_crop"].status == "failed" and "non-finite" in members["large_crop"].reason
    assert members["re"].status == "ok"
    # only model 2's four faces (entries 2, 3, 6, 7 of the ten) are left, and the rule pools exactly those
    assert verdict.windows == [] and [r["model"] for r in verdict.face_values] == [2] * 4
    assert verdict.status == "ok"
    assert verdict.score == pytest.approx(rule_by_hand([r["values"][0] for r in verdict.face_values]), abs=1e-12)
    assert sorted(v for _, _, v in verdict.frame_scores) == sorted(r["values"][0] for r in verdict.face_values)
    assert any("failed" in n and "sequence" in n for n in verdict.notes)


def test_no_face_track_is_inconclusive_never_a_half(installed, face_clip, monkeypatch):
    path, box = face_clip
    # six detections in a row are one short of a track
    monkeypatch.setattr(ntech, "find_faces", lambda dsfd, frames: [
        (box.copy(), np.array([0.95], np.float32)) if i < 6 else (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
        for i in range(len(frames))])
    outcome = analyze(path, ["ntech"], Sampling(sample_fps=2)).detectors["ntech"]
    assert outcome.status == "inconclusive" and outcome.score is None and "no face track" in outcome.reason
