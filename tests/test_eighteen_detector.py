"""Eighteen Years Old as a registered video detector: installed from upstream-layout checkpoints served on 127.0.0.1,
loaded strictly, run through the pipeline, members failing or missing by name, bad checkpoints refused.

Random weights make RetinaFace's detections meaningless, so the runs here replace the detection step with the
clip's known face boxes (the real detection path has its own tests in tests/test_eighteen_faces.py). SlowFast
takes any clip length of one frame or more (its slow path reads every 4th frame and the laterals stride 4 in
time, so both give ceil(T / 4) steps); the image members need 5 frames for one group, so the clips here have 5 or 10.
"""
from __future__ import annotations

import io
import json
import math
import mmap
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detectors import eighteen
from detectors.eighteen_members import MEMBERS
from detectors.registry import get_detector
from detectors.video import MemberStatus
from detectors.weights import WeightsError
from detectors.weights_manager import WeightsManager, read_upstreams
from helpers import Server
from workbench import demo
from workbench.cli import main
from workbench.pipeline import Sampling, analyze
from workbench.video import VideoInfo

FPS = 10
FRAMES = 10
CLIP_FRAMES = 5  # the pipeline clip: one group of 5 for the image members, the least that scores them
# The authors' rule, written out here (not read from the detector): weights within each group, group shares.
SLOWFAST_W = {"SF1": 10, "SF2": 8, "SF3": 4, "SF4": 8}
IMAGE_W = {"XCP": 10, "B3": 6, "RES34": 4, "B1": 10, "B1long": 8, "B1short": 8, "B0": 7}


def rule_by_hand(values: dict[str, float]) -> float | None:
    """0.4 SlowFast + 0.6 image; each group: over 70 % above 0.8 -> weighted mean of those, else below 0.2, else all."""
    groups = []
    for weights in (SLOWFAST_W, IMAGE_W):
        names = [n for n in weights if n in values]
        if not names:
            groups.append(None)
            continue
        chosen = names
        for keep in (lambda v: v > 0.8, lambda v: v < 0.2):
            kept = [n for n in names if keep(values[n])]
            if len(kept) / len(names) > 0.7:
                chosen = kept
                break
        groups.append(sum(weights[n] * values[n] for n in chosen) / sum(weights[n] for n in chosen))
    sf, img = groups
    if sf is None and img is None:
        return None
    return img if sf is None else sf if img is None else 0.4 * sf + 0.6 * img


# -- upstream-format checkpoints ------------------------------------------------------------------
def upstream_checkpoint(m, module: nn.Module) -> dict:
    """The authors' training-script checkpoint: DDP `module.` keys (`module.model.` for Xception) and optimizer."""
    prefix = "module.model." if m.arch == "xception" else "module."
    return {"step": 58000, "arch": m.arch, "best_loss": 0.1234,
            "state_dict": {prefix + k: v.clone() for k, v in module.state_dict().items()},
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                          "param_groups": [{"lr": 0.01, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                                            "nesterov": False, "params": [0, 1, 2]}]}}


def write_archive(path, model: eighteen.EighteenEnsemble, skip=()) -> None:
    """eighteen.tar as FakeFinder's release lays it out (eighteen/<file>), uncompressed to keep the test quick
    (the installer opens any tar with the same checks)."""
    with tarfile.open(path, "w") as tf:
        def add(name: str, obj) -> None:
            buf = io.BytesIO()
            torch.save(obj, buf)
            info = tarfile.TarInfo(f"eighteen/{name}")
            info.size = buf.tell()
            buf.seek(0)
            tf.addfile(info, buf)
        add("mobilenet0.25_Final.pth", {k: v.clone() for k, v in model.retinaface.state_dict().items()})
        for m in MEMBERS:
            if m.name not in skip:
                add(f"{m.file}.pth.tar", upstream_checkpoint(m, model.members[m.name]))


def test_manifest_row_lists_every_member_and_only_b0_as_optional():
    manifest = Path(__file__).resolve().parents[1] / "weights" / "manifest.toml"
    rows = [u for u in read_upstreams(manifest) if u.detector == "eighteen"]
    assert len(rows) == 1 and rows[0].url.endswith("/weights/eighteen.tar.gz")
    assert {to for _, to in rows[0].converts} == {w.file for w in get_detector("eighteen").weights}
    assert rows[0].optional == {"eighteen/b0_rgb_58000.pth.tar"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Install eighteen.tar from a 127.0.0.1 server into a fresh weights folder; yields (weights dir, seeded model)."""
    root = tmp_path_factory.mktemp("eighteen")
    torch.manual_seed(18)
    model = eighteen.EighteenEnsemble().eval()
    write_archive(root / "eighteen.tar", model)
    weights = root / "weights"
    weights.mkdir()
    server = Server()
    fh = open(root / "eighteen.tar", "rb")
    mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    server.files["/weights/eighteen.tar"] = view  # served without a copy in memory
    converts = [{"raw": "eighteen/mobilenet0.25_Final.pth", "to": eighteen.RETINAFACE_FILE}] + [
        {"raw": f"eighteen/{m.file}.pth.tar", "to": eighteen.member_file(m), "optional": m.name == "B0"} for m in MEMBERS]
    text = "".join(f'[[weights]]\ndetector = "eighteen"\nfile = "{c["to"]}"\nformat = "safetensors"\n\n' for c in converts)
    text += (f'[[upstream]]\ndetector = "eighteen"\nname = "fakefinder"\nurl = "{server.url("/weights/eighteen.tar")}"\n'
             f'format = "tar"\nmax_bytes = 4294967296\nconverts = [\n'
             + "".join(f'  {{raw = {json.dumps(c["raw"])}, to = {json.dumps(c["to"])}'
                       + (", optional = true" if c.get("optional") else "") + "},\n" for c in converts) + "]\n")
    (weights / "manifest.toml").write_text(text)
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_WEIGHTS_DIR", str(weights))
    mp.setenv("WORKBENCH_WEIGHTS_MANIFEST", str(weights / "manifest.toml"))
    try:
        assert get_detector("eighteen").weights_status().installed is False
        assert main(["weights", "install", "eighteen", "--quiet"]) == 0
        yield weights, model
    finally:
        mp.undo()
        server.close()
        server.files.clear()
        view.release()
        mapped.close()
        fh.close()


def test_installs_from_the_authors_layout_and_loads_strictly(installed):
    weights, model = installed
    converted = sorted((weights / "eighteen").glob("*.safetensors"))
    assert len(converted) == 12 and all(not p.stat().st_mode & 0o222 for p in converted)
    det = get_detector("eighteen")
    assert det.weights_status().installed and det.unavailable_members() == {}
    loaded = det.model("cpu")
    assert len(det.weights_sha256) == 64
    # Strictly loaded: every tensor is the seeded model's, prefixes stripped (module.model. for Xception).
    for name in ("SF3", "XCP", "B0"):
        mine, theirs = loaded.members[name].state_dict(), model.members[name].state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(loaded.retinaface.state_dict()["body.stage1.0.0.weight"],
                       model.retinaface.state_dict()["body.stage1.0.0.weight"])


def _clip(path) -> tuple[str, list]:
    truth = demo.make_clip(path, [demo.SceneFace("grace_hopper", x=0.5, y=0.5, height=0.45)],
                           seconds=CLIP_FRAMES / FPS, fps=FPS, width=320, height=240, seed=3, gop=CLIP_FRAMES)
    return str(path), truth.face_boxes["grace_hopper"]


def fake_detection(boxes: list, score: float = 0.99):
    """detect_frames stand-in: each frame's known face box with a fixed score, frames counted as they come."""
    seen = []

    def detect(model, frames_bgr, settings=None):
        out = []
        for _ in frames_bgr:
            box = boxes[len(seen)]
            seen.append(box)
            out.append(np.array([[*box, score]], dtype=np.float32) if box is not None else np.zeros((0, 5), np.float32))
        return out
    return detect


def test_pipeline_headline_is_the_authors_rule_over_the_members_it_reports(installed, tmp_path, monkeypatch):
    weights, _ = installed
    path, boxes = _clip(tmp_path / "face.mp4")
    monkeypatch.setattr(eighteen, "detect_frames", fake_detection(boxes))
    det = get_detector("eighteen")
    xcp = det.model("cpu").members["XCP"]

    def broken(x):
        raise RuntimeError("simulated Xception failure")
    monkeypatch.setattr(xcp, "forward", broken)
    result = analyze(path, ["eighteen"], Sampling(sample_fps=2))
    out = result.detectors["eighteen"]
    assert out.status == "ok", out.reason
    assert out.rule == "authors:eighteen"
    # The authors' frame policy: every ceil(frames / 160)-th frame (here every one of the 5).
    assert out.frames_used == list(range(0, CLIP_FRAMES, math.ceil(CLIP_FRAMES / 160)))
    members = {m["name"]: m for m in out.upstream["members"]}
    assert list(members) == [m.name for m in MEMBERS]
    assert members["XCP"]["status"] == "failed" and "simulated Xception failure" in members["XCP"]["reason"]
    assert members["XCP"]["value"] is None
    ok = {n: m["value"] for n, m in members.items() if m["status"] == "ok"}
    assert set(ok) == set(members) - {"XCP"}
    assert out.score == pytest.approx(rule_by_hand(ok), abs=1e-12)
    assert out.upstream["score"] == out.score
    assert any("B0" in note and "FakeFinder" in note for note in out.upstream["notes"])
    [face] = out.upstream["faces"]
    assert face["frames"] == list(range(CLIP_FRAMES)) and face["members"]["XCP"] is None
    # One face: its own score is the rule on its member values (B3 and RES34 already scaled) = the video's.
    assert face["score"] == pytest.approx(out.score)


def test_without_b0_installed_it_is_named_unavailable(installed, tmp_path, monkeypatch):
    weights, _ = installed
    # A weights folder holding every file but B0's (links to the installed ones), as after an install from an
    # archive that lacks it.
    partial = tmp_path / "weights"
    (partial / "eighteen").mkdir(parents=True)
    for p in (weights / "eighteen").glob("*.safetensors"):
        if not p.name.startswith("b0_"):
            (partial / "eighteen" / p.name).symlink_to(p)
    for name in ("manifest.toml", "installed.toml"):
        (partial / name).write_text((weights / name).read_text())
    monkeypatch.setenv("WORKBENCH_WEIGHTS_DIR", str(partial))
    monkeypatch.setenv("WORKBENCH_WEIGHTS_MANIFEST", str(partial / "manifest.toml"))
    det = get_detector("eighteen")
    status = det.weights_status()
    assert status.installed and "B0 unavailable" in status.detail
    assert set(det.unavailable_members()) == {"B0"}
    det.model("cpu")
    assert set(det.unavailable_members()) == {"B0"} and "not installed" in det.unavailable_members()["B0"]
    # A required member missing is "not installed", not a partial detector.
    os.unlink(partial / "eighteen" / "xcep_bgr_58000.safetensors")
    assert get_detector("eighteen").weights_status().installed is False


def test_a_tampered_converted_file_is_refused(installed, tmp_path, monkeypatch):
    weights, _ = installed
    partial = tmp_path / "weights"
    (partial / "eighteen").mkdir(parents=True)
    for p in (weights / "eighteen").glob("*.safetensors"):
        (partial / "eighteen" / p.name).symlink_to(p)
    for name in ("manifest.toml", "installed.toml"):
        (partial / name).write_text((weights / name).read_text())
    victim = partial / "eighteen" / "mobilenet0.25_Final.safetensors"
    blob = bytearray(victim.read_bytes())
    blob[-10] ^= 0xFF
    victim.unlink()
    victim.write_bytes(bytes(blob))
    monkeypatch.setenv("WORKBENCH_WEIGHTS_DIR", str(partial))
    monkeypatch.setenv("WORKBENCH_WEIGHTS_MANIFEST", str(partial / "manifest.toml"))
    with pytest.raises(WeightsError, match="does not match"):
        get_detector("eighteen").model("cpu")


# -- the run on stand-in members (quick): inputs, TTA, groups, failures, B0 missing ----------------------
class Asymmetric(nn.Module):
    """A stand-in member whose fake logit is a fixed mix of channel means and the left-right difference
    (so channel order, normalisation and flipping all change it)."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(4, generator=g), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        means = x.mean(dim=dims)  # (N, 3)
        half = x.shape[-1] // 2
        lr = x[..., :half].mean(dim=tuple(range(1, x.ndim))) - x[..., half:].mean(dim=tuple(range(1, x.ndim)))
        fake = means @ self.w[:3] + 3 * self.w[3] * lr
        return torch.stack([torch.zeros_like(fake), fake], dim=1)


def stand_in_model() -> SimpleNamespace:
    return SimpleNamespace(retinaface=None, members={m.name: Asymmetric(i) for i, m in enumerate(MEMBERS)})


def still_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    frame[:, :80] //= 2  # darker left half: flipping matters
    return [frame.copy() for _ in range(n)]


BOX = (50, 30, 100, 90)  # x1, y1, x2, y2 on a 160x120 frame


def expected_crop(frame_rgb: np.ndarray, size: int) -> np.ndarray:
    """The authors' square for BOX on a 160x120 frame, by hand: side int(1.3 x 60) = 78, centre (75, 60) -> (36, 21)."""
    side, x, y = 78, 75 - 39, 60 - 39
    return cv2.resize(np.ascontiguousarray(frame_rgb[..., ::-1])[y:y + side, x:x + side], (size, size),
                      interpolation=cv2.INTER_LINEAR)  # still BGR


def run_stand_in(monkeypatch, frames, unavailable=None, model=None):
    info = VideoInfo("x.mp4", len(frames), FPS, 160, 120, len(frames) / FPS, "h264", "mp4", 0, 0)
    monkeypatch.setattr(eighteen, "detect_frames", fake_detection([BOX] * len(frames)))
    run = eighteen.EighteenRun(model or stand_in_model(), unavailable or {}, info, None)
    for n, f in enumerate(frames):
        run.add(n, f)
    return run.finish()


def softmax_fake(logits: torch.Tensor) -> float:
    return float(torch.softmax(logits, dim=-1)[..., 1])


def test_members_see_the_authors_inputs(monkeypatch):
    frames = still_frames(FRAMES)
    model = stand_in_model()
    verdict = run_stand_in(monkeypatch, frames, model=model)
    values = {m.name: m.value for m in verdict.members}
    # XCP: 299, BGR, (x/255 - 0.5)/0.5, flip TTA with logits averaged; identical frames -> every group the same.
    crop = torch.tensor(expected_crop(frames[0], 299), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    x = (crop - 0.5) / 0.5
    net = model.members["XCP"]
    assert values["XCP"] == pytest.approx(softmax_fake((net(x) + net(torch.flip(x, dims=[3]))) / 2), abs=1e-5)
    # B1long: 299, RGB, ImageNet, no flip.
    rgb = crop[:, [2, 1, 0]]
    x = (rgb - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert values["B1long"] == pytest.approx(softmax_fake(model.members["B1long"](x)), abs=1e-5)
    # SF1: one clip of all 10 frames at 256, RGB, the SlowFast mean/std (x 255 units).
    c256 = torch.tensor(expected_crop(frames[0], 256), dtype=torch.float32)[..., [2, 1, 0]]
    mean = torch.tensor([110.63666788, 103.16065604, 96.29023126])
    std = torch.tensor([38.7568578, 37.88248729, 40.02898126])
    clip = ((c256 - mean) / std).permute(2, 0, 1)[:, None].expand(3, FRAMES, 256, 256)[None]
    assert values["SF1"] == pytest.approx(softmax_fake(model.members["SF1"](clip)), abs=1e-5)
    assert verdict.score == pytest.approx(rule_by_hand(values), abs=1e-12)


def test_a_member_that_raises_is_named_and_the_rule_uses_the_rest(monkeypatch):
    model = stand_in_model()

    def boom(x):
        raise RuntimeError("out of memory, say")
    monkeypatch.setattr(model.members["SF2"], "forward", boom)
    verdict = run_stand_in(monkeypatch, still_frames(FRAMES), model=model)
    by_name = {m.name: m for m in verdict.members}
    assert by_name["SF2"].status == MemberStatus.FAILED and "out of memory, say" in by_name["SF2"].reason
    values = {m.name: m.value for m in verdict.members if m.status == MemberStatus.OK}
    assert "SF2" not in values and len(values) == 10
    assert verdict.status == "ok" and verdict.score == pytest.approx(rule_by_hand(values), abs=1e-12)


def test_b0_unavailable_is_named_and_the_image_group_renormalised_without_it(monkeypatch):
    verdict = run_stand_in(monkeypatch, still_frames(FRAMES), unavailable={"B0": "not installed (test)"})
    by_name = {m.name: m for m in verdict.members}
    assert by_name["B0"].status == MemberStatus.UNAVAILABLE and by_name["B0"].reason == "not installed (test)"
    values = {m.name: m.value for m in verdict.members if m.status == MemberStatus.OK}
    assert "B0" not in values and verdict.score == pytest.approx(rule_by_hand(values), abs=1e-12)
    assert any("B0" in n and "renormalised" in n for n in verdict.notes)


def test_too_few_frames_for_a_group_fails_the_image_members_only(monkeypatch):
    # 4 frames: no group of 5 for the image members (the authors' code fails them too); SlowFast still runs.
    verdict = run_stand_in(monkeypatch, still_frames(4))
    by_name = {m.name: m for m in verdict.members}
    assert all(by_name[n].status == MemberStatus.FAILED and "no frame group" in by_name[n].reason for n in IMAGE_W)
    sf = {n: by_name[n].value for n in SLOWFAST_W}
    assert verdict.status == "ok" and verdict.score == pytest.approx(rule_by_hand(sf), abs=1e-12)


def test_no_modal_face_is_inconclusive_not_a_score(monkeypatch):
    frames = still_frames(FRAMES)
    info = VideoInfo("x.mp4", FRAMES, FPS, 160, 120, 1.0, "h264", "mp4", 0, 0)
    # faces on 4 of 10 frames: the most common count is 0
    monkeypatch.setattr(eighteen, "detect_frames", fake_detection([BOX] * 4 + [None] * 6))
    run = eighteen.EighteenRun(stand_in_model(), {}, info, None)
    for n, f in enumerate(frames):
        run.add(n, f)
    verdict = run.finish()
    assert verdict.status == "inconclusive" and verdict.score is None and "no face" in verdict.reason
    assert verdict.frames_analysed == list(range(FRAMES))


def test_frames_without_a_face_are_not_kept(monkeypatch):
    info = VideoInfo("x.mp4", FRAMES, FPS, 160, 120, 1.0, "h264", "mp4", 0, 0)
    monkeypatch.setattr(eighteen, "detect_frames", fake_detection([BOX, None] * 5))
    run = eighteen.EighteenRun(stand_in_model(), {}, info, None)
    for n, f in enumerate(still_frames(FRAMES)):
        run.add(n, f)
    run._detect()
    assert [k is not None for k in run.kept] == [True, False] * 5


def test_wanted_frames_are_the_authors_stride():
    det = get_detector("eighteen")
    info = VideoInfo("x.mp4", 300, 30.0, 1920, 1080, 10.0, "h264", "mp4", 0, 0)
    assert det.wanted_frames(info) == list(range(0, 300, 2))  # ceil(300 / 160) = 2 -> 150 frames
    assert det.wanted_frames(VideoInfo("x.mp4", 161, 25.0, 64, 64, 6.4, "h264", "mp4", 0, 0)) == list(range(0, 161, 2))


# -- conversion refuses what is not the authors' file -----------------------------------------------------
def _b0_module() -> nn.Module:
    torch.manual_seed(0)
    return eighteen.build_member(next(m for m in MEMBERS if m.name == "B0"))


def test_convert_strips_the_prefix_and_drops_the_training_state(tmp_path):
    b0 = next(m for m in MEMBERS if m.name == "B0")
    module = _b0_module()
    path = tmp_path / "b0_rgb_58000.pth.tar"
    torch.save(upstream_checkpoint(b0, module), path)
    state = eighteen.Eighteen.convert_checkpoint(path)
    assert state.keys() == module.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("case, message", [
    ("no_prefix", "prefix"),
    ("wrong_shape", "wrong shape"),
    ("missing_key", "missing"),
    ("unsafe", "safe loader"),
    ("bare", "state_dict"),
    ("unknown_name", "not an Eighteen weights file"),
])
def test_a_bad_or_unsafe_checkpoint_is_refused(tmp_path, case, message):
    b0 = next(m for m in MEMBERS if m.name == "B0")
    ckpt = upstream_checkpoint(b0, _b0_module())
    name = "b0_rgb_58000.pth.tar"
    if case == "no_prefix":
        ckpt["state_dict"] = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    elif case == "wrong_shape":
        ckpt["state_dict"]["module._fc.weight"] = torch.zeros(1, 1280)
    elif case == "missing_key":
        del ckpt["state_dict"]["module._bn1.running_var"]
    elif case == "unsafe":
        ckpt["args"] = SimpleNamespace(lr=0.1)  # an arbitrary object: only a full unpickle could rebuild it
    elif case == "bare":
        ckpt = ckpt["state_dict"]
    elif case == "unknown_name":
        name = "b9_rgb.pth.tar"
    path = tmp_path / name
    torch.save(ckpt, path)
    with pytest.raises(WeightsError, match=message):
        eighteen.Eighteen.convert_checkpoint(path)


def test_retinaface_converts_from_its_bare_dict(tmp_path):
    from detectors.retinaface import RetinaFace
    torch.manual_seed(1)
    net = RetinaFace("mobilenet0.25")
    torch.save(net.state_dict(), tmp_path / "mobilenet0.25_Final.pth")
    state = eighteen.Eighteen.convert_checkpoint(tmp_path / "mobilenet0.25_Final.pth")
    assert len(state) == 300 and all(torch.equal(state[k], v) for k, v in net.state_dict().items())


# -- the weights manager's optional converts -------------------------------------------------------------
def test_an_optional_member_missing_from_the_archive_is_skipped_and_said(tmp_path):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tf:
        buf = io.BytesIO()
        torch.save({"w": torch.ones(2)}, buf)
        info = tarfile.TarInfo("demo/present.pth")
        info.size = buf.tell()
        buf.seek(0)
        tf.addfile(info, buf)
    server = Server()
    server.files["/demo.tar.gz"] = archive.getvalue()
    try:
        def manifest(optional: str) -> str:
            return ('[[upstream]]\ndetector = "optional-demo"\nname = "up"\n'
                    f'url = "{server.url("/demo.tar.gz")}"\nformat = "tar.gz"\nmax_bytes = 1000000\nconverts = [\n'
                    '  {raw = "demo/present.pth", to = "demo/present.safetensors"},\n'
                    f'  {{raw = "demo/absent.pth", to = "demo/absent.safetensors"{optional}}},\n]\n')
        said = io.StringIO()
        (tmp_path / "m.toml").write_text(manifest(", optional = true"))
        manager = WeightsManager(tmp_path / "w", tmp_path / "m.toml", progress=False, out=said)
        assert manager.install("optional-demo") == ["demo/present.safetensors"]
        assert "optional member demo/absent.pth is not in demo.tar.gz; skipped" in said.getvalue()
        assert not (tmp_path / "w" / "demo" / "absent.safetensors").exists()
        # Without the flag the same archive is refused, naming what it has.
        (tmp_path / "m.toml").write_text(manifest(""))
        with pytest.raises(WeightsError, match="demo/absent.pth not found"):
            WeightsManager(tmp_path / "w2", tmp_path / "m.toml", progress=False, out=io.StringIO()).install("optional-demo")
        (tmp_path / "m.toml").write_text(manifest(', optional = "yes"'))
        with pytest.raises(WeightsError, match="must be true or false"):
            WeightsManager(tmp_path / "w3", tmp_path / "m.toml", progress=False, out=io.StringIO()).install("optional-demo")
    finally:
        server.close()


# -- comparison with FakeFinder: its never-loaded B0, as a seeded random init ----------------------------
def test_fakefinder_b0_mode_runs_the_given_random_b0_and_says_so(monkeypatch):
    info = VideoInfo("x.mp4", FRAMES, FPS, 160, 120, 1.0, "h264", "mp4", 0, 0)
    monkeypatch.setattr(eighteen, "detect_frames", fake_detection([BOX] * FRAMES))
    model = stand_in_model()
    swapped = Asymmetric(99)
    # Even with B0's file missing: FakeFinder never read it.
    run = eighteen.EighteenRun(model, {"B0": "not installed (test)"}, info, None, fakefinder_b0=(7, swapped))
    for n, f in enumerate(still_frames(FRAMES)):
        run.add(n, f)
    verdict = run.finish()
    by_name = {m.name: m for m in verdict.members}
    crop = torch.tensor(expected_crop(still_frames(1)[0], 299), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    x = (crop[:, [2, 1, 0]] - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    by_hand = softmax_fake((swapped(x) + swapped(torch.flip(x, dims=[3]))) / 2)  # B0 keeps its flip TTA
    assert by_name["B0"].status == MemberStatus.OK and by_name["B0"].value == pytest.approx(by_hand, abs=1e-5)
    assert by_name["B0"].value != pytest.approx(softmax_fake((model.members["B0"](x) + model.members["B0"](
        torch.flip(x, dims=[3]))) / 2), abs=1e-6)
    assert any("seed 7" in n and "not the authors' method" in n for n in verdict.notes)
    values = {m.name: m.value for m in verdict.members}
    assert verdict.score == pytest.approx(rule_by_hand(values), abs=1e-12)


def test_fakefinder_b0_is_seeded_default_init_and_leaves_the_shared_model_alone():
    det = eighteen.Eighteen()
    shared = stand_in_model()  # the loaded model, with a real B0 (the rest does not matter here)
    torch.manual_seed(0)
    shared.members["B0"] = eighteen.build_member(next(m for m in MEMBERS if m.name == "B0")).eval()
    shared.unavailable = {}
    det._model = shared
    loaded_b0 = {k: v.clone() for k, v in det.model().members["B0"].state_dict().items()}
    assert "fakefinder_b0" not in det.describe()
    det.use_fakefinder_b0(7)
    assert det.describe()["fakefinder_b0"] == {"init": "random", "seed": 7}
    rng_before = torch.random.get_rng_state()
    first, second = det.fakefinder_b0(), det.fakefinder_b0()
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    torch.manual_seed(7)
    by_hand = eighteen.build_member(next(m for m in MEMBERS if m.name == "B0")).state_dict()
    for k, v in by_hand.items():
        assert torch.equal(first.state_dict()[k], v) and torch.equal(second.state_dict()[k], v)
    assert not torch.equal(first.state_dict()["_fc.weight"], loaded_b0["_fc.weight"])
    run = det.start(VideoInfo("x.mp4", FRAMES, FPS, 160, 120, 1.0, "h264", "mp4", 0, 0))
    assert run.b0_seed == 7 and run.networks["B0"] is not det.model().members["B0"]
    assert all(torch.equal(det.model().members["B0"].state_dict()[k], v) for k, v in loaded_b0.items())
    assert eighteen.Eighteen().fakefinder_b0_seed is None  # per instance, never the class


def test_the_run_feeds_the_real_retinaface_bgr_frames_in_batches_of_8(monkeypatch):
    from detectors.eighteen_faces import confident_boxes, detect_frames
    from detectors.retinaface import RetinaFace

    torch.manual_seed(2)
    retina = RetinaFace("mobilenet0.25").eval()
    model = stand_in_model()
    model.retinaface = retina
    calls, found = [], []

    def spy(net, frames_bgr, settings=None):
        calls.append([f.copy() for f in frames_bgr])
        found.extend(detect_frames(net, frames_bgr))
        return found[-len(frames_bgr):]
    monkeypatch.setattr(eighteen, "detect_frames", spy)
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(9)]
    run = eighteen.EighteenRun(model, {}, VideoInfo("x.mp4", 9, FPS, 160, 120, 0.9, "h264", "mp4", 0, 0), None)
    for n, f in enumerate(frames):
        run.add(n, f)
    run._detect()
    assert [len(c) for c in calls] == [8, 1]
    sent = [f for c in calls for f in c]
    assert all(np.array_equal(s, f[..., ::-1]) for s, f in zip(sent, frames))  # BGR, as the authors read frames
    assert all(d.ndim == 2 and d.shape[1] == 5 for d in found)
    assert len(run.faces) == 9 and all(np.array_equal(a, confident_boxes(d)) for a, d in zip(run.faces, found))
    assert [k is not None for k in run.kept] == [len(f) > 0 for f in run.faces]


def test_a_frame_size_the_authors_decode_breaks_on_is_an_error_with_that_reason():
    from detectors.eighteen_faces import PriorMismatch

    run = eighteen.EighteenRun(stand_in_model(), {}, VideoInfo("x.mp4", 8, FPS, 500, 333, 0.8, "h264", "mp4", 0, 0), None)
    frame = np.zeros((333, 500, 3), np.uint8)
    for n in range(7):
        run.add(n, frame)
    with pytest.raises(PriorMismatch, match="upstream's decode fails"):
        run.add(7, frame)  # the eighth frame completes the first batch of 8
