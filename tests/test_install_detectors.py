"""FakeFinder detectors end to end: upstream-layout checkpoints served on 127.0.0.1, installed through
the weights manager, loaded strictly by the registered detector, and run (random weights, no network)."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch

from detectors import boken, selimsef
from detectors.weights import WeightsError
from detectors.registry import get_detector
from helpers import default_rule_by_hand, Server, wm_upstream_files
from workbench.cli import main
from workbench.pipeline import Sampling, analyze

BOKEN_RAW = [u["raw"] for u in boken.UPSTREAM]
SELIMSEF_ONE = "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36"


def pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def boken_archive() -> bytes:
    """boken.tar.gz as FakeFinder ships it: boken/<name>.pth, bare efficientnet_pytorch state dicts."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        for i, raw in enumerate(BOKEN_RAW):
            variant = next(v for v in ("b0", "b1", "b2") if f"-{v}_" in raw)
            torch.manual_seed(i)
            member = boken.build_member(f"efficientnet-{variant}")
            state = {boken.ours_to_upstream(k, member): v for k, v in member.state_dict().items()}
            data = pickled(state)
            info = tarfile.TarInfo(raw)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def manifest(server: Server) -> str:
    rows = []
    for raw in BOKEN_RAW:
        to = raw.replace(".pth", ".safetensors")
        rows.append({"table": "weights", "detector": "boken", "file": to, "format": "safetensors"})
    rows.append({"table": "weights", "detector": "selimsef", "file": f"selimsef/{SELIMSEF_ONE}.safetensors",
                 "format": "safetensors"})
    text = []
    for row in rows:
        text.append("[[weights]]")
        text += [f"{k} = {json.dumps(v)}" for k, v in row.items() if k != "table"]
        text.append("")
    converts = ", ".join(f'{{raw = "{raw}", to = "{raw.replace(".pth", ".safetensors")}"}}' for raw in BOKEN_RAW)
    text += ["[[upstream]]", 'detector = "boken"', 'name = "fakefinder"', f'url = "{server.url("/weights/boken.tar.gz")}"',
             'format = "tar.gz"', "max_bytes = 1073741824", f"converts = [{converts}]", ""]
    text += ["[[upstream]]", 'detector = "selimsef"', 'name = "selimsef-release"',
             f'url = "{server.url("/0.0.1/" + SELIMSEF_ONE)}"', 'format = "pickle"', "max_bytes = 1073741824",
             f'converts = [{{raw = "{SELIMSEF_ONE}", to = "selimsef/{SELIMSEF_ONE}.safetensors"}}]', ""]
    return "\n".join(text)


@pytest.fixture
def installed_env(tmp_path, monkeypatch):
    server = Server()
    server.files["/weights/boken.tar.gz"] = boken_archive()
    torch.manual_seed(7)
    member = selimsef.build_member()
    # selimsef's own release layout: {"epoch", "state_dict" with module. prefixes, "bce_best"}.
    server.files["/0.0.1/" + SELIMSEF_ONE] = pickled(
        {"epoch": 36, "state_dict": {f"module.{k}": v for k, v in member.state_dict().items()}, "bce_best": 0.2})
    del member
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "manifest.toml").write_text(manifest(server))
    monkeypatch.setenv("WORKBENCH_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("WORKBENCH_WEIGHTS_MANIFEST", str(weights / "manifest.toml"))
    yield weights, server
    server.close()


def fresh(name: str):
    """A new instance of a registered detector (the registry hands out one per call)."""
    return get_detector(name)


def test_boken_installs_loads_strictly_and_runs(installed_env, two_face_clip, capsys):
    weights, server = installed_env
    assert fresh("boken").weights_status().installed is False
    assert main(["weights", "install", "boken", "--quiet"]) == 0
    assert "trust on first use" in capsys.readouterr().err
    converted = sorted((weights / "boken").glob("*.safetensors"))
    assert len(converted) == 3 and all(not p.stat().st_mode & 0o222 for p in converted)
    assert main(["weights", "verify"]) == 0

    det = fresh("boken")
    assert det.weights_status().installed
    det.model("cpu")
    assert len(det.weights_sha256) == 64
    path, _ = two_face_clip
    result = analyze(path, ["boken"], Sampling(sample_fps=2))
    outcome = result.detectors["boken"]
    # The headline is the authors' rule: every member has a score per face, so the mean over members
    # of their means over faces is the mean of the per-face means, clipped.
    faces = [s for _, _, s in outcome.frame_scores]
    assert outcome.status == "ok" and outcome.score == pytest.approx(min(0.99, max(0.01, sum(faces) / len(faces))))
    assert outcome.upstream["score"] == outcome.score and "clip" in outcome.upstream["rule"].lower()
    assert outcome.upstream["track_score"] == pytest.approx(default_rule_by_hand(outcome.frame_scores))
    assert set(outcome.frames_used) <= set(np.linspace(0, 34, 15).astype(int).tolist())
    per_frame = {}
    for frame, tid, _ in outcome.frame_scores:
        per_frame.setdefault(frame, []).append(tid)
    assert all(len(t) == 1 for t in per_frame.values())  # boken scores the largest face only

    # A converted file changed after install: verify names it, and loading refuses it.
    victim = converted[1]
    os.chmod(victim, 0o644)
    blob = bytearray(victim.read_bytes())
    blob[-10] ^= 0xFF
    victim.write_bytes(bytes(blob))
    assert main(["weights", "verify"]) == 2
    assert victim.name in capsys.readouterr().err
    with pytest.raises(WeightsError, match="does not match"):
        fresh("boken").model("cpu")
    refused = analyze(path, ["boken"], Sampling(sample_fps=2)).detectors["boken"]
    assert refused.status == "error" and refused.score is None and "refused" in refused.reason


def test_selimsef_member_installs_from_its_release_and_scores_a_face(installed_env):
    weights, server = installed_env
    assert main(["weights", "install", "selimsef", "--source", "selimsef-release", "--quiet"]) == 0
    det = fresh("selimsef")
    assert len(det.weights) == 1  # this test's manifest lists one of the seven members
    det.model("cpu")
    crop = np.random.default_rng(0).integers(0, 256, (1, 380, 380, 3), dtype=np.uint8)
    members = det.predict_members(crop)
    assert members.shape == (1, 1) and np.isfinite(members).all()
    assert det.upstream_aggregate(np.full((1, 40), 0.9)) == pytest.approx(0.9)


def test_wm_installs_from_its_archive_and_runs_with_mtcnn_alignment(tmp_path, monkeypatch, two_face_clip):
    """wm.tar.gz without RetinaFace: the three members install and load strictly; alignment from MTCNN."""
    (tmp_path / "raw").mkdir()
    raw = wm_upstream_files(tmp_path / "raw")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=1) as tf:
        for key in ("xception", "wsdan_x", "wsdan_e"):
            tf.add(raw[key], arcname=f"wm/{raw[key].name}")
    server = Server()
    server.files["/weights/wm.tar.gz"] = archive.getvalue()
    try:
        weights = tmp_path / "weights"
        weights.mkdir()
        names = [raw[k].name for k in ("xception", "wsdan_x", "wsdan_e")]
        rows = "".join(f'[[weights]]\ndetector = "wm"\nfile = "wm/{n.replace(".pth", ".safetensors")}"\n\n' for n in names)
        converts = ", ".join(f'{{raw = "wm/{n}", to = "wm/{n.replace(".pth", ".safetensors")}"}}' for n in names)
        (weights / "manifest.toml").write_text(
            rows + f'[[upstream]]\ndetector = "wm"\nname = "fakefinder"\nurl = "{server.url("/weights/wm.tar.gz")}"\n'
            f'format = "tar.gz"\nmax_bytes = 1073741824\nconverts = [{converts}]\n')
        monkeypatch.setenv("WORKBENCH_WEIGHTS_DIR", str(weights))
        monkeypatch.setenv("WORKBENCH_WEIGHTS_MANIFEST", str(weights / "manifest.toml"))
        assert main(["weights", "install", "wm", "--quiet"]) == 0
        det = fresh("wm")
        assert det.weights_status().installed
        det.model("cpu")
        assert det.alignment_source.startswith("MTCNN")
        path, _ = two_face_clip
        outcome = analyze(path, ["wm"], Sampling(sample_fps=1)).detectors["wm"]
        assert outcome.frames_used == [9, 19, 29]
        # The headline is the authors' rule: the weighted face scores averaged over the first 25 faces.
        faces = [s for _, _, s in outcome.frame_scores][:25]
        assert outcome.status == "ok" and outcome.score == pytest.approx(sum(faces) / len(faces))
        assert outcome.upstream["track_score"] == pytest.approx(default_rule_by_hand(outcome.frame_scores))
    finally:
        server.close()
